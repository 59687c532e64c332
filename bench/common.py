"""Shared set-up for the benchmarks: a throw-away project (allowlist, logs, SQLite store)."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ALLOWLIST = """
[defaults]
max_attempts = 1
retry_delay = 0

[runner]
max_concurrent = {cap}

[jobs."bench.jobs:Bench"]
methods = ["noop", "stamp"]
"""


def sandbox(cap: int = 0) -> dict[str, str]:
    """Environment for a fresh store, allowlist and log folder in a temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="bgrunner-bench-"))
    (tmp / "allowed_jobs.toml").write_text(ALLOWLIST.format(cap=cap))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGRUNNER_")}
    env.update({
        "BGRUNNER_CONFIG": str(tmp / "allowed_jobs.toml"),
        "BGRUNNER_LOG_DIR": str(tmp / "logs"),
        "BGRUNNER_DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
        "PYTHONPATH": str(ROOT),
        "BENCH_TMP": str(tmp),
    })
    return env


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def ms(value: float) -> str:
    return f"{value * 1000:8.2f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)
