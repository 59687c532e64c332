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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bgrunner.errors import StoreError
from bgrunner.model import JobRecord, JobStatus, NewJob
from bgrunner.store._sql import ACTIVE_WHERE, COLUMNS, FINAL_IN, META_DDL, READY_WHERE, Row, SqlStore

SCHEMA_VERSION = 3


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the current directory, ``sqlite:////abs.db`` absolute."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not an SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len("sqlite:///"):]
    if not path:
        raise StoreError(f"SQLite URL has no path: {url!r}")
    return path


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
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            _use_wal(conn)
            # NORMAL in WAL mode survives a process crash; submits switch to FULL (see create).
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open job store {self.path}: {exc}") from exc
        return conn

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
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[Row]:
        return self.conn.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return self.conn.execute(sql, args).rowcount

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
        conn = self.conn
        conn.execute("PRAGMA synchronous = FULL")
        try:
            return super().create(job, status=status)
        finally:
            conn.execute("PRAGMA synchronous = NORMAL")

    # -- claiming ----------------------------------------------------------------
    def _claim_where(self, pick_sql: str, pick_args: tuple[Any, ...],
                     now: float, cap: int, host: str) -> JobRecord | None:
        with self._tx():
            if self._fetch(f"SELECT count(*) FROM jobs WHERE {ACTIVE_WHERE}")[0][0] >= cap:
                return None
            return self._one(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_at = ?,"
                " started_at = COALESCE(started_at, ?), host = ?, pid = NULL, pid_ctime = NULL"
                f" WHERE id = ({pick_sql}) RETURNING {COLUMNS}",
                (now, now, host, *pick_args),
            )

    def claim_next(self, *, now: float, cap: int, host: str) -> JobRecord | None:
        pick = (f"SELECT id FROM jobs{self._indexed_by('jobs_ready')} WHERE {READY_WHERE} AND run_at <= ?"
                " ORDER BY priority DESC, run_at, id LIMIT 1")
        return self._claim_where(pick, (now,), now, cap, host)

    def claim(self, job_id: int, *, now: float, cap: int, host: str) -> JobRecord | None:
        pick = f"SELECT id FROM jobs WHERE id = ? AND {READY_WHERE} AND run_at <= ?"
        return self._claim_where(pick, (job_id, now), now, cap, host)

    # -- housekeeping ----------------------------------------------------------------
    def prune(self, *, finished_before: float) -> int:
        with self._tx():
            self._change(
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?"
                f" AND status IN {FINAL_IN})", (finished_before,))
            return self._change(f"DELETE FROM jobs WHERE finished_at < ? AND status IN {FINAL_IN}",
                                (finished_before,))
