"""What the job page shows besides the record: its log events, its captured output, its process.

The log files can be tens of megabytes (with rotation), and a job page must
stay fast: only the part of the logs written during the job's lifetime is
searched (found by bisecting on the line timestamps), with a byte search over
a memory map for the job's id as ``EventLog`` writes it (``"job_id": "42"``);
only matching lines are parsed, and each is checked again after parsing.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bgrunner import output, procs
from bgrunner.eventlog import MAIN_LOG, log_files
from bgrunner.safefiles import open_private

#: At most this many of a job's events are shown (the latest ones).
MAX_EVENTS = 500
#: The job page shows the end of the output, this many bytes at most.
OUTPUT_TAIL = 64 * 1024
#: A binary search over a log file stops when the bracket is this small (then it is scanned).
BISECT_STOP = 64 * 1024
#: Seconds added on each side of a job's lifetime when its events are looked for.
EVENT_MARGIN = 120.0
#: Keys every log line has; the rest are shown as the event's details.
_COMMON = ("timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid")


def job_events(log_dir: str, job_id: int, since: float | None = None,
               until: float | None = None, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """The job's events from the main log and its rotated files, oldest first.

    With ``since``/``until`` (epoch seconds: the job's lifetime plus a margin),
    files wholly outside that window are skipped and, within a file, the search
    starts and stops where a binary search on the line timestamps puts the
    window (lines are appended in time order).
    """
    needle = b'"job_id": "%d"' % job_id
    wanted = str(job_id)
    found: list[dict[str, Any]] = []
    for path in log_files(os.path.join(log_dir, MAIN_LOG)):
        found.extend(_search(path, needle, wanted, since, until))
    return found[-limit:]


def _search(path: str, needle: bytes, wanted: str, since: float | None,
            until: float | None) -> list[dict[str, Any]]:
    try:
        with os.fdopen(open_private(path, os.O_RDONLY), "rb") as f:  # never through a link
            if os.fstat(f.fileno()).st_size == 0:
                return []
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                lo, hi = _window(m, since, until)
                return list(_matches(m, needle, wanted, lo, hi)) if lo < hi else []
    except (OSError, ValueError):  # gone (rotated) or emptied since listed
        return []


def _window(m: mmap.mmap, since: float | None, until: float | None) -> tuple[int, int]:
    """The byte range of ``m`` whose lines may fall between ``since`` and ``until``."""
    lo, hi = 0, len(m)
    if since is not None:
        last = _time_at(m, m.rfind(b"\n", 0, max(0, len(m) - 1)) + 1)
        if last is not None and last < since:
            return 0, 0
        lo = _bisect(m, since)[0]
    if until is not None:
        first = _time_at(m, 0)
        if first is not None and first > until:
            return 0, 0
        hi = _bisect(m, until)[1]
    return lo, hi


def _bisect(m: mmap.mmap, t: float) -> tuple[int, int]:
    """(lo, hi): lines before ``lo`` are older than ``t``, lines from ``hi`` on are not."""
    lo, hi = 0, len(m)
    while hi - lo > BISECT_STOP:
        mid = m.find(b"\n", (lo + hi) // 2, hi) + 1
        if mid <= 0 or mid >= hi:
            break
        stamp = _time_at(m, mid)
        if stamp is None:
            break  # not a log line we can read: search the whole bracket
        if stamp < t:
            lo = mid
        else:
            hi = mid
    end = m.find(b"\n", hi)
    return lo, len(m) if end == -1 else end + 1


def _time_at(m: mmap.mmap, pos: int) -> float | None:
    """The timestamp of the line starting at ``pos`` (EventLog writes it first)."""
    head = m[pos:pos + 64]
    if not head.startswith(b'{"timestamp": "'):
        return None
    text = head[15:head.find(b'"', 15)].decode("ascii", "replace")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _matches(m: mmap.mmap, needle: bytes, wanted: str, lo: int, hi: int) -> Any:
    pos = m.find(needle, lo, hi)
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
        pos = m.find(needle, end, hi)


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
