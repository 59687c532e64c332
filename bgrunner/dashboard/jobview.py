"""What the job page shows besides the record: its log events, its captured output, its process.

The log files can be tens of megabytes (with rotation), and a job page must
stay fast, so events are found with a byte search over a memory map for the
job's id as ``EventLog`` writes it (``"job_id": "42"``); only matching lines
are parsed, and each is checked again after parsing.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from typing import Any

from bgrunner import procs
from bgrunner.eventlog import MAIN_LOG, log_files
from bgrunner.launcher import output_path

#: At most this many of a job's events are shown (the latest ones).
MAX_EVENTS = 500
#: The job page shows the end of the output, this many bytes at most.
OUTPUT_TAIL = 64 * 1024
#: Keys every log line has; the rest are shown as the event's details.
_COMMON = ("timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid")


def job_events(log_dir: str, job_id: int, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """The job's events from the main log and its rotated files, oldest first."""
    needle = b'"job_id": "%d"' % job_id
    wanted = str(job_id)
    found: list[dict[str, Any]] = []
    for path in log_files(os.path.join(log_dir, MAIN_LOG)):
        found.extend(_search(path, needle, wanted))
    return found[-limit:]


def _search(path: str, needle: bytes, wanted: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return []
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return list(_matches(m, needle, wanted))
    except (OSError, ValueError):  # gone (rotated) or emptied since listed
        return []


def _matches(m: mmap.mmap, needle: bytes, wanted: str) -> Any:
    pos = m.find(needle)
    while pos != -1:
        start = m.rfind(b"\n", 0, pos) + 1
        end = m.find(b"\n", pos)
        end = len(m) if end == -1 else end
        try:
            event = json.loads(m[start:end])
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("job_id") == wanted:
            event["details"] = {k: v for k, v in event.items() if k not in _COMMON}
            yield event
        pos = m.find(needle, end)


def read_output(output_dir: str, job_id: int, offset: int | None = None,
                limit: int = OUTPUT_TAIL) -> tuple[str, int, bool]:
    """(text, new offset, truncated): the output from ``offset``, or its tail if None.

    At most ``limit`` bytes are read; ``truncated`` says earlier bytes were skipped.
    A missing file is empty output (the job has not started, or printed nothing).
    """
    path = output_path(output_dir, job_id)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - limit) if offset is None else min(max(offset, 0), size)
            truncated = False
            if size - start > limit:
                start, truncated = size - limit, True
            elif offset is None and start > 0:
                truncated = True
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return "", offset or 0, False
    return data.decode("utf-8", "replace"), start + len(data), truncated


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
