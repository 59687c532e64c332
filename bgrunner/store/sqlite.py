"""The built-in job store: one SQLite file in WAL mode, shared by every process on the machine.

Writers are serialised by SQLite itself; multi-statement changes run under
``BEGIN IMMEDIATE`` so a claim's "count active, pick the best, update it" is one
atomic step. A connection is never used across ``fork()``: the owner pid is
recorded and a forked child opens its own. The queries both SQL stores share
live in `bgrunner.store._sql`; this module holds what only SQLite does.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from bgrunner.errors import StoreError
from bgrunner.model import JobRecord, JobStatus, NewJob, TargetLimit
from bgrunner.store._sql import (
    ACTIVE_WHERE,
    COLUMNS,
    FINAL_IN,
    META_DDL,
    READY_WHERE,
    Row,
    SqlStore,
    effective_limits,
    rate_windows,
)

#: 5: queues, unique keys, schedules, workers, per-target limits (4 stores gain them on open).
SCHEMA_VERSION = 5


#: How long (s) a statement waits for another process's lock before it fails (``?timeout=``).
DEFAULT_BUSY_TIMEOUT = 30.0


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the current directory, ``sqlite:////abs.db`` absolute.

    A query (``?timeout=S``, as SQLAlchemy's pysqlite takes it) is not part of the path.
    """
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not an SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len("sqlite:///"):].partition("?")[0]
    if not path:
        raise StoreError(f"SQLite URL has no path: {url!r}")
    return path


def busy_timeout_from_url(url: str) -> float:
    """``?timeout=S``: seconds a statement waits for a lock held by another process (default 30)."""
    from urllib.parse import parse_qsl

    query = dict(parse_qsl(url.partition("?")[2]))
    if "timeout" not in query:
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(query["timeout"])
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise StoreError(f"SQLite URL: timeout must be 0 to 86400 seconds, not {query['timeout']!r}")
    return value


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _use_wal(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """Put the database in WAL mode (it stays so, in the file).

    Changing the journal mode takes an exclusive lock and SQLite's busy handler
    does not wait for it: processes opening a brand-new store at the same moment
    get "database is locked" at once. So retry, as the busy timeout would.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class SQLiteStore(SqlStore):
    """The SQLite backend. Safe for many processes; one connection per process."""

    # jobs_ready_at serves next_run_at (through INDEXED BY, see there).
    extra_ddl = (
        "CREATE INDEX IF NOT EXISTS jobs_ready_at ON {p}jobs (run_at)"
        " WHERE status IN ('pending', 'retrying') AND pid IS NULL",
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = os.path.abspath(path_from_url(url))
        self.busy_timeout = busy_timeout_from_url(url)
        self._conn: sqlite3.Connection | None = None
        self._owner_pid = -1

    # -- connection ----------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._owner_pid != os.getpid():
            self._conn = self._connect()
            self._owner_pid = os.getpid()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        try:
            parent = os.path.dirname(self.path)
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, mode=0o700, exist_ok=True)
            if not os.path.exists(self.path):
                # Create the file with private permissions; SQLite gives -wal/-shm the same.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            _use_wal(conn, max(self.busy_timeout, 0.1))
            # NORMAL in WAL mode survives a process crash; submits switch to FULL (see create).
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open job store {self.path}: {self._why(exc)}") from exc
        return conn

    def _why(self, exc: BaseException) -> str:
        """A database error in one line, saying what a lock or a full disk means here."""
        text = _one_line(exc)
        if "locked" in text or "busy" in text:
            return (f"{text}: another process held a lock for more than {self.busy_timeout:g} s"
                    " (sqlite URL ?timeout=S waits longer)")
        if "full" in text:
            return f"{text}: free space on the disk of {self.path}; nothing was written"
        return text

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"job store {self.path}: {self._why(exc)}")

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"job store {self.path} has schema version {version}, newer than this "
                f"bgrunner ({SCHEMA_VERSION}); upgrade bgrunner"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in (META_DDL.format(p=""), *self._schema_statements()):
                    conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
                for statement in (*self._column_additions(columns), *self._index_statements()):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # a failed statement (a full disk) may have rolled it back
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._error(exc) from exc

    # Database errors leave the store as one-line StoreErrors (a locked or full database
    # included), never as the driver's exceptions: callers print them, workers back off.
    def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[Row]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        try:
            return self.conn.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _indexed_by(self, index: str) -> str:
        # With many pending jobs the planner prefers jobs_status and sorts every ready
        # row (~20 ms at 100k); the partial indexes answer in microseconds.
        return f" INDEXED BY {index}"

    def close(self) -> None:
        if self._conn is not None and self._owner_pid == os.getpid():
            self._conn.close()
        self._conn = None

    # -- submit --------------------------------------------------------------------
    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        """Insert with ``synchronous = FULL``: the id is returned only once the row is on disk."""
        self._change("PRAGMA synchronous = FULL")
        try:
            return super().create(job, status=status)
        finally:
            self._change("PRAGMA synchronous = NORMAL")

    def create_unique(self, job: NewJob) -> tuple[int, bool]:
        """As `create`: on disk before the id is returned (``BEGIN IMMEDIATE`` makes it one step)."""
        self._change("PRAGMA synchronous = FULL")
        try:
            return super().create_unique(job)
        finally:
            self._change("PRAGMA synchronous = NORMAL")

    # -- claiming ----------------------------------------------------------------
    def _claim_where(self, where: str, args: tuple[Any, ...], *, ordered: bool, now: float, cap: int,
                     host: str, worker: str | None, limits: Sequence[TargetLimit],
                     queues: Sequence[str] | None = None) -> JobRecord | None:
        """Count active, pick the best ready job ``where`` allows (and ``limits``), claim it: one transaction."""
        limits = effective_limits(limits)
        with self._tx():
            if self._fetch(f"SELECT count(*) FROM jobs WHERE {ACTIVE_WHERE}")[0][0] >= cap:
                return None
            if limits:  # counted first, in this transaction: a claim elsewhere cannot slip in between
                blocked = self._blocked(limits)
                if blocked:
                    where += f" AND target NOT IN ({', '.join('?' * len(blocked))})"
                    args = (*args, *blocked)
            pick, pick_args = self._pick(where, args, ordered=ordered, queues=queues)
            record = self._one(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_at = ?,"
                " started_at = COALESCE(started_at, ?), host = ?, worker = ?, pid = NULL, pid_ctime = NULL,"
                f" lease_at = {self.clock_sql}"
                f" WHERE id = ({pick}) RETURNING {COLUMNS}",
                (now, now, host, worker, *pick_args),
            )
            window = rate_windows(limits).get(record.target) if record is not None else None
            if record is not None and window is not None:  # log the start; forget what no window needs
                self._change(f"DELETE FROM starts WHERE target = ? AND at <= {self.clock_sql} - ?",
                             (record.target, window))
                self._change(f"INSERT INTO starts (target, at) VALUES (?, {self.clock_sql})", (record.target,))
            return record

    def _blocked(self, limits: Sequence[TargetLimit]) -> builtins.list[str]:
        """The limited targets no claim may take now, counted in the caller's transaction.

        Two small reads (the active jobs grouped by target, the start log of the
        rate-limited targets) judged here: cheaper in SQLite than binding every limit
        into one statement (PostgreSQL's ``_blocked_select``), with the same answer.
        """
        active: dict[str, int] = dict(
            self._fetch(f"SELECT target, count(*) FROM jobs WHERE {ACTIVE_WHERE} GROUP BY target"))
        blocked = {lim.target for lim in limits if lim.max_running is not None
                   and active.get(lim.target, 0) >= lim.max_running}
        rated = [lim for lim in limits if lim.rate is not None and lim.per is not None
                 and lim.target not in blocked]
        if rated:
            targets = sorted({lim.target for lim in rated})
            now, = self._fetch(f"SELECT {self.clock_sql}")[0]
            starts: dict[str, builtins.list[float]] = {}
            for target, at in self._fetch(f"SELECT target, at FROM starts WHERE target IN"
                                          f" ({', '.join('?' * len(targets))})", tuple(targets)):
                starts.setdefault(target, []).append(at)
            for lim in rated:
                assert lim.rate is not None and lim.per is not None
                if sum(1 for at in starts.get(lim.target, ()) if at > now - lim.per) >= lim.rate:
                    blocked.add(lim.target)
        return sorted(blocked)

    def _pick(self, where: str, args: tuple[Any, ...], *, ordered: bool,
              queues: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
        """The SELECT of the job to claim, with the index that answers it in a few steps."""
        order = " ORDER BY priority DESC, run_at, id LIMIT 1"
        if queues is not None and len(queues) > 1:
            # The best job of each queue (its first allowed entry in jobs_ready_queue), then the
            # best of those: bounded by the number of queues, never by what other queues hold.
            each = (f"SELECT * FROM (SELECT id, priority, run_at FROM jobs{self._indexed_by('jobs_ready_queue')}"
                    f" WHERE {where} AND queue = ?{order})")
            return (f"SELECT id FROM ({' UNION ALL '.join([each] * len(queues))}){order}",
                    tuple(a for queue in queues for a in (*args, queue)))
        if queues is not None:
            table = f"jobs{self._indexed_by('jobs_ready_queue')}"
            return f"SELECT id FROM {table} WHERE {where} AND queue = ?{order}", (*args, *queues)
        if ordered:
            return f"SELECT id FROM jobs{self._indexed_by('jobs_ready')} WHERE {where}{order}", args
        return f"SELECT id FROM jobs WHERE {where}", args

    def claim_next(self, *, now: float, cap: int, host: str, worker: str | None = None,
                   queues: Sequence[str] | None = None,
                   limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        if queues is not None and not queues:
            return None  # serves no queue
        return self._claim_where(f"{READY_WHERE} AND run_at <= ?", (now,), ordered=True, now=now, cap=cap,
                                 host=host, worker=worker, limits=limits,
                                 queues=None if queues is None else builtins.list(dict.fromkeys(queues)))

    def claim(self, job_id: int, *, now: float, cap: int, host: str, worker: str | None = None,
              limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        return self._claim_where(f"id = ? AND {READY_WHERE} AND run_at <= ?", (job_id, now), ordered=False,
                                 now=now, cap=cap, host=host, worker=worker, limits=limits)

    # -- housekeeping ----------------------------------------------------------------
    def prune(self, *, finished_before: float) -> builtins.list[int]:
        with self._tx():
            self._change(
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?"
                f" AND status IN {FINAL_IN})", (finished_before,))
            rows = self._fetch(f"DELETE FROM jobs WHERE finished_at < ? AND status IN {FINAL_IN}"
                               " RETURNING id", (finished_before,))
            return sorted(int(r[0]) for r in rows)
