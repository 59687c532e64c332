"""Property-based API checks: schemathesis, driven by /api/openapi.json, finds no 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ALLOWLIST, TOKEN, Server, in_ci

#: A schedule to read, run, pause and resume (it never comes due while the test runs).
SCHEDULED = ALLOWLIST + """
[schedules.nightly]
target = "examples.jobs:SampleJob"
method = "handle"
cron = "0 0 1 1 *"
"""


def schemathesis_cli() -> str:
    beside = Path(sys.executable).parent / "st"
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        reason = "schemathesis is not installed (pip install schemathesis)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def test_fuzzed_api_requests_never_get_a_server_error(fresh_server: Callable[..., Server],
                                                      tmp_path: Path) -> None:
    """Every operation, fuzzed (20 examples each, all phases), answers without a 5xx.

    Autostart is off so the fuzzer's dispatches are recorded but never run.
    """
    server = fresh_server(extra_env={"BGRUNNER_AUTOSTART": "0"}, allowlist=SCHEDULED)
    server.dispatch("handle", [])  # something to read, cancel and retry
    result = subprocess.run(
        [schemathesis_cli(), "run", f"{server.url}/api/openapi.json",
         "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "20",
         "--checks", "not_a_server_error", "--request-timeout", "20", "--workers", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    assert "Traceback" not in server.stderr()
