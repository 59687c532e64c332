"""The JSON event log: one JSON object per line, safe with many writer processes.

Every job process writes here, so this module keeps to the standard library and
to the modules Python has loaded anyway (``os``, ``sys``, ``time``, ``_thread``)
plus ``json``. ``filelock`` (about 40 ms to import) is imported only when a file
has to be rotated and ``traceback`` only by :func:`format_exception`.

How lines stay whole and none is lost with many processes at once:

* each file is opened with ``O_WRONLY | O_APPEND | O_CREAT`` and each line is
  handed to the kernel in **one** ``os.write`` call. With ``O_APPEND`` the kernel
  moves to the end of the file and writes as one step, so lines from different
  processes never interleave or overwrite each other (on local file systems;
  NFS does not honour ``O_APPEND`` across machines, and neither does Windows);
* ``os.write`` on a regular file writes everything unless the disk is full or a
  signal hits in the middle of a huge write; a short write is finished with
  further calls (the only case where a line could be split);
* a file is opened with ``O_NOFOLLOW`` and checked to be a regular file of
  ours (:mod:`bgrunner.safefiles`): a symbolic link planted at a log's path is
  refused, never written through. A log folder others may write in is made
  private (0700) at the first line, and said so (stderr and a warning line);
  one that is not ours is refused. A refusal is one warning, then no logs;
* rotation happens under a ``filelock`` on ``<file>.lock``, and only after the
  size is checked again under the lock, so two processes never rotate the same
  file twice. A writer still holding the renamed file notices on its next line
  (the path no longer names its inode) and reopens. A line written to the old
  inode meanwhile lands in ``<file>.1`` (or a later number): late, never lost.
* retention: a rotation leaves at most ``backups`` rotated files (``.1`` newest);
  older ones, and any numbered beyond ``backups`` by an earlier setting, are
  removed. With ``compress`` a rotated file becomes ``<file>.1.gz``: written to
  ``<file>.1.gz.tmp``, renamed over, then ``<file>.1`` is removed, all under the
  rotation lock. Lines written meanwhile by other processes are kept: with
  ``compress`` every writer holds a shared ``flock`` on its file from the check
  that the path still names that file to the end of its write, and the rotator
  takes the exclusive lock on the renamed file before reading it. Once it holds
  it, no writer can still be about to write there (the next one finds the path
  renamed and reopens), so the gzipped copy has every line of the file.

There are two front doors into one sink and one line format: :meth:`EventLog.emit`
(bgrunner's own events) and :meth:`EventLog.write_event` (the event dict of a
structlog pipeline, :mod:`bgrunner.joblog`). Both build the line with
:func:`make_record` and write it through the same ``_Sink``.
"""

from __future__ import annotations

import _thread  # builtin, always loaded; ``threading`` would be one more import
import json
import os
import re  # loaded by json anyway
import sys
import time

from bgrunner.safefiles import check_folder, open_private

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

__all__ = [
    "ERROR_EVENTS",
    "ERROR_LEVELS",
    "ERROR_LOG",
    "EventLog",
    "MAIN_LOG",
    "format_exception",
    "log_files",
    "make_record",
    "read_events",
    "redact_text",
    "utc_timestamp",
]

MAIN_LOG = "background_jobs.log"
"""Every event of every job."""

ERROR_LOG = "background_jobs_errors.log"
"""The same lines, for events whose level is ``"error"`` or above (:data:`ERROR_LEVELS`) only."""

ERROR_LEVELS = frozenset({"error", "critical", "fatal"})
"""Levels whose lines also go to the errors file: ``error`` and above (structlog and stdlib names)."""

ERROR_EVENTS = frozenset({"job_failed", "job_rejected"})
"""Events logged at level ``"error"`` unless the caller gives another level."""

WARNING_EVENTS = frozenset({"job_retrying"})
"""Events logged at level ``"warning"`` unless the caller gives another level."""

REQUIRED_FIELDS = ("job_id", "target", "method", "attempt", "pid")
"""Present on every line, after timestamp, level and event; ``null`` when unknown (see :func:`make_record`)."""

ROTATE_LOCK_TIMEOUT = 10.0
"""Seconds to wait for another process's rotation; past it the line is written unrotated."""

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT  # safefiles adds O_NOFOLLOW and O_CLOEXEC


def utc_timestamp() -> str:
    """Now as ISO 8601 UTC with microseconds and a ``Z``: ``2024-05-01T12:00:00.123456Z``.

    Every line's ``timestamp``, whichever door it came in by (six fraction digits always,
    unlike ``datetime.isoformat``, which drops them at a whole second).
    """
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"


def make_record(timestamp: str, level: str, event: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """The line as a dict, keys in their order: ``timestamp``, ``level``, ``event``, ``job_id``,
    ``target``, ``method``, ``attempt``, ``pid`` (the writing process unless given), then
    ``fields`` in their order. The one place a line's keys are laid out; pops from ``fields``.
    A field named ``timestamp``, ``level`` or ``event`` is dropped (the arguments win).
    """
    record: dict[str, Any] = {
        "timestamp": timestamp,
        "level": level,
        "event": event,
        "job_id": fields.pop("job_id", None),
        "target": fields.pop("target", None),
        "method": fields.pop("method", None),
        "attempt": fields.pop("attempt", None),
        "pid": fields.pop("pid", None),
    }
    if record["pid"] is None:
        record["pid"] = os.getpid()
    for key in ("timestamp", "level", "event"):
        fields.pop(key, None)
    record.update(fields)
    return record


def _safe_value(value: Any) -> Any:
    """``value`` if JSON can write it (``default=str`` included), else a string for it."""
    try:
        json.dumps(value, default=str, allow_nan=False)
        return value
    except Exception:  # a user's object may raise anything from __str__
        try:
            return str(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@\"'<>]*):[^\s@/\"'<>]*@")
# A backslash is taken only with the character it escapes, and never before a quote: in a
# JSON-encoded line ``password=x\")`` must keep its ``\"`` or the line is no longer JSON.
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)(?:[^\s&\"'<>,;\\]|\\[^\s\"])+")


def redact_text(text: str) -> str:
    """``text`` with the password of every URL (``scheme://user:***@host``) and ``password=`` masked.

    Run over every log line (and the CLI's human output): an error message or
    a traceback quoting a store URL must not carry its password into a file.
    Costs two substring tests for a line that holds no ``://`` or ``password``.
    """
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(r"\1:***@", text)
    if "assword" in text or "ASSWORD" in text:
        text = _KEYWORD_PASSWORD.sub(r"\1***", text)
    return text


def _encode(record: dict[str, Any]) -> bytes:
    """One line of ASCII JSON ending in a newline, passwords masked; never raises for odd values."""
    try:
        text = json.dumps(record, default=str, allow_nan=False)
    except Exception:  # cycles, NaN, non-str keys, a raising __str__
        safe = {k: _safe_value(v) for k, v in record.items()}
        text = json.dumps(safe, default=str, allow_nan=False)
    return (redact_text(text) + "\n").encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` with one ``os.write``; loop only on a (rare) short write."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class _LogFile:
    """One append-only file: its path, open descriptor and the inode that descriptor is on."""

    __slots__ = ("fd", "inode", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.inode: tuple[int, int] | None = None

    def reopen(self) -> os.stat_result:
        """Open the file now at ``path`` (creating it 0o600) and return its stat."""
        fd = open_private(self.path, _OPEN_FLAGS)
        st = os.fstat(fd)
        self.close()
        self.fd, self.inode = fd, (st.st_dev, st.st_ino)
        return st

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd, self.inode = self.fd, -1, None
            try:
                os.close(fd)
            except OSError:
                pass


class _Sink:
    """The state shared by an :class:`EventLog` and all its bound views."""

    def __init__(self, log_dir: str, max_bytes: int, backups: int, compress: bool = False) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self.compress = compress and backups > 0
        self.main = _LogFile(os.path.join(log_dir, MAIN_LOG))
        self.errors = _LogFile(os.path.join(log_dir, ERROR_LOG))
        self.lock = _thread.RLock()
        self.depth = 0  # > 1: a signal handler emitted in the middle of a line
        self.owner_pid = os.getpid()
        self.disabled = False
        self.rotation_warned = False
        self.folder_checked = False

    def write(self, line: bytes, to_errors: bool) -> None:
        if self.disabled:
            return
        if os.getpid() != self.owner_pid:
            # Forked while another thread may have held the lock: start afresh.
            # The inherited descriptors are still good (O_APPEND is per file), but
            # with compress each process needs descriptors of its own: a flock
            # belongs to the open file, which a fork shares with the parent.
            self.lock = _thread.RLock()
            self.depth = 0
            self.owner_pid = os.getpid()
            if self.compress:
                self.main.close()  # the parent keeps its own: its locks stay
                self.errors.close()
        # Reentrant, so that a signal handler that logs while this thread is
        # mid-line does not deadlock; that inner line leaves the shared
        # descriptors alone (the outer one may be reopening them).
        with self.lock:
            self.depth += 1
            try:
                if self.depth > 1:
                    self._append_once(line, to_errors)
                    return
                if self.disabled:
                    return
                try:
                    self._append(self.main, line)
                    if to_errors:
                        self._append(self.errors, line)
                except OSError as exc:
                    self._disable(exc)
            finally:
                self.depth -= 1

    def close(self) -> None:
        with self.lock:
            self.main.close()
            self.errors.close()

    def _append(self, f: _LogFile, line: bytes) -> None:
        st = self._current(f)
        if 0 < self.max_bytes < st.st_size + len(line) and st.st_size > 0:
            self._rotate(f, len(line))
        if not self.compress:
            _write_all(f.fd, line)
            return
        for _ in range(5):  # a file renamed under us again and again: write anyway after that
            if _write_if_current(f.fd, f.inode, f.path, line):
                return
            self._current(f)
        _write_all(f.fd, line)

    def _append_once(self, line: bytes, to_errors: bool) -> None:
        """Append through descriptors of its own, opened and closed here; no rotation."""
        for f in (self.main, self.errors) if to_errors else (self.main,):
            try:
                fd = open_private(f.path, _OPEN_FLAGS)
            except OSError:
                continue
            try:
                if self.compress:
                    st = os.fstat(fd)
                    if _write_if_current(fd, (st.st_dev, st.st_ino), f.path, line):
                        continue
                _write_all(fd, line)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _current(self, f: _LogFile) -> os.stat_result:
        """Make ``f.fd`` point at the file now at ``f.path`` and return that file's stat.

        One ``os.stat`` per line (about 1-2 µs) is how a writer learns that another
        process rotated the file under it.
        """
        if f.fd >= 0:
            st = _stat_or_none(f.path)
            if st is not None and (st.st_dev, st.st_ino) == f.inode:
                return st
        note = None
        if not self.folder_checked:  # once per process, before its first file is opened
            note = check_folder(self.log_dir, "log folder")
            self.folder_checked = True
        try:
            st = f.reopen()
        except FileNotFoundError:  # the folder was removed since
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            st = f.reopen()
        if note is not None:
            _warn(note)
            _write_all(f.fd, _encode(make_record(utc_timestamp(), "warning", "log_folder_made_private",
                                                 {"folder": self.log_dir, "reason": note})))
            st = os.fstat(f.fd)
        return st

    def _rotate(self, f: _LogFile, incoming: int) -> None:
        """Shift ``f`` to ``.1`` (and older ones up) unless another process just did it."""
        try:
            import filelock  # ~40 ms, needed only when a file is full

            lock = filelock.FileLock(f.path + ".lock", mode=0o600)
            lock.acquire(timeout=ROTATE_LOCK_TIMEOUT, poll_interval=0.002)
        except Exception as exc:  # Timeout, ImportError, OSError
            self._warn_rotation(f.path, exc)
            return
        rotated = False
        try:
            st = _stat_or_none(f.path)
            if st is not None and st.st_size > 0 and st.st_size + incoming > self.max_bytes:
                _shift_backups(f.path, self.backups)
                rotated = True
        except OSError as exc:
            self._warn_rotation(f.path, exc)
        finally:
            try:
                f.reopen()  # our next line goes to the new file, not the one being gzipped
                if rotated and self.compress:
                    try:
                        _compress_backups(f.path, self.backups)
                    except Exception as exc:  # a full disk, a planted link: the file stays plain
                        self._warn_rotation(f.path, exc)
            finally:
                lock.release()

    def _disable(self, exc: OSError) -> None:
        self.disabled = True
        self.main.close()
        self.errors.close()
        reason = exc.strerror or str(exc)
        if exc.filename is not None and os.fspath(exc.filename) != self.log_dir:
            reason = f"{reason}: {exc.filename}"
        _warn(f"cannot write logs to {self.log_dir}: {reason}; continuing without logs")

    def _warn_rotation(self, path: str, exc: BaseException) -> None:
        if not self.rotation_warned:
            self.rotation_warned = True
            _warn(f"cannot rotate {path}: {exc!r}; it keeps growing")


def _shift_backups(path: str, backups: int) -> None:
    """``path.{n-1}`` -> ``path.{n}`` ... ``path`` -> ``path.1``; older than ``backups`` go.

    Each rotated file may be plain (``path.N``) or gzipped (``path.N.gz``); both
    forms shift alike, and any file numbered beyond ``backups`` (a smaller
    setting than before) or a ``.tmp`` left by an interrupted gzip is removed.
    With ``backups == 0`` the file is truncated in place instead: writers that
    hold it keep appending to the same inode, so no later line is lost.
    """
    if backups <= 0:
        os.truncate(path, 0)
        return
    for suffix in ("", ".gz"):
        _unlink_quietly(f"{path}.{backups}{suffix}")
    for n in range(backups - 1, 0, -1):
        for suffix in ("", ".gz"):
            try:
                os.replace(f"{path}.{n}{suffix}", f"{path}.{n + 1}{suffix}")
            except FileNotFoundError:
                pass
    os.replace(path, f"{path}.1")
    _prune(path, backups)


def _prune(path: str, backups: int) -> None:
    """Remove ``path.N`` and ``path.N.gz`` for ``N > backups``, and every ``path.N.gz.tmp``."""
    folder, base = os.path.split(path)
    prefix = base + "."
    for name in os.listdir(folder or "."):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        number = rest.split(".", 1)[0]
        if not number.isdigit() or rest[len(number):] not in ("", ".gz", ".gz.tmp"):
            continue
        if int(number) > backups or rest.endswith(".tmp"):
            _unlink_quietly(os.path.join(folder, name))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


GZIP_LOCK_TIMEOUT = 2.0
"""Seconds the rotator waits for writers to leave a renamed file; past it, it stays plain for now."""


def _compress_backups(path: str, backups: int) -> None:
    """Gzip every plain rotated file of ``path`` (normally just ``.1``); called under the rotation lock.

    One that a writer holds past :data:`GZIP_LOCK_TIMEOUT` (a stopped process) is left
    plain and gzipped at a later rotation.
    """
    for n in range(1, backups + 1):
        plain = f"{path}.{n}"
        if os.path.lexists(plain):
            _gzip_file(plain)


def _gzip_file(plain: str) -> bool:
    """``plain`` -> ``plain.gz``, atomically and with every line: True once done.

    The exclusive ``flock`` on ``plain`` waits out writers that checked the path
    before the rename and have yet to write (see :func:`_write_if_current`);
    once held, none can write to it any more. The copy goes to ``plain.gz.tmp``,
    synced, renamed to ``plain.gz``; only then is ``plain`` removed. A reader
    that finds both at once finds the same lines in each.
    """
    import fcntl
    import gzip  # ~3 ms, only at a rotation with compress on

    fd = open_private(plain, os.O_RDONLY)
    try:
        deadline = time.monotonic() + GZIP_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)
        tmp = plain + ".gz.tmp"
        _unlink_quietly(tmp)
        out = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with open(out, "wb", closefd=False) as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
                while chunk := os.read(fd, 1 << 20):
                    packed.write(chunk)
            os.fsync(out)
        except BaseException:
            os.close(out)
            _unlink_quietly(tmp)
            raise
        os.close(out)
        os.replace(tmp, plain + ".gz")
        os.unlink(plain)
        return True
    finally:
        os.close(fd)  # releases the lock


def _write_if_current(fd: int, inode: tuple[int, int] | None, path: str, line: bytes) -> bool:
    """Write ``line`` to ``fd`` if ``path`` still names its file, under a shared ``flock``: True if written.

    With compress on a rotated file is gzipped and removed, so a line must not
    land in it after the rotator has read it. The shared lock, held from the
    check to the end of the write, keeps the rotator's exclusive lock waiting
    (:func:`_gzip_file`). False: the file was renamed; reopen and try again. A
    file system without ``flock`` gets the line written unguarded.
    """
    import fcntl  # an extension module, loaded once; only with compress on

    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        _write_all(fd, line)
        return True
    try:
        st = _stat_or_none(path)
        if st is None or (st.st_dev, st.st_ino) != inode:
            return False
        _write_all(fd, line)
        return True
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass


def _warn(message: str) -> None:
    """One line on stderr; a job process may have no usable stderr, which is fine."""
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(f"bgrunner: warning: {message}\n")
            stream.flush()
    except Exception:  # closed or broken stderr
        pass


class EventLog:
    """Appends one JSON object per line to ``<dir>/background_jobs.log``.

    Lines whose level is ``"error"`` or above (``"critical"``, ``"fatal"``) are
    also appended to ``<dir>/background_jobs_errors.log``. That is the whole routing rule. The
    level defaults by event: ``job_failed`` and ``job_rejected`` are ``"error"``
    (so they reach both files), ``job_retrying`` is ``"warning"`` (main file
    only), everything else ``"info"``. A caller may pass another level.

    Each line's keys, in this order: ``timestamp`` (UTC, ISO 8601 with
    microseconds and a ``Z``, e.g. ``2024-05-01T12:00:00.123456Z``; Python
    3.11's ``datetime.fromisoformat`` reads it), ``level``, ``event``,
    ``job_id``, ``target``, ``method``, ``attempt``, ``pid``, then the bound
    fields and the call's fields (the call wins over a bound field). ``pid``
    defaults to ``os.getpid()`` at the time of the line; the other four are
    ``null`` when not given. A field named ``timestamp`` is ignored. Values JSON
    can't write are written as ``str(value)``; lines are ASCII (other
    characters are ``\\uXXXX`` escaped), so one line is always one line.

    Files are opened at the first line, not here. The folder is created 0o700
    and the files 0o600 if missing. When the folder or a file can't be created
    or written, one warning goes to stderr and the log goes quiet:
    :meth:`emit` never raises.

    Rotation: before a line would take a file past ``max_bytes`` (0 = never),
    the file becomes ``.1``, ``.1`` becomes ``.2`` ... and files beyond
    ``backups`` are dropped. A single line bigger than ``max_bytes`` is written
    whole into its own file. With many writers a file may end a few lines past
    ``max_bytes`` (lines that raced the check, or reached it after the rename).
    ``compress``: each rotated file is gzipped (``.1.gz``, ``.2.gz`` ...) by the
    process that rotated it, under the rotation lock (about 0.1 s per 10 MB);
    every process writing the folder should be given the same setting (the
    allowlist's ``[runner] log_compress``), since it is the writers' shared
    lock that keeps a late line from landing in a file already gzipped.

    Thread-safe within a process; a signal handler may emit too, even while its
    own thread is in the middle of a line.
    """

    __slots__ = ("_bound", "_sink")

    def __init__(
        self, log_dir: str | os.PathLike[str], max_bytes: int = 10_000_000, backups: int = 5,
        compress: bool = False,
    ) -> None:
        if max_bytes < 0 or backups < 0:
            raise ValueError("max_bytes and backups must be >= 0")
        self._sink = _Sink(os.fspath(log_dir), max_bytes, backups, compress)
        self._bound: dict[str, Any] = {}

    @property
    def log_dir(self) -> str:
        return self._sink.log_dir

    @property
    def main_path(self) -> str:
        return self._sink.main.path

    @property
    def errors_path(self) -> str:
        return self._sink.errors.path

    def bind(self, **fields: Any) -> EventLog:
        """A view that adds ``fields`` to each of its lines; it shares this log's files."""
        view = object.__new__(EventLog)
        view._sink = self._sink
        view._bound = {**self._bound, **fields}
        return view

    def emit(self, event: str, *, level: str | None = None, **fields: Any) -> None:
        """Append one line (and to the errors file if its level is ``"error"`` or above). Never raises."""
        try:
            if self._sink.disabled:
                return
            if level is None:
                level = (
                    "error"
                    if event in ERROR_EVENTS
                    else "warning" if event in WARNING_EVENTS else "info"
                )
            merged = {**self._bound, **fields} if self._bound else fields
            self._write(make_record(utc_timestamp(), level, event, merged))
        except Exception:  # logging must never break a job
            pass

    def write_event(self, event_dict: Mapping[str, Any]) -> None:
        """The other front door: append a finished event dict (a structlog pipeline's) as one line.

        ``event_dict`` holds ``event``, ``level`` (``"info"`` if missing) and
        ``timestamp`` (made now if missing or not a string) besides its fields;
        the line is laid out, encoded, redacted and routed exactly as
        :meth:`emit` does it, and this view's bound fields apply under the
        dict's. Never raises.
        """
        try:
            if self._sink.disabled:
                return
            fields = {**self._bound, **event_dict}
            timestamp = fields.pop("timestamp", None)
            level = fields.pop("level", None)
            record = make_record(timestamp if isinstance(timestamp, str) else utc_timestamp(),
                                 str(level) if level is not None else "info",
                                 fields.pop("event", None), fields)
            self._write(record)
        except Exception:  # logging must never break a job
            pass

    def _write(self, record: dict[str, Any]) -> None:
        self._sink.write(_encode(record), record["level"] in ERROR_LEVELS)

    def prepare(self) -> None:
        """Open the main file now, not at the first line (a fork-server spare, before its job)."""
        sink = self._sink
        try:
            with sink.lock:
                if not sink.disabled:
                    sink._current(sink.main)
        except OSError:
            pass  # the first emit reports it

    def close(self) -> None:
        """Close the files (of every view). A later :meth:`emit` opens them again."""
        self._sink.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def format_exception(exc: BaseException) -> str:
    """The full traceback text of ``exc`` (chained causes included), no trailing newline."""
    import traceback  # ~10 ms, only needed when a job fails

    return "".join(traceback.format_exception(exc)).rstrip("\n")


def log_files(path: str | os.PathLike[str]) -> list[str]:
    """``path``'s rotated files (``.N`` and ``.N.gz``) then ``path`` itself, oldest first; those that exist.

    Kept for its callers: the reader is :mod:`bgrunner.logread` (``log_paths``).
    """
    from bgrunner.logread import log_paths  # not on the job path

    return log_paths(path)


def read_events(
    path: str | os.PathLike[str], job_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """The events in one log file (a ``.gz`` one too), in order; only ``job_id``'s if given.

    A line that is not a JSON object is skipped. A missing file yields nothing
    (the errors file, for one, exists only once something has failed); a
    symbolic link or a file not ours raises ``UnsafePathError``. Use
    :func:`log_files` to read the rotated files too, or :func:`bgrunner.logread.read`
    for a whole log with filters.
    """
    from bgrunner.logread import file_events  # not on the job path

    return file_events(path, job_id)
