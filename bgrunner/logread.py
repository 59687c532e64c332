"""Reading the JSON event logs back: the one reader of ``bgrunner logs`` and of the dashboard.

A log is its current file and its rotated ones: ``<file>.N`` (or ``<file>.N.gz``) ...
``<file>.1``, ``<file>``, oldest first (:func:`log_paths`). Each file is in time
order (lines are appended as they happen), and that is what makes big logs fast:

* ``since`` / ``until`` skip rotated files wholly outside the window (a file ends
  before the next one's first line) and, inside a plain file, a binary search
  over byte offsets (seek to the middle, skip to the next newline, read that
  line's timestamp) finds where the window starts and ends;
* the last N matches (``read(last=N)``, :func:`newest`) are found reading
  backwards from the end of the newest file in blocks: ``-n 50`` on a 1 GB log
  reads a few kilobytes;
* every filter but the time has a byte form a matching line must hold: the
  JSON text of the job id (``"42"``), target or event names, the level names
  at or above the one asked (``"level": "error"``), the ``--grep`` pattern
  itself when it can run over bytes. The most selective is searched for over
  whole blocks (``bytes.rfind``, or a bytes regex), the others are tested on
  each candidate line; only then is a line decoded and JSON-parsed, and every
  filter checked exactly on the parsed object. So the answer is always that of
  the exact checks: the byte forms only decide which lines are looked at.

Lines may be a little out of time order (a writer delayed between taking its
timestamp and its write; a late line into a file just rotated): files and
bisection windows are widened by :data:`SKEW`, and each line's own timestamp
is then checked exactly.

A ``.gz`` file cannot be searched by offset: it is streamed from its start (in
blocks, never whole in memory), and skipped without reading when the next
file starts before ``since``. Reading one backwards (``-n``, pages) streams it
forwards and keeps the last matches.

Malformed lines (not JSON, not an object, cut short, another program's) are
skipped and counted in :class:`ReadStats` (only those that reach parsing:
a line the byte pre-checks rule out is never looked at). Files are opened
without following links and must be ours (:func:`bgrunner.safefiles.open_private`):
``UnsafePathError`` otherwise. Times are epoch seconds; every file keeps UTC.

Standard library only (``gzip`` when a ``.gz`` file is read).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bgrunner.errors import UsageError
from bgrunner.safefiles import open_private

__all__ = ["LEVELS", "LogFilter", "ReadStats", "compile_grep", "file_events", "follow", "log_paths", "newest",
           "parse_level", "parse_time", "read"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
"""Levels in order; ``level=L`` keeps lines at L or above. A line of another level never matches one."""

_ALIASES = {"warn": "warning", "fatal": "critical", "exception": "error"}

SKEW = 60.0
"""Seconds lines may be out of time order; windows and file skips are widened by this much."""

BLOCK = 4 << 20
"""Bytes read at a time scanning forwards (and streaming a ``.gz`` file)."""

BACK_BLOCK = 64 << 10
"""First block read scanning backwards; each next one is twice as big, up to :data:`BLOCK`."""

BISECT_STOP = 64 << 10
"""A binary search stops when the bracket is this small; the bracket is then scanned."""

FOLLOW_POLL = 0.2
"""Seconds between looks at a followed file when nothing new came."""

LINGER = 2.0
"""Seconds a followed file is still read after it was rotated away (late lines of slow writers)."""

MAX_LINGERING = 64
"""Files rotated away that are read on at most (the oldest is let go first)."""

_HEAD = b'{"timestamp": "'
_IDENT = 512  # bytes of a file's first line that name the file (its copies and gzipped forms too)

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_AGO = 1000 * 365 * 86400.0


# -- input: times, levels, the filter ------------------------------------------------------------
def _named(what: str) -> str:
    return f"{what}: " if what else ""


def parse_time(text: str, now: float | None = None, *, what: str = "") -> float:
    """``text`` as epoch seconds: ISO 8601 or a relative age before ``now`` (default: the clock).

    ISO 8601 as Python reads it: ``2024-05-01``, ``2024-05-01T12:00``,
    ``2024-05-01T12:00:00.5Z``, ``2024-05-01 14:00+02:00``. A time without an
    offset is **UTC**, as every timestamp in the files is (so a time copied from
    the output means what it says, whatever the machine's zone). Relative:
    ``30s``, ``10m``, ``2h``, ``7d``, ``1w`` (also ``1.5h``); ``now``;
    ``@1714560000`` (epoch seconds). Anything else is a one-line ``UsageError``
    (its text starts with ``what: `` when given, e.g. ``--since``).
    """
    now = time.time() if now is None else now
    s = text.strip()
    m = _RELATIVE.fullmatch(s)
    try:
        if m:
            ago = float(m[1]) * _UNITS[m[2]]
            if ago <= _MAX_AGO:
                return now - ago
        elif s == "now":
            return now
        elif s.startswith("@"):
            value = float(s[1:])
            if math.isfinite(value) and s[1:2].isdigit():
                return value
        else:
            dt = datetime.fromisoformat(s)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return dt.timestamp()
    except (ValueError, OverflowError, OSError):
        pass
    shown = text if len(text) <= 60 else text[:60] + "..."
    raise UsageError(f"{_named(what)}not a time: {shown!r} (ISO 8601 such as 2024-05-01T12:00:00Z or "
                     "2024-05-01T14:00+02:00, UTC when no offset; or relative: 30s, 10m, 2h, 7d)")


def parse_level(text: str, *, what: str = "") -> str:
    """The level's name as :data:`LEVELS` spells it (``WARN`` -> ``warning``); else ``UsageError``."""
    name = text.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in LEVELS:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise UsageError(f"{_named(what)}unknown level {shown!r} (one of {', '.join(LEVELS)})")
    return name


def compile_grep(text: str, *, what: str = "") -> re.Pattern[str]:
    """``text`` compiled as a regular expression; else a one-line ``UsageError``."""
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise UsageError(f"{_named(what)}invalid regular expression {shown!r}: {exc}") from None


@dataclass(frozen=True)
class LogFilter:
    """Which lines to show; every field given must hold (an empty filter keeps every line).

    ``since`` / ``until``: epoch seconds, both inclusive, against the line's
    ``timestamp`` (a line without a readable one never matches a time filter).
    ``level``: at least this one (:data:`LEVELS`). ``events``: any of these.
    ``target``: exactly this target. ``grep``: searched in the whole line as
    written (JSON text: ``\\uXXXX`` escapes and all). ``job_id``: this job's
    lines (as bgrunner writes it, a JSON string: ``"job_id": "42"``).
    """

    since: float | None = None
    until: float | None = None
    level: str | None = None
    events: tuple[str, ...] = ()
    target: str | None = None
    grep: re.Pattern[str] | None = None
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None:
            object.__setattr__(self, "level", parse_level(self.level))
        object.__setattr__(self, "events", tuple(self.events))
        if self.job_id is not None:
            object.__setattr__(self, "job_id", str(self.job_id))

    @classmethod
    def parse(cls, *, since: str | None = None, until: str | None = None, level: str | None = None,
              events: tuple[str, ...] | list[str] = (), target: str | None = None,
              grep: str | None = None, job_id: str | None = None, now: float | None = None,
              prefix: str = "--") -> LogFilter:
        """A filter from text as a person types it; a bad value is a ``UsageError`` naming ``prefix + field``."""
        now = time.time() if now is None else now
        return cls(
            since=None if since is None else parse_time(since, now, what=prefix + "since"),
            until=None if until is None else parse_time(until, now, what=prefix + "until"),
            level=None if level is None else parse_level(level, what=prefix + "level"),
            events=tuple(events), target=target,
            grep=None if grep is None else compile_grep(grep, what=prefix + "grep"),
            job_id=job_id)


@dataclass
class ReadStats:
    """What a read met besides its matches: pass one in to learn it (the CLI prints it on stderr)."""

    malformed: int = 0
    """Lines skipped because they are not a JSON object (or are cut short)."""
    unreadable: list[str] = field(default_factory=list)
    """One line per file that could not be read to its end (a broken ``.gz``), naming it."""


# -- files --------------------------------------------------------------------------------------
def log_paths(path: str | os.PathLike[str]) -> list[str]:
    """``path``'s rotated files then ``path`` itself, oldest first; only those that exist.

    ``<file>.N`` or ``<file>.N.gz`` (when both exist, the plain one: a ``.gz``
    being written is renamed into place only when whole, and the plain file is
    removed after). Other names (``.lock``, ``.gz.tmp``, dated copies) are not
    the log's.
    """
    path = os.fspath(path)
    folder, base = os.path.split(path)
    prefix = base + "."
    numbered: dict[int, str] = {}
    try:
        names = os.listdir(folder or ".")
    except OSError:
        names = []
    for name in names:
        if not name.startswith(prefix):
            continue
        suffix = name[len(prefix):]
        gz = suffix.endswith(".gz")
        number = suffix[:-3] if gz else suffix
        if not (number.isascii() and number.isdigit()):
            continue
        n = int(number)
        if n not in numbered or not gz:
            numbered[n] = os.path.join(folder, name)
    files = [numbered[n] for n in sorted(numbered, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


def _iso_seconds(text: str) -> float | None:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _head_time(data: bytes, pos: int = 0) -> float | None:
    """The timestamp of the line at ``pos`` when it starts as bgrunner writes lines; else None."""
    if not data.startswith(_HEAD, pos):
        return None
    start = pos + len(_HEAD)
    end = data.find(b'"', start, start + 40)
    if end == -1:
        return None
    return _iso_seconds(data[start:end].decode("ascii", "replace"))


def _event_time(event: dict[str, Any]) -> float | None:
    stamp = event.get("timestamp")
    return _iso_seconds(stamp) if isinstance(stamp, str) else None


class _File:
    """One file of a log, held by its descriptor: renaming it under a reader changes nothing."""

    __slots__ = ("_head", "fd", "gz", "ino", "path", "size")

    def __init__(self, path: str, fd: int) -> None:
        st = os.fstat(fd)
        self.path, self.fd, self.gz = path, fd, path.endswith(".gz")
        self.ino, self.size = (st.st_dev, st.st_ino), st.st_size
        self._head: bytes | None = None

    @classmethod
    def open(cls, path: str) -> _File | None:
        """The file, or None when it is gone (rotated away or removed since it was listed)."""
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return cls(path, fd)
        except OSError:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def head(self) -> bytes:
        """The start of the file: its first line, or up to 4 KiB of it (decompressed for ``.gz``)."""
        if self._head is None or (not self._head.endswith(b"\n") and len(self._head) < 4096):
            try:
                if self.gz:
                    with self._gzip() as g:
                        data = g.read(4096)
                else:
                    data = os.pread(self.fd, 4096, 0)
            except (OSError, EOFError):
                data = b""
            nl = data.find(b"\n")
            self._head = data[:nl + 1] if nl != -1 else data
        return self._head

    def ident(self) -> bytes | None:
        """What names this file's content (its copies and gzipped form alike): its first line."""
        head = self.head()
        return head[:_IDENT] if head.endswith(b"\n") or len(head) >= _IDENT else None

    def first_time(self) -> float | None:
        head = self.head()
        stamp = _head_time(head)
        if stamp is None and head.endswith(b"\n"):
            try:
                event = json.loads(head)
            except (ValueError, RecursionError):
                return None
            stamp = _event_time(event) if isinstance(event, dict) else None
        return stamp

    @contextlib.contextmanager
    def _gzip(self) -> Iterator[Any]:
        import gzip  # only when a .gz file is read

        raw = os.fdopen(os.dup(self.fd), "rb")  # GzipFile leaves a file object it was given open
        try:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as g:
                yield g
        finally:
            raw.close()

    def complete_end(self) -> int:
        """The offset after the last newline: a line being written is not read yet."""
        end = self.size
        block = 4096
        while end > 0:
            start = max(0, end - block)
            nl = os.pread(self.fd, end - start, start).rfind(b"\n")
            if nl != -1:
                return start + nl + 1
            end, block = start, block * 2
        return 0

    def forward(self, lo: int, hi: int, lo_t: float | None, hi_t: float | None,
                stats: ReadStats) -> Iterator[tuple[int, bytes, int]]:
        """(base, data, end) blocks in order; ``data[:end]`` is whole lines starting at ``base``."""
        if self.gz:
            yield from self._gz_forward(lo_t, hi_t, stats)
            return
        pos = lo
        while pos < hi:
            data = os.pread(self.fd, min(BLOCK, hi - pos), pos)
            if not data:
                return
            end = len(data)
            if pos + end < hi:
                end = data.rfind(b"\n") + 1
                if end == 0:  # one line longer than a block: read up to its end
                    data = self._line_from(pos, hi)
                    end = len(data)
            yield pos, data, end
            pos += end

    def _line_from(self, pos: int, hi: int) -> bytes:
        size = BLOCK
        while True:
            data = os.pread(self.fd, min(size, hi - pos), pos)
            nl = data.find(b"\n")
            if nl != -1:
                return data[:nl + 1]
            if pos + len(data) >= hi or not data:
                return data
            size *= 2

    def _gz_forward(self, lo_t: float | None, hi_t: float | None,
                    stats: ReadStats) -> Iterator[tuple[int, bytes, int]]:
        import zlib

        base, carry = 0, b""
        try:
            with self._gzip() as g:
                while True:
                    chunk = g.read(BLOCK)
                    data = carry + chunk if carry else chunk
                    if not chunk:
                        if data:
                            yield base, data, len(data)
                        return
                    end = data.rfind(b"\n") + 1
                    if end == 0:
                        carry = data
                        continue
                    first = _head_time(data)
                    if hi_t is not None and first is not None and first > hi_t:
                        return
                    last = _head_time(data, data.rfind(b"\n", 0, end - 1) + 1)
                    if lo_t is None or last is None or last >= lo_t:
                        yield base, data, end
                    base, carry = base + end, data[end:]
        except (OSError, EOFError, zlib.error) as exc:
            stats.unreadable.append(f"{self.path}: {exc}")

    def backward(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, int]]:
        """(base, data, start) blocks from the end (plain files); ``data[start:]`` is whole lines."""
        end, size = hi, BACK_BLOCK
        while end > lo:
            base = max(lo, end - size)
            data = os.pread(self.fd, end - base, base)
            start = 0
            if base > lo:
                start = data.find(b"\n") + 1
                if start == 0 or start >= len(data):  # no whole line in the block: read a bigger one
                    size *= 2
                    continue
            yield base, data, start
            end = base + start
            size = min(size * 2, BLOCK)

    def bisect(self, lo: int, hi: int, t: float, inclusive: bool) -> tuple[int, int]:
        """(lo, hi) bracketing where lines turn from older than ``t`` (``<= t`` if inclusive) to newer.

        Lines before ``lo`` are older, lines from ``hi`` on are not, as far as
        the sampled timestamps tell; a line it cannot read stops the search.
        """
        while hi - lo > BISECT_STOP:
            mid = (lo + hi) // 2
            probe = os.pread(self.fd, 4096, mid)
            nl = probe.find(b"\n")
            if nl == -1 or mid + nl + 1 >= hi:
                break
            start = mid + nl + 1
            head = probe[nl + 1:nl + 65] if nl + 65 <= len(probe) else os.pread(self.fd, 64, start)
            stamp = _head_time(head)
            if stamp is None:
                break
            if stamp < t or (inclusive and stamp == t):
                lo = start
            else:
                hi = start
        return lo, hi


OPEN_TRIES = 10
"""Times the files of a log are listed and opened again when a rotation moved them meanwhile."""


def _open_files(path: str, skip: set[tuple[int, int]] | None = None) -> list[_File]:
    """The log's files, open, oldest first: a consistent set even while another process rotates.

    A rotation renames ``.N-1`` to ``.N`` ... and the file to ``.1``: a listing
    taken meanwhile can miss a file (listed as ``.2``, opened after it became
    ``.3``). So the files are opened newest first, then the listing is taken
    again and every name checked to still be the file opened by it; on any
    change, again (up to :data:`OPEN_TRIES` times, then the last set is used).
    A file met twice (plain and gzipped) is kept once; inodes in ``skip`` are left out.
    """
    for attempt in range(OPEN_TRIES):
        paths = log_paths(path)
        files, opened = _open_listed(path, paths, skip or set())
        if attempt == OPEN_TRIES - 1 or _unchanged(path, paths, opened):
            return files
        _close(files)
    raise AssertionError("unreachable")


def _open_listed(path: str, paths: list[str], skip: set[tuple[int, int]]
                 ) -> tuple[list[_File], dict[str, tuple[int, int]]]:
    files: list[_File] = []
    opened: dict[str, tuple[int, int]] = {}
    inodes = set(skip)
    idents: set[bytes] = set()
    try:
        for p in reversed(paths):
            f = _File.open(p)
            if f is None and p != path and not p.endswith(".gz"):
                f = _File.open(p + ".gz")  # compressed since it was listed
            if f is None:
                opened[p] = (-1, -1)
                continue
            opened[f.path] = f.ino
            ident = f.ident()
            if f.ino in inodes or (ident is not None and ident in idents):
                f.close()
                continue
            inodes.add(f.ino)
            if ident is not None:
                idents.add(ident)
            files.append(f)
    except BaseException:
        _close(files)
        raise
    files.reverse()
    return files, opened


def _unchanged(path: str, paths: list[str], opened: dict[str, tuple[int, int]]) -> bool:
    """Whether the log still has these files under these names (no rotation since they were listed)."""
    if log_paths(path) != paths:
        return False
    for p, ino in opened.items():
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != ino:
            return False
    return True


_Region = tuple[_File, int, int]


def _plan(files: list[_File], filt: LogFilter, current: _File | None,
          current_end: int | None = None) -> list[_Region]:
    """The parts of ``files`` (oldest first) that may hold lines of the filter's time window."""
    lo_t = None if filt.since is None else filt.since - SKEW
    hi_t = None if filt.until is None else filt.until + SKEW
    timed = lo_t is not None or hi_t is not None
    firsts = [f.first_time() if timed else None for f in files] + [None]
    plan: list[_Region] = []
    for i, f in enumerate(files):
        first, nxt = firsts[i], firsts[i + 1]
        if hi_t is not None and first is not None and first > hi_t:
            break
        if lo_t is not None and nxt is not None and nxt < lo_t:
            continue
        lo = 0
        hi = (current_end if current_end is not None else f.complete_end()) if f is current else f.size
        if not f.gz:
            if lo_t is not None:
                lo = f.bisect(lo, hi, lo_t, inclusive=False)[0]
            if hi_t is not None:
                hi = f.bisect(lo, hi, hi_t, inclusive=True)[1]
        if lo < hi or f.gz:
            plan.append((f, lo, hi))
    return plan


# -- matching -----------------------------------------------------------------------------------
class _Needle:
    """Bytes every matching line holds: a literal (``find``) or a regular expression (``search``).

    ``ascii_only``: only meaningful on ASCII text (a bytes regex's ``\\w`` is not
    the text one's; a value JSON-escaped as ``\\uXXXX`` may be written raw by
    another program): on text that is not ASCII it is not applied.
    """

    __slots__ = ("ascii_only", "lit", "rx")

    def __init__(self, lit: bytes | None = None, rx: re.Pattern[bytes] | None = None,
                 ascii_only: bool = False) -> None:
        self.lit, self.rx, self.ascii_only = lit, rx, ascii_only

    @classmethod
    def of_values(cls, values: tuple[str, ...]) -> _Needle:
        """Any of these strings, as JSON writes them (``"value"``)."""
        encoded = [json.dumps(v).encode() for v in values]
        raw = any(not v.isascii() for v in values)
        if len(encoded) == 1:
            return cls(lit=encoded[0], ascii_only=raw)
        return cls(rx=re.compile(b"|".join(re.escape(e) for e in encoded)), ascii_only=raw)

    def find(self, data: bytes, pos: int, end: int) -> int:
        if self.lit is not None:
            return data.find(self.lit, pos, end)
        assert self.rx is not None
        found = self.rx.search(data, pos, end)
        return -1 if found is None else found.start()

    def holds(self, raw: bytes) -> bool:
        if self.ascii_only and not raw.isascii():
            return True
        if self.lit is not None:
            return self.lit in raw
        assert self.rx is not None
        return self.rx.search(raw) is not None


# A regex may run over a block of lines instead of each line when what it finds in a line it
# finds at the same place in the block: not with \A \Z (string ends), DOTALL (crosses lines) or
# a lookbehind (sees the previous line). What it finds across lines is checked line by line.
_BLOCK_UNSAFE = re.compile(r"\\[AZz]|\(\?<[=!]|\(\?[a-zA-Z-]*s")


def _grep_needle(pattern: re.Pattern[str]) -> _Needle | None:
    text = pattern.pattern
    if not text.isascii() or pattern.flags & re.DOTALL or _BLOCK_UNSAFE.search(text):
        return None
    flags = re.MULTILINE | (pattern.flags & (re.IGNORECASE | re.VERBOSE))
    try:
        return _Needle(rx=re.compile(text.encode(), flags), ascii_only=True)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def _level_needle(level: str) -> _Needle:
    names = [n for n, rank in LEVELS.items() if rank >= LEVELS[level]]
    names += [a for a, n in _ALIASES.items() if n in names]
    return _Needle(rx=re.compile(rb'"level":\s*"(?i:' + "|".join(names).encode() + rb')"'))


class _Matcher:
    """A filter as checks on a raw line, cheapest first; JSON is parsed last.

    The byte needles (job, target, events, grep, level) rule lines out before any
    parsing; the first of them (the most selective) is searched for over whole
    blocks, so only the lines holding it are looked at.
    """

    def __init__(self, filt: LogFilter, stats: ReadStats, before: float | None = None) -> None:
        self.filt, self.stats, self.before = filt, stats, before
        needles: list[_Needle | None] = [
            None if filt.job_id is None else _Needle.of_values((filt.job_id,)),
            None if filt.target is None else _Needle.of_values((filt.target,)),
            _Needle.of_values(filt.events) if filt.events else None,
            None if filt.grep is None else _grep_needle(filt.grep),
            None if filt.level is None or filt.level == "debug" else _level_needle(filt.level),
        ]
        self.needles = [n for n in needles if n is not None]
        self.driver = self.needles[0] if self.needles else None
        self.lo_t = None if filt.since is None else filt.since - SKEW
        self.hi_t = None if filt.until is None else filt.until + SKEW
        self.timed = filt.since is not None or filt.until is not None or before is not None
        self.rank = None if filt.level is None else LEVELS[filt.level]

    def _in_time(self, t: float) -> bool:
        f = self.filt
        return ((f.since is None or t >= f.since) and (f.until is None or t <= f.until)
                and (self.before is None or t < self.before))

    def check(self, raw: bytes) -> tuple[str, dict[str, Any]] | None:
        """(line, event) when ``raw`` (one line, no newline) matches; None otherwise."""
        for needle in self.needles:
            if not needle.holds(raw):
                return None
        stamp = None
        if self.timed:
            stamp = _head_time(raw)
            if stamp is not None and not self._in_time(stamp):
                return None
        line = raw.decode("utf-8", "replace").rstrip("\r")
        f = self.filt
        if f.grep is not None and f.grep.search(line) is None:
            return None
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            self.stats.malformed += 1
            return None
        if not isinstance(event, dict):
            self.stats.malformed += 1
            return None
        if f.job_id is not None and (event.get("job_id") is None or str(event["job_id"]) != f.job_id):
            return None
        if f.events and event.get("event") not in f.events:
            return None
        if f.target is not None and event.get("target") != f.target:
            return None
        if self.rank is not None:
            level = event.get("level")
            name = _ALIASES.get(level.lower(), level.lower()) if isinstance(level, str) else ""
            if LEVELS.get(name, -1) < self.rank:
                return None
        if self.timed and stamp is None:
            stamp = _event_time(event)
            if stamp is None or not self._in_time(stamp):
                return None
        return line, event


_Hit = tuple[_File, int, str, dict[str, Any]]


def _lines(data: bytes, start: int, end: int, driver: _Needle | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines in ``data[start:end]`` (those holding ``driver``), in order."""
    if driver is not None and driver.ascii_only and not data.isascii():
        driver = None
    if driver is None:
        pos = start
        while pos < end:
            nl = data.find(b"\n", pos, end)
            if nl == -1:
                nl = end
            if nl > pos:
                yield pos, data[pos:nl]
            pos = nl + 1
        return
    if driver.lit is not None:  # CPython's rfind skips ahead better than find: 2-3x faster here
        yield from reversed(list(_lines_back(data, start, end, driver)))
        return
    pos = driver.find(data, start, end)
    while pos != -1:
        ls = data.rfind(b"\n", start, pos) + 1 or start
        nl = data.find(b"\n", pos, end)
        if nl == -1:
            nl = end
        if nl > ls:
            yield ls, data[ls:nl]
        if nl + 1 >= end:
            return
        pos = driver.find(data, nl + 1, end)  # from the next line: a match across lines hides none


def _lines_back(data: bytes, start: int, end: int, driver: _Needle | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines in ``data[start:end]`` (those holding ``driver``), last first."""
    if driver is not None and driver.ascii_only and not data.isascii():
        driver = None
    if driver is None:
        e = end - 1 if end > start and data[end - 1] == 10 else end
        while e > start:
            nl = data.rfind(b"\n", start, e)
            ls = nl + 1 if nl != -1 else start
            if e > ls:
                yield ls, data[ls:e]
            e = nl if nl != -1 else start
        return
    if driver.lit is None:  # no backwards regex search: this block's candidates, reversed
        yield from reversed(list(_lines(data, start, end, driver)))
        return
    e = end
    while True:
        pos = data.rfind(driver.lit, start, e)
        if pos == -1:
            return
        nl = data.rfind(b"\n", start, pos)
        ls = nl + 1 if nl != -1 else start
        le = data.find(b"\n", pos, end)
        yield ls, data[ls:end if le == -1 else le]
        e = ls


def _forward(plan: list[_Region], m: _Matcher) -> Iterator[_Hit]:
    for f, lo, hi in plan:
        for base, data, end in f.forward(lo, hi, m.lo_t, m.hi_t, m.stats):
            for off, raw in _lines(data, 0, end, m.driver):
                hit = m.check(raw)
                if hit is not None:
                    yield f, base + off, hit[0], hit[1]


def _backward(plan: list[_Region], m: _Matcher, count: int) -> list[_Hit]:
    """Up to ``count`` matches, newest first."""
    found: list[_Hit] = []
    for f, lo, hi in reversed(plan):
        want = count - len(found)
        if want <= 0:
            break
        if f.gz:  # no offsets to seek to: stream it, keep the last matches
            found.extend(reversed(deque(_forward([(f, lo, hi)], m), maxlen=want)))
            continue
        for base, data, start in f.backward(lo, hi):
            for off, raw in _lines_back(data, start, len(data), m.driver):
                hit = m.check(raw)
                if hit is not None:
                    found.append((f, base + off, hit[0], hit[1]))
                    if len(found) >= count:
                        return found
    return found


def _close(files: list[_File]) -> None:
    for f in files:
        f.close()


# -- reading ------------------------------------------------------------------------------------
def file_events(path: str | os.PathLike[str], job_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of one file of a log (``.gz`` too), in order; only ``job_id``'s if given.

    Malformed lines are skipped; a missing file yields nothing. (:func:`read`
    reads a whole log: its rotated files too, with filters.)
    """
    f = _File.open(os.fspath(path))
    if f is None:
        return
    try:
        for _, _, _, event in _forward([(f, 0, f.size)], _Matcher(LogFilter(job_id=job_id), ReadStats())):
            yield event
    finally:
        f.close()


def read(path: str | os.PathLike[str], filt: LogFilter | None = None, *, last: int | None = None,
         stats: ReadStats | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The matching lines of the log at ``path`` (and its rotated files), oldest first.

    Each as (line as written, parsed object). ``last=N``: only the last N matches
    (found reading backwards). A line still being written at the end of the
    current file is left for the next read. A missing log yields nothing.
    """
    filt = filt or LogFilter()
    m = _Matcher(filt, stats if stats is not None else ReadStats())
    files = _open_files(os.fspath(path))
    try:
        current = files[-1] if files and files[-1].path == os.fspath(path) else None
        plan = _plan(files, filt, current)
        if last is None:
            for _, _, line, event in _forward(plan, m):
                yield line, event
        elif last > 0:
            for _, _, line, event in reversed(_backward(plan, m, last)):
                yield line, event
    finally:
        _close(files)


def _cursor(hit: _Hit) -> str:
    """``<dev>-<inode>:<offset>:<timestamp>`` of a line (``0-0:0:<timestamp>`` in a ``.gz`` file)."""
    f, off, _, event = hit
    stamp = _event_time(event)
    where = "0-0:0" if f.gz else f"{f.ino[0]:x}-{f.ino[1]:x}:{off}"
    return f"{where}:{'' if stamp is None else repr(stamp)}"


def _parse_cursor(text: str) -> tuple[tuple[int, int] | None, int, float | None]:
    try:
        ino, off, stamp = text.split(":")
        dev, _, num = ino.partition("-")
        inode = (int(dev, 16), int(num, 16))
        t = float(stamp) if stamp else None
        offset = int(off)
    except ValueError:
        raise UsageError("not a cursor of the log reader") from None
    if offset < 0 or (t is not None and not math.isfinite(t)):
        raise UsageError("not a cursor of the log reader")
    return (None if inode == (0, 0) else inode), offset, t


def newest(path: str | os.PathLike[str], filt: LogFilter | None = None, *, before: str | None = None,
           limit: int = 100, stats: ReadStats | None = None
           ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """A page of matching lines newest first, and the cursor of the next (older) page or None.

    ``before``: a cursor from an earlier call; the page holds the matches older
    than the last line of that page. The cursor names the line's file by inode
    and its byte offset, and its timestamp: a rotation by rename keeps it exact
    (the file keeps its inode under its new name). When that file is gone,
    gzipped or truncated (the line at the offset no longer has that timestamp),
    the page holds the matches *strictly older than that timestamp* instead:
    lines sharing the very microsecond may be skipped, and a line written late,
    out of order, may show twice. ``None`` is returned when nothing older matches.
    """
    filt = filt or LogFilter()
    stats = stats if stats is not None else ReadStats()
    if limit < 1:
        return [], None
    inode, offset, stamp = _parse_cursor(before) if before else (None, 0, None)
    files = _open_files(os.fspath(path))
    try:
        current = files[-1] if files and files[-1].path == os.fspath(path) else None
        plan = _plan(files, filt, current)
        m = _Matcher(filt, stats)
        if before:
            plan, m = _after_cursor(plan, filt, stats, inode, offset, stamp)
        hits = _backward(plan, m, limit + 1)
    finally:
        _close(files)
    page = [(line, event) for _, _, line, event in hits[:limit]]
    return page, (_cursor(hits[limit - 1]) if len(hits) > limit else None)


def _after_cursor(plan: list[_Region], filt: LogFilter, stats: ReadStats, inode: tuple[int, int] | None,
                  offset: int, stamp: float | None) -> tuple[list[_Region], _Matcher]:
    """The plan cut to what is older than the cursor's line, and the matcher to use."""
    for i, (f, lo, hi) in enumerate(plan):
        if f.gz or f.ino != inode or offset > hi:
            continue
        head = os.pread(f.fd, 64, offset)
        at = _head_time(head)
        if stamp is None or at == stamp:
            return [*plan[:i], (f, lo, min(hi, offset))], _Matcher(filt, stats)
    if stamp is None:
        return [], _Matcher(filt, stats)
    cut = [(f, lo, hi) for f, lo, hi in plan if f.gz or (f.first_time() or 0) <= stamp + SKEW]
    return cut, _Matcher(filt, stats, before=stamp)


# -- following ----------------------------------------------------------------------------------
class _Tail:
    """The end of a plain file read by its descriptor: where reading stopped and what came before."""

    __slots__ = ("file", "pos", "sig")

    def __init__(self, file: _File, pos: int) -> None:
        self.file, self.pos = file, pos
        self.sig = os.pread(file.fd, min(pos, 256), pos - min(pos, 256)) if pos else b""

    def new_lines(self) -> tuple[list[bytes], bool]:
        """(whole lines appended since the last call, truncated?): truncated when the file
        shrank below where reading stopped or no longer holds, just before it, what was read."""
        fd, lines = self.file.fd, list[bytes]()
        size = os.fstat(fd).st_size
        if size < self.pos:
            return lines, True
        if size == self.pos:
            return lines, False
        if self.sig and os.pread(fd, len(self.sig), self.pos - len(self.sig)) != self.sig:
            return lines, True
        while True:
            data = os.pread(fd, BLOCK, self.pos)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == BLOCK:  # a line longer than a block
                data = self.file._line_from(self.pos, self.pos + (1 << 40))
                end = len(data) if data.endswith(b"\n") else 0
            if end == 0:
                return lines, False
            lines.extend(data[:end].split(b"\n")[:-1])
            self.sig = (self.sig + data[:end])[-256:] if end < 256 else data[end - 256:end]
            self.pos += end
            if end < len(data) or len(data) < BLOCK:
                return lines, False


class _Follower:
    """The state of one :func:`follow`: the file being tailed, the ones just rotated away, what was read."""

    def __init__(self, path: str, m: _Matcher, poll: float, stop: Callable[[], bool] | None) -> None:
        self.path, self.m, self.poll, self.stop = path, m, poll, stop
        self.tail: _Tail | None = None
        self.lingering: list[tuple[_Tail, float]] = []
        self.seen: set[bytes] = set()  # first lines of the files read (a file's identity)
        self.floor = 0.0  # files starting before this were there before the follow began

    def close(self) -> None:
        if self.tail is not None:
            self.tail.file.close()
        for t, _ in self.lingering:
            t.file.close()
        self.lingering = []

    def stopped(self) -> bool:
        return self.stop is not None and self.stop()

    def _hits(self, lines: list[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
        for raw in lines:
            if raw:
                hit = self.m.check(raw)
                if hit is not None:
                    yield hit

    def run(self, last: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
        started = time.time()
        cur = _File.open(self.path)
        waited = cur is None
        while cur is None:
            if self.stopped():
                return
            time.sleep(self.poll)
            cur = _File.open(self.path)
        end = 0 if waited else cur.complete_end()  # a file that came after the start is all new
        if last != 0:
            yield from self._history(cur, end, last)
        self.tail = _Tail(cur, end)
        self.floor = cur.first_time() or started
        while not self.stopped():
            tail = self.tail
            lines, truncated = tail.new_lines()
            yield from self._hits(lines)
            ident = tail.file.ident()
            if ident is not None:
                self.seen.add(ident)
            late = self._drain_lingering()
            yield from self._hits(late)
            if lines or late:
                continue
            if truncated:
                yield from self._truncated(tail)
                continue
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) != tail.file.ino:
                yield from self._rotated(tail)
                continue
            time.sleep(self.poll)

    def _linger(self, tail: _Tail) -> None:
        self.lingering.append((tail, time.monotonic() + LINGER))
        while len(self.lingering) > MAX_LINGERING:
            self.lingering.pop(0)[0].file.close()

    def _drain_lingering(self) -> list[bytes]:
        """Lines that reached files rotated away a moment ago; those past :data:`LINGER` are closed."""
        now, keep, late = time.monotonic(), [], []
        for t, deadline in self.lingering:
            try:
                lines, truncated = t.new_lines()
            except OSError:
                lines, truncated = [], True
            late.extend(lines)
            if (now > deadline and not lines) or truncated:
                t.file.close()
            else:
                keep.append((t, deadline))
        self.lingering = keep
        return late

    def _history(self, cur: _File, end: int, last: int | None) -> Iterator[tuple[str, dict[str, Any]]]:
        older = _open_files(self.path, skip={cur.ino})
        older = [f for f in older if f.path != self.path]
        try:
            plan = _plan([*older, cur], self.m.filt, cur, end)
            if last is None:
                for _, _, line, event in _forward(plan, self.m):
                    yield line, event
            else:
                for _, _, line, event in reversed(_backward(plan, self.m, last)):
                    yield line, event
            for f in older:
                ident = f.ident()
                if ident is not None:
                    self.seen.add(ident)
            if older and not older[-1].gz:  # its late lines may still come
                newest_old = older.pop()
                self._linger(_Tail(newest_old, newest_old.size))
        finally:
            _close(older)

    def _rotated(self, tail: _Tail) -> Iterator[tuple[str, dict[str, Any]]]:
        """The path names another file: finish ours, read any file rotated in between, go on with the new one."""
        new = _File.open(self.path)
        if new is None:
            return
        if new.ino == tail.file.ino:
            new.close()
            return
        lines, _ = tail.new_lines()
        yield from self._hits(lines)
        ident = tail.file.ident()
        if ident is not None:
            self.seen.add(ident)
        self._linger(tail)
        held = {t.file.ino for t, _ in self.lingering}
        self.tail = _Tail(new, 0)
        # Opened newest first: a rotation meanwhile shows a file twice (kept once), never hides one.
        files = _open_files(self.path)
        todo: list[_File] = []
        for f in files:
            if f.path == self.path or (not f.gz and f.ino == new.ino):
                break  # the new file, or newer ones: read from the tail on
            ident, start = f.ident(), f.first_time()
            if ((not f.gz and f.ino in held) or ident is None or ident in self.seen
                    or start is None or start < self.floor):
                continue
            self.seen.add(ident)
            todo.append(f)
        try:
            for f in todo:
                for _, _, line, event in _forward([(f, 0, f.size)], self.m):
                    yield line, event
                if not f.gz:
                    files.remove(f)
                    self._linger(_Tail(f, f.size))
        finally:
            _close(files)

    def _truncated(self, tail: _Tail) -> Iterator[tuple[str, dict[str, Any]]]:
        """Truncated in place (logrotate's copytruncate): what came after our last read is in
        the copy (the newest rotated file, if it starts as ours did); then read from the start."""
        pos, sig = tail.pos, tail.sig
        paths = [p for p in log_paths(self.path) if p != self.path]
        copy = _File.open(paths[-1]) if paths and not paths[-1].endswith(".gz") else None
        if copy is not None:
            try:
                if (copy.ino != tail.file.ino and copy.size > pos
                        and os.pread(copy.fd, len(sig), pos - len(sig)) == sig):
                    for _, _, line, event in _forward([(copy, pos, copy.size)], self.m):
                        yield line, event
                ident = copy.ident()
                if ident is not None:
                    self.seen.add(ident)
            finally:
                copy.close()
        tail.file._head = None
        tail.pos, tail.sig = 0, b""


def follow(path: str | os.PathLike[str], filt: LogFilter | None = None, *,
           stop: Callable[[], bool] | None = None, poll: float = FOLLOW_POLL, last: int | None = 0,
           stats: ReadStats | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Matching lines as they are appended to the log at ``path``, until ``stop()`` is true.

    ``last``: first the last N matches already there (``None``: every match
    from the oldest file on; ``0``, the default: only new lines). Waits for the
    file if it does not exist yet. ``stop`` is asked between looks (every
    ``poll`` seconds when nothing comes); closing the generator stops it too.

    Rotation is followed whichever way it is done, nothing lost and nothing
    read twice: renamed away (bgrunner's own rotation, logrotate ``create``)
    the old file is finished by its descriptor and read on for
    :data:`LINGER` seconds for late lines, any file rotated in between is read
    (found by its first line, plain or gzipped), then the new file from its
    start; truncated in place (logrotate ``copytruncate``) it is read again
    from its start, after the lines that reached the copy since the last read.
    (Lines written between logrotate's copy and its truncation are in neither
    file's remaining part: that is copytruncate's own loss.) A late line, one
    a writer put into the file just renamed away, comes when it is found:
    possibly after newer lines of the new file.
    """
    m = _Matcher(filt or LogFilter(), stats if stats is not None else ReadStats())
    follower = _Follower(os.fspath(path), m, poll, stop)
    try:
        yield from follower.run(last)
    finally:
        follower.close()
