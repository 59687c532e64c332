"""The jobs of ``bench/compare.py``, one set per system (same bodies everywhere)."""

from __future__ import annotations

import os
import time


def _stamp(path: str) -> None:
    """Write the time the job's code started, atomically (the reader polls for the file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(repr(time.time()))
    os.replace(tmp, path)


class CompareJobs:
    """bgrunner's allow-listed class."""

    def noop(self) -> None:
        """Nothing: measures the runner, not the job."""

    def stamp(self, path: str) -> None:
        _stamp(path)

    def sleep(self, seconds: float, path: str) -> None:
        """Say it started (with its pid), then sleep: lets the benchmark measure a running job."""
        with open(f"{path}.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(f"{path}.tmp", path)
        time.sleep(seconds)


# RQ runs plain functions.
def rq_noop() -> None:
    pass


def rq_stamp(path: str) -> None:
    _stamp(path)


def rq_sleep(seconds: float, path: str) -> None:
    CompareJobs().sleep(seconds, path)
