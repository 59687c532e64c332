"""The Huey side of ``bench/compare.py``: a SqliteHuey app and its tasks.

The database file and the timing log come from ``BENCH_HUEY_DB`` and
``BENCH_HUEY_EVENTS``, so the producer (compare.py) and the consumer
(``huey_consumer bench.compare_huey.huey``) agree on them.
"""

from __future__ import annotations

import os
import time

from huey import SqliteHuey, signals

from bench.compare_jobs import CompareJobs, _stamp

huey = SqliteHuey(name="bench", filename=os.environ.get("BENCH_HUEY_DB", "/tmp/bench-huey.db"))
_EVENTS = os.environ.get("BENCH_HUEY_EVENTS")


@huey.task()
def noop() -> None:
    pass


@huey.task()
def stamp(path: str) -> None:
    _stamp(path)


@huey.task()
def sleep(seconds: float, path: str) -> None:
    CompareJobs().sleep(seconds, path)


def _log(kind: str) -> None:
    """One line per task start or end, appended in one write (several worker processes)."""
    if _EVENTS:
        fd = os.open(_EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{kind} {time.time()!r}\n".encode())
        finally:
            os.close(fd)


@huey.signal(signals.SIGNAL_EXECUTING)
def _started(signal: str, task: object, *args: object) -> None:
    _log("start")


@huey.signal(signals.SIGNAL_COMPLETE)
def _ended(signal: str, task: object, *args: object) -> None:
    _log("end")
