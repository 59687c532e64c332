"""What the job page shows besides the record: its log events, its captured output, its process.

The log files can be tens of megabytes (with rotation), and a job page must
stay fast: only the part of the logs written during the job's lifetime is
searched, through the reader the CLI uses (`bgrunner.logread`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bgrunner import output, procs
from bgrunner.eventlog import MAIN_LOG

#: At most this many of a job's events are shown (the latest ones).
MAX_EVENTS = 500
#: The job page shows the end of the output, this many bytes at most.
OUTPUT_TAIL = 64 * 1024
#: Seconds added on each side of a job's lifetime when its events are looked for.
EVENT_MARGIN = 120.0
#: Keys every log line has; the rest are shown as the event's details.
_COMMON = ("timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid")


def job_events(log_dir: str, job_id: int, since: float | None = None,
               until: float | None = None, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """The job's events from the main log and its rotated (and gzipped) files, oldest first.

    Read through `bgrunner.logread`, the one reader the CLI uses too: with
    ``since``/``until`` (epoch seconds: the job's lifetime plus a margin) files
    wholly outside that window are skipped and a file is bisected on its line
    timestamps; only lines holding the job's id are parsed.
    """
    from bgrunner import logread

    filt = logread.LogFilter(since=since, until=until, job_id=str(job_id))
    found: list[dict[str, Any]] = []
    for _line, event in logread.read(os.path.join(log_dir, MAIN_LOG), filt, last=limit):
        event["details"] = {k: v for k, v in event.items() if k not in _COMMON}
        found.append(event)
    return found


def read_output(output_dir: str, job_id: int, offset: int | None = None,
                limit: int = OUTPUT_TAIL) -> tuple[str, int, bool]:
    """(text, new offset, truncated): see `bgrunner.output.read_output` (never through a link)."""
    return output.read_output(output_dir, job_id, offset, limit)


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    cpu_percent: float | None  # None on the first sample: CPU% needs two
    memory_bytes: int
    threads: int


class ProcessWatch:
    """CPU% and memory of a job's process, only while it is the process recorded (pid + start).

    Keep one per viewer: psutil's CPU% is measured between two calls.
    """

    def __init__(self) -> None:
        self._proc: Any = None
        self._key: tuple[int, float | None] | None = None

    def sample(self, pid: int | None, pid_ctime: float | None) -> ProcessStats | None:
        if pid is None or not procs.is_alive(pid, pid_ctime):
            return None
        import psutil

        try:
            first = self._key != (pid, pid_ctime)
            if first:
                self._proc, self._key = psutil.Process(pid), (pid, pid_ctime)
            with self._proc.oneshot():
                cpu = float(self._proc.cpu_percent(None))  # the first call starts the measurement
                return ProcessStats(pid, None if first else cpu,
                                    int(self._proc.memory_info().rss),
                                    int(self._proc.num_threads()))
        except psutil.Error:
            return None
