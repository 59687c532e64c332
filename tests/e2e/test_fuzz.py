"""Property-based fuzzing of every way a value gets in (CONTRACT §14), with hypothesis.

The property, whatever the input (NaN, infinity, ints past 64 bits, deep nesting,
any unicode, control characters, lone surrogates): a clean usage error, or a stored
job that every reader can show — ``bgrunner status/list --json`` print strict JSON
and the record passes ``json.dumps(..., allow_nan=False)``.

Most examples run in-process (``bgrunner.cli.main.main``) for speed; a few go through
real ``run_job.py`` and worker processes. The number of examples each property ran is
printed in pytest's terminal summary ("bounds fuzzing: …").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgrunner import bounds
from bgrunner.errors import UsageError
from tests.conftest import ALLOWLIST, ROOT, clean_environ

TARGET = "tests.bounds_fixtures:Unruly"
CONFIG = ALLOWLIST + f"""
[jobs."{TARGET}"]
methods = ["echo"]
"""

#: Examples run per property, for the terminal summary.
EXAMPLES: Counter[str] = Counter()

FUZZ = settings(deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


class _Summary:
    """Adds one line to pytest's terminal summary: how many examples each property ran."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if EXAMPLES:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(EXAMPLES.items()))
            terminalreporter.write_line(f"bounds fuzzing: {sum(EXAMPLES.values())} examples ({counts})")


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("bgrunner-bounds-fuzz"):
        manager.register(_Summary(), "bgrunner-bounds-fuzz")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One allowlist, log folder and SQLite store for every example of the module."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "allowed_jobs.toml").write_text(CONFIG)
    return {"--config": str(root / "allowed_jobs.toml"), "--log-dir": str(root / "logs"),
            "--database-url": f"sqlite:///{root / 'jobs.db'}"}


@contextlib.contextmanager
def no_autostart() -> Iterator[None]:
    old = os.environ.get("BGRUNNER_AUTOSTART")
    os.environ["BGRUNNER_AUTOSTART"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BGRUNNER_AUTOSTART", None)
        else:
            os.environ["BGRUNNER_AUTOSTART"] = old


def cli(sandbox: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``bgrunner ARGS`` in-process: exit code, stdout, stderr (argparse's exit included)."""
    from bgrunner.cli.main import main

    location = [item for pair in sandbox.items() for item in pair]
    out, err = io.StringIO(), io.StringIO()
    with no_autostart(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, *location])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def strict_loads(text: str) -> Any:
    """JSON as a strict reader sees it: NaN or Infinity in it fail the test."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in output")

    return json.loads(text, parse_constant=refuse)


def assert_readers_can_show(sandbox: dict[str, str], job_id: str) -> dict[str, Any]:
    """``status --json`` and ``list --json`` print strict JSON; the record strict-dumps."""
    code, out, err = cli(sandbox, "status", job_id, "--json")
    assert code == 0, err
    record = strict_loads(out)
    json.dumps(record, allow_nan=False)
    code, out, err = cli(sandbox, "list", "--json", "--limit", "3")
    assert code == 0, err
    assert any(r["id"] == job_id for r in strict_loads(out))
    return record  # type: ignore[no-any-return]


def assert_clean_error(code: int, err: str) -> None:
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]


# -- strategies ------------------------------------------------------------------------------

HUGE_INTS = st.one_of(st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
                      st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2),
                      st.integers(min_value=-(2**200), max_value=2**200))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "\u202e", "\r\n\t", "\x1b[31m", "[[[[", '"\\']),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


def deepen(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


PARAMS = st.one_of(
    VALUES,
    st.builds(deepen, VALUES, st.sampled_from([98, 99, 100, 101, 150, 900])),
)


def json_text(value: Any) -> str:
    """As a user might type it: Python's JSON, NaN and Infinity literals included."""
    return json.dumps(value, allow_nan=True)


# -- properties ------------------------------------------------------------------------------

@settings(FUZZ, max_examples=600)
@given(st.one_of(
    st.text(max_size=60),
    st.builds(json_text, VALUES),
    st.builds(lambda n, c: c * n, st.integers(0, 3000), st.sampled_from(["[", "{\"a\":", "[1,"])),
    st.binary(max_size=40),
))
def test_loads_is_clean_on_any_text(text: str | bytes) -> None:
    """``bounds.loads``: a one-line UsageError, or a value that strict-encodes and passes the checks."""
    EXAMPLES["bounds.loads"] += 1
    try:
        value = bounds.loads(text, what="--json")
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--json: ")
        return
    json.dumps(value, allow_nan=False)
    bounds.check_params(value)


@settings(FUZZ, max_examples=400)
@given(VALUES)
def test_sanitize_makes_any_job_value_storable(value: Any) -> None:
    """Whatever a job returns or reports: the stored text is strict JSON (or not stored, with why)."""
    from bgrunner.job.attempt import encode_result
    from bgrunner.job.reporting import clean_report
    from bgrunner.settle import Outcome, storable

    EXAMPLES["job values"] += 1
    text, note = encode_result(value, 65536)
    assert text is not None or note is not None or value is None
    if text is not None:
        strict_loads(text)
        assert storable(Outcome.completed(text)).result == text
    json.dumps(clean_report(value, value, value), allow_nan=False)


@settings(FUZZ, max_examples=250)
@given(PARAMS, st.booleans())
def test_submit_any_params(sandbox: dict[str, str], value: Any, keyword: bool) -> None:
    """``bgrunner submit --json``: exit 2 with one line, or a job every reader shows as strict JSON."""
    EXAMPLES["submit --json"] += 1
    params = {"value": value} if keyword else [value]
    code, out, err = cli(sandbox, "submit", TARGET, "echo", "--json", json_text(params))
    if code != 0:
        assert_clean_error(code, err)
        return
    record = assert_readers_can_show(sandbox, out.strip())
    assert record["params"] == strict_loads(json.dumps(params))


@settings(FUZZ, max_examples=150)
@given(st.text(max_size=40))
def test_submit_any_comma_params(sandbox: dict[str, str], text: str) -> None:
    """Comma-separated params of any text (control characters, surrogates from undecodable argv)."""
    EXAMPLES["submit comma params"] += 1
    code, out, err = cli(sandbox, "submit", TARGET, "echo", text)
    if code != 0:
        assert_clean_error(code, err)
        return
    assert_readers_can_show(sandbox, out.strip())


FLAG_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str), HUGE_INTS.map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e300", "1e-300", "-0", "0x10", "1_000", " 5 ", ""]),
    st.text(max_size=10),
)
FLAGS = ["--delay", "--timeout", "--retry-delay", "--priority", "--max-attempts"]


@settings(FUZZ, max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), FLAG_VALUES), min_size=1, max_size=3))
def test_submit_any_flags(sandbox: dict[str, str], flags: list[tuple[str, str]]) -> None:
    """``bgrunner submit`` numeric flags: exit 2, or a job whose stored numbers are finite, in range."""
    EXAMPLES["submit flags"] += 1
    argv = [f"{flag}={value}" for flag, value in flags]
    code, out, err = cli(sandbox, "submit", TARGET, "echo", *argv)
    if code != 0:
        assert_clean_error(code, err)
        return
    record = assert_readers_can_show(sandbox, out.strip())
    assert 0 <= record["timeout"] <= bounds.MAX_TIMEOUT
    assert 0 <= record["retry_delay"] <= bounds.MAX_RETRY_DELAY
    assert bounds.INT_MIN <= record["priority"] <= bounds.INT_MAX
    assert 1 <= record["max_attempts"] <= bounds.INT_MAX


def _run_job(sandbox: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_environ(), "PYTHONPATH": str(ROOT), "BGRUNNER_AUTOSTART": "0"}
    location = [item for pair in sandbox.items() for item in pair]
    return subprocess.run([sys.executable, str(ROOT / "run_job.py"), TARGET, "echo", *args, *location],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@settings(FUZZ, max_examples=25)
@given(PARAMS, st.lists(st.tuples(st.sampled_from(["--timeout", "--retry-delay", "--max-attempts"]),
                                  FLAG_VALUES), max_size=2))
def test_run_job_any_params_and_flags(sandbox: dict[str, str], value: Any,
                                      flags: list[tuple[str, str]]) -> None:
    """Real ``run_job.py`` processes (the foreground path): exit 2 with one line, or the job
    runs, returns its params, and its record is strict JSON for every reader."""
    EXAMPLES["run_job.py (subprocess)"] += 1
    text = json_text([value])
    if len(text) > 100_000:  # one argument is at most 128 KiB on Linux
        return
    r = _run_job(sandbox, "--json", text, *(f"{flag}={v}" for flag, v in flags))
    if r.returncode == 2:
        assert_clean_error(r.returncode, r.stderr)
        return
    assert r.returncode == 0, r.stderr[-3000:]
    job_id = r.stderr.split()[1]  # "job N completed after 1 attempt(s)"
    record = assert_readers_can_show(sandbox, job_id)
    assert record["status"] == "completed"
    assert record["result"] == bounds.sanitize(value)


def test_worker_runs_fuzzed_jobs_and_readers_show_them(sandbox: dict[str, str]) -> None:
    """Queued fuzz jobs that were accepted run in a real worker; every finished record is strict JSON."""
    env = {**clean_environ(), "PYTHONPATH": str(ROOT), "BGRUNNER_AUTOSTART": "0"}
    location = [item for pair in sandbox.items() for item in pair]
    r = subprocess.run([sys.executable, "-m", "bgrunner", "worker", "--burst", *location], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    code, out, err = cli(sandbox, "list", "--json", "--limit", "100000")
    assert code == 0, err
    records = strict_loads(out)
    EXAMPLES["worker-run jobs"] += len(records)
    for record in records:
        json.dumps(record, allow_nan=False)
        delayed = record["status"] == "pending" and record["run_at"] > record["created_at"]
        assert record["status"] in ("completed", "failed") or delayed, record
        if record["status"] == "failed":
            assert record["error"] and len(record["error"]) <= bounds.MAX_ERROR_CHARS

