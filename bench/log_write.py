"""How much one log line costs: bgrunner's EventLog against simpler and heavier ways.

    python bench/log_write.py [--lines N]

Prints microseconds per line (median of 5 rounds) and the import cost of each
logging module in a fresh interpreter (python -X importtime, median of 7 starts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bgrunner.eventlog import EventLog  # noqa: E402 -- after the sys.path line above

FIELDS = {"job_id": "0f1e2d3c", "target": "examples.jobs:SampleJob", "method": "process"}


def per_line_us(write: Callable[[int], None], lines: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for n in range(lines):
            write(n)
        rounds.append((time.perf_counter() - start) / lines * 1e6)
    return statistics.median(rounds)


def import_ms(module: str) -> float | None:
    """Cumulative import time of ``module`` (python -X importtime), median of 7 fresh starts."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); import {module}"
    runs = []
    for _ in range(7):
        cmd = [sys.executable, "-I", "-X", "importtime", "-c", code]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return None
        top = [ln for ln in done.stderr.splitlines() if ln.rstrip().endswith(f"| {module}")]
        runs.append(int(top[-1].split("|")[1]) / 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    lines = parser.parse_args().lines
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        no_rotation = EventLog(os.path.join(tmp, "a"), max_bytes=0).bind(**FIELDS, attempt=1)
        results["EventLog.emit, no rotation"] = per_line_us(
            lambda n: no_rotation.emit("job_progress", done=n), lines
        )
        rotating = EventLog(os.path.join(tmp, "b")).bind(**FIELDS, attempt=1)
        results["EventLog.emit, 10 MB rotation check"] = per_line_us(
            lambda n: rotating.emit("job_progress", done=n), lines
        )
        rotating_often = EventLog(os.path.join(tmp, "c"), max_bytes=200_000, backups=3)
        results["EventLog.emit, rotating every ~1000 lines"] = per_line_us(
            lambda n: rotating_often.emit("job_progress", done=n, **FIELDS), lines
        )
        buffered = open(os.path.join(tmp, "buffered.log"), "a")  # noqa: SIM115

        def buffered_write(n: int) -> None:  # not safe across processes: shown for scale
            buffered.write(json.dumps({"event": "job_progress", "done": n, **FIELDS}) + "\n")
            buffered.flush()

        results["open('a') + json.dumps + flush (unsafe)"] = per_line_us(buffered_write, lines)
        handler = logging.FileHandler(os.path.join(tmp, "logging.log"))
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("bench")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        results["logging.FileHandler + json.dumps"] = per_line_us(
            lambda n: logger.info(json.dumps({"event": "job_progress", "done": n, **FIELDS})),
            lines,
        )
        buffered.close()
        handler.close()
    print(f"{'per line':<46} µs")
    for name, us in results.items():
        print(f"{name:<46} {us:6.1f}")
    print(f"\n{'import in a fresh interpreter':<46} ms")
    for module in ("bgrunner.eventlog", "bgrunner", "json", "logging", "filelock", "structlog"):
        ms = import_ms(module)
        print(f"{module:<46} {'not installed' if ms is None else f'{ms:6.1f}'}")
    print("(bgrunner.eventlog includes the package __init__; json is its only costly import)")


if __name__ == "__main__":
    main()
