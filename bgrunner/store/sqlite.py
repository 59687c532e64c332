"""The built-in job store: one SQLite file in WAL mode, shared by every process on the machine.

Writers are serialised by SQLite itself; multi-statement changes run under
``BEGIN IMMEDIATE`` so a claim's "count active, pick the best, update it" is one
atomic step. A connection is never used across ``fork()``: the owner pid is
recorded and a forked child opens its own.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bgrunner.errors import StoreError
from bgrunner.model import (
    CANCELLABLE,
    STATUSES,
    AttemptRecord,
    AuditEntry,
    HostRecord,
    JobRecord,
    JobStatus,
    NewJob,
)
from bgrunner.store.base import Store


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS bgrunner_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    retry_delay REAL NOT NULL,
    timeout REAL NOT NULL,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    claimed_at REAL,
    pid INTEGER,
    pid_ctime REAL,
    host TEXT,
    error TEXT,
    traceback TEXT,
    result TEXT,
    progress TEXT,
    then_jobs TEXT,
    parent_id INTEGER,
    retry_of INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX IF NOT EXISTS jobs_ready_at ON jobs (run_at)
    WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_target ON jobs (target, id);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    started_at REAL,
    finished_at REAL NOT NULL,
    pid INTEGER,
    error TEXT,
    traceback TEXT,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id INTEGER,
    detail TEXT,
    address TEXT
);
"""

COLUMNS = (
    "id, target, method, params, status, priority, attempts, max_attempts, retry_delay, timeout,"
    " run_at, created_at, started_at, finished_at, claimed_at, pid, pid_ctime, host, error,"
    " traceback, result, progress, then_jobs, parent_id, retry_of"
)

#: Jobs that hold (or are about to hold) a process: they count against the cap.
ACTIVE_WHERE = "(status = 'running' OR (status = 'retrying' AND pid IS NOT NULL))"
READY_WHERE = "status IN ('pending', 'retrying') AND pid IS NULL"


def row_to_record(row: tuple[Any, ...]) -> JobRecord:
    (
        id_, target, method, params, status, priority, attempts, max_attempts, retry_delay,
        timeout, run_at, created_at, started_at, finished_at, claimed_at, pid, pid_ctime, host,
        error, traceback, result, progress, then_jobs, parent_id, retry_of,
    ) = row
    return JobRecord(
        id=id_, target=target, method=method, params=json.loads(params), status=status,
        priority=priority, attempts=attempts, max_attempts=max_attempts,
        retry_delay=float(retry_delay), timeout=float(timeout), run_at=run_at, created_at=created_at,
        started_at=started_at, finished_at=finished_at, claimed_at=claimed_at, pid=pid,
        pid_ctime=pid_ctime, host=host, error=error, traceback=traceback,
        result=decode_json(result), progress=decode_json(progress),
        then=decode_json(then_jobs) or [], parent_id=parent_id, retry_of=retry_of,
    )


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the current directory, ``sqlite:////abs.db`` absolute."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not an SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len("sqlite:///"):]
    if not path:
        raise StoreError(f"SQLite URL has no path: {url!r}")
    return path


class SQLiteStore(Store):
    """The SQLite backend. Safe for many processes; one connection per process."""

    def __init__(self, url: str) -> None:
        self.url = url
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
            conn.execute("PRAGMA journal_mode = WAL")
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
                for statement in SCHEMA.split(";"):
                    if statement.strip():
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

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> JobRecord | None:
        row = self.conn.execute(sql, args).fetchone()
        return None if row is None else row_to_record(row)

    def close(self) -> None:
        if self._conn is not None and self._owner_pid == os.getpid():
            self._conn.close()
        self._conn = None

    # -- submit and read -------------------------------------------------------
    def _insert(self, job: NewJob, status: JobStatus, extra: dict[str, Any]) -> int:
        now = time.time()
        values: dict[str, Any] = {
            "target": job.target, "method": job.method, "params": json.dumps(job.params),
            "status": status, "priority": job.priority, "max_attempts": job.max_attempts,
            "retry_delay": job.retry_delay, "timeout": job.timeout,
            "run_at": job.run_at or now, "created_at": now,
            "then_jobs": json.dumps(job.then) if job.then else None,
            "parent_id": job.parent_id, "retry_of": job.retry_of, **extra,
        }
        for key in ("started_at", "claimed_at"):
            if key in values and values[key] is None:
                values[key] = now
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(values.values()))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        """Insert with ``synchronous = FULL``: the id is returned only once the row is on disk."""
        conn = self.conn
        conn.execute("PRAGMA synchronous = FULL")
        try:
            return self._insert(job, status, {})
        finally:
            conn.execute("PRAGMA synchronous = NORMAL")

    def create_running(self, job: NewJob, *, pid: int, pid_ctime: float, host: str) -> int:
        return self._insert(job, JobStatus.RUNNING, {
            "attempts": 1, "started_at": None, "claimed_at": None, "pid": pid,
            "pid_ctime": pid_ctime, "host": host,
        })

    def get(self, job_id: int) -> JobRecord | None:
        return self._one(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    def list(self, *, status: str | None = None, target: str | None = None,
             search: str | None = None, before_id: int | None = None,
             limit: int = 50) -> builtins.list[JobRecord]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if status:
            where.append("status = ?")
            args.append(status)
        if target:
            where.append("target = ?")
            args.append(target)
        if search:
            where.append("(params LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')")
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self.conn.execute(
            f"SELECT {COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [row_to_record(r) for r in rows]

    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        rows = self.conn.execute(
            "SELECT job_id, attempt, outcome, started_at, finished_at, pid, error, traceback"
            " FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)
        ).fetchall()
        return [AttemptRecord(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
            counts[status] = n
        return counts

    # -- claiming ----------------------------------------------------------------
    def _claim_where(self, conn: sqlite3.Connection, pick_sql: str, pick_args: tuple[Any, ...],
                     now: float, cap: int, host: str) -> JobRecord | None:
        active = conn.execute(f"SELECT count(*) FROM jobs WHERE {ACTIVE_WHERE}").fetchone()[0]
        if active >= cap:
            return None
        return self._one(
            f"UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_at = ?,"
            f" started_at = COALESCE(started_at, ?), host = ?, pid = NULL, pid_ctime = NULL"
            f" WHERE id = ({pick_sql}) RETURNING {COLUMNS}",
            (now, now, host, *pick_args),
        )

    def claim_next(self, *, now: float, cap: int, host: str) -> JobRecord | None:
        # INDEXED BY: with many pending jobs the planner prefers jobs_status and sorts every
        # ready row (~20 ms at 100k); the partial index answers in microseconds.
        pick = (f"SELECT id FROM jobs INDEXED BY jobs_ready WHERE {READY_WHERE} AND run_at <= ?"
                " ORDER BY priority DESC, run_at, id LIMIT 1")
        with self._tx() as conn:
            return self._claim_where(conn, pick, (now,), now, cap, host)

    def claim(self, job_id: int, *, now: float, cap: int, host: str) -> JobRecord | None:
        pick = f"SELECT id FROM jobs WHERE id = ? AND {READY_WHERE} AND run_at <= ?"
        with self._tx() as conn:
            return self._claim_where(conn, pick, (job_id, now), now, cap, host)

    def set_process(self, job_id: int, attempt: int, *, pid: int, pid_ctime: float) -> bool:
        cur = self.conn.execute(
            "UPDATE jobs SET pid = ?, pid_ctime = ? WHERE id = ? AND attempts = ?"
            " AND status = 'running' AND (pid IS NULL OR pid = ?)",
            (pid, pid_ctime, job_id, attempt, pid),
        )
        return cur.rowcount == 1

    def unclaim(self, job_id: int, attempt: int) -> bool:
        cur = self.conn.execute(
            "UPDATE jobs SET status = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'pending' END,"
            " attempts = attempts - 1, pid = NULL, pid_ctime = NULL, claimed_at = NULL,"
            " started_at = CASE WHEN attempts > 1 THEN started_at ELSE NULL END"
            " WHERE id = ? AND attempts = ? AND status = 'running'",
            (job_id, attempt),
        )
        return cur.rowcount == 1

    def next_run_at(self) -> float | None:
        row = self.conn.execute(
            f"SELECT min(run_at) FROM jobs INDEXED BY jobs_ready_at WHERE {READY_WHERE}").fetchone()
        return None if row is None else row[0]

    def active(self) -> builtins.list[JobRecord]:
        rows = self.conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE {ACTIVE_WHERE}").fetchall()
        return [row_to_record(r) for r in rows]

    # -- attempt lifecycle -----------------------------------------------------------
    def begin_attempt(self, job_id: int, attempt: int, *, now: float) -> bool:
        cur = self.conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, claimed_at = ?"
            " WHERE id = ? AND attempts = ? AND status = 'retrying' AND pid IS NOT NULL",
            (now, job_id, attempt),
        )
        return cur.rowcount == 1

    def _record_attempt(self, conn: sqlite3.Connection, job_id: int, attempt: int,
                        outcome: str, started_at: float | None, now: float,
                        error: str | None, traceback: str | None) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO attempts (job_id, attempt, outcome, started_at, finished_at,"
            " pid, error, traceback) SELECT id, attempts, ?, COALESCE(?, claimed_at), ?, pid, ?, ?"
            " FROM jobs WHERE id = ? AND attempts = ? AND status = 'running'",
            (outcome, started_at, now, error, traceback, job_id, attempt),
        )

    def retry_later(self, job_id: int, attempt: int, *, outcome: str, error: str,
                    traceback: str | None, run_at: float, release: bool, now: float,
                    started_at: float | None = None) -> bool:
        keep_pid = "pid" if not release else "NULL"
        keep_ctime = "pid_ctime" if not release else "NULL"
        with self._tx() as conn:
            self._record_attempt(conn, job_id, attempt, outcome, started_at, now, error, traceback)
            cur = conn.execute(
                f"UPDATE jobs SET status = 'retrying', error = ?, traceback = ?, run_at = ?,"
                f" pid = {keep_pid}, pid_ctime = {keep_ctime}"
                f" WHERE id = ? AND attempts = ? AND status = 'running'",
                (error, traceback, run_at, job_id, attempt),
            )
        return cur.rowcount == 1

    def finish(self, job_id: int, attempt: int, *, status: JobStatus, now: float,
               error: str | None = None, traceback: str | None = None,
               result: str | None = None, outcome: str | None = None,
               started_at: float | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() takes completed or failed, not {status!r}")
        with self._tx() as conn:
            self._record_attempt(conn, job_id, attempt, outcome or status, started_at, now,
                                 error, traceback)
            cur = conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, traceback = ?, result = ?"
                " WHERE id = ? AND attempts = ? AND status = 'running'",
                (status, now, error, traceback, result, job_id, attempt),
            )
        return cur.rowcount == 1

    def set_progress(self, job_id: int, attempt: int, progress: dict[str, Any]) -> bool:
        cur = self.conn.execute(
            "UPDATE jobs SET progress = ? WHERE id = ? AND attempts = ? AND status = 'running'",
            (json.dumps(progress), job_id, attempt),
        )
        return cur.rowcount == 1

    def finished_since(self, since: float) -> builtins.list[tuple[float, float | None, str]]:
        rows = self.conn.execute(
            "SELECT finished_at, finished_at - started_at, status FROM jobs"
            " WHERE finished_at >= ? ORDER BY finished_at", (since,)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def add_audit(self, *, actor: str, action: str, job_id: int | None, detail: str | None,
                  address: str | None, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO audit (at, actor, action, job_id, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
            (now, actor, action, job_id, detail, address))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> builtins.list[AuditEntry]:
        rows = self.conn.execute(
            "SELECT id, at, actor, action, job_id, detail, address FROM audit"
            " WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit)).fetchall()
        return [AuditEntry(*r) for r in rows]

    # -- hosts -----------------------------------------------------------------------
    def heartbeat(self, host: str, *, pid: int, now: float) -> None:
        self.conn.execute(
            "INSERT INTO hosts (host, pid, started_at, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (host) DO UPDATE SET last_seen = excluded.last_seen, pid = excluded.pid,"
            " started_at = CASE WHEN hosts.pid = excluded.pid THEN hosts.started_at"
            " ELSE excluded.started_at END", (host, pid, now, now))

    def remove_host(self, host: str) -> None:
        self.conn.execute("DELETE FROM hosts WHERE host = ?", (host,))

    def hosts(self) -> builtins.list[HostRecord]:
        rows = self.conn.execute(
            "SELECT host, pid, started_at, last_seen FROM hosts ORDER BY last_seen DESC").fetchall()
        return [HostRecord(*r) for r in rows]

    def cancelled_on(self, host: str, *, since: float) -> builtins.list[JobRecord]:
        rows = self.conn.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE status = 'cancelled' AND host = ?"
            " AND pid IS NOT NULL AND finished_at >= ?", (host, since)).fetchall()
        return [row_to_record(r) for r in rows]

    # -- cancellation and housekeeping ---------------------------------------------
    def cancel(self, job_id: int, *, now: float) -> JobRecord | None:
        statuses = ", ".join(f"'{s}'" for s in sorted(CANCELLABLE))
        with self._tx() as conn:
            before = self._one(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            if before is None or before.status not in CANCELLABLE:
                return None
            self._record_attempt(conn, job_id, before.attempts, JobStatus.CANCELLED, None, now,
                                 "cancelled", None)
            conn.execute(
                f"UPDATE jobs SET status = '{JobStatus.CANCELLED}', finished_at = ?,"
                f" error = 'cancelled' WHERE id = ? AND status IN ({statuses})",
                (now, job_id),
            )
        return before

    def prune(self, *, finished_before: float) -> int:
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?"
                " AND status IN ('completed', 'failed', 'cancelled'))", (finished_before,))
            cur = conn.execute(
                "DELETE FROM jobs WHERE finished_at < ?"
                " AND status IN ('completed', 'failed', 'cancelled')", (finished_before,))
        return cur.rowcount

