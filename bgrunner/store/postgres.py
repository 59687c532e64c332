"""The PostgreSQL job store: one schema shared by every process on every machine.

Same semantics, fencing and columns as the SQLite store (it reuses that store's
column list, status predicates and row decoding). What PostgreSQL adds:

- Claims are one ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)``
  statement behind a transaction-level advisory lock: the lock serialises the
  "count active jobs, then claim" check so the cap holds across processes, and
  it is taken in its own statement so the claim's snapshot sees every claim
  committed before it.
- Wake-ups by LISTEN/NOTIFY. Logical channels: ``bgrunner_jobs`` (something may
  have become claimable: a submit, a release, an unclaim, a freed slot; payload
  the job id) and ``bgrunner_cancel`` (payload the cancelled job's id).
  Notifications are hints sent at commit: a listener re-reads the store.
- Every table lives in one schema, ``?schema=NAME`` in the URL (default
  ``bgrunner``), created and versioned on first use under an advisory lock.

psycopg is imported here only, so the job path never pays for it.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
from bgrunner.store.sqlite import ACTIVE_WHERE, COLUMNS, READY_WHERE, row_to_record

SCHEMA_VERSION = 2
DEFAULT_SCHEMA = "bgrunner"
#: Logical channel woken when a job may have become claimable.
JOBS_CHANNEL = "bgrunner_jobs"
#: Logical channel carrying the id of each cancelled job.
CANCEL_CHANNEL = "bgrunner_cancel"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_MAX_IDENTIFIER = 63

# "{s}" is the quoted schema name. params/result/progress/then_jobs are TEXT holding
# json.dumps output, so they round-trip exactly as in SQLite (JSONB would reorder keys
# and rewrite numbers). Integers are BIGINT: SQLite's INTEGER is 64-bit.
SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.jobs (
    id BIGSERIAL PRIMARY KEY,
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    retry_delay DOUBLE PRECISION NOT NULL,
    timeout DOUBLE PRECISION NOT NULL,
    run_at DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    claimed_at DOUBLE PRECISION,
    pid BIGINT,
    pid_ctime DOUBLE PRECISION,
    host TEXT,
    error TEXT,
    traceback TEXT,
    result TEXT,
    progress TEXT,
    then_jobs TEXT,
    parent_id BIGINT,
    retry_of BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_ready ON {s}.jobs (priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX IF NOT EXISTS jobs_active ON {s}.jobs (id)
    WHERE status = 'running' OR (status = 'retrying' AND pid IS NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_status ON {s}.jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_target ON {s}.jobs (target, id);
CREATE INDEX IF NOT EXISTS jobs_finished ON {s}.jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.attempts (
    job_id BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION NOT NULL,
    pid BIGINT,
    error TEXT,
    traceback TEXT,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS {s}.hosts (
    host TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id BIGINT,
    detail TEXT,
    address TEXT
)
"""


def split_url(url: str) -> tuple[str, str]:
    """The libpq URL without bgrunner's own ``schema`` query parameter, and that schema.

    The rest of the URL is passed on byte for byte (``postgresql:///db?host=/run/…``
    and multi-host URLs included): only the ``schema=`` pairs are taken out.
    """
    base, _, query = url.partition("?")
    kept, schema = [], DEFAULT_SCHEMA
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        if unquote(key) == "schema":
            schema = unquote(value)
        else:
            kept.append(pair)
    if not _IDENTIFIER.match(schema):
        raise StoreError(
            f"invalid schema name {schema!r} in the database URL: use letters, digits and _"
            " (at most 63, not starting with a digit)"
        )
    return base + ("?" + "&".join(kept) if kept else ""), schema


def describe(conninfo: str) -> str:
    """``host:port/dbname`` for messages: never the password."""
    try:
        info = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparsable database URL)"
    host = info.get("host") or info.get("hostaddr") or "local socket"
    port = info.get("port") or "5432"
    dbname = info.get("dbname") or info.get("user") or "default database"
    return f"{host}:{port}/{dbname}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for one purpose in one schema."""
    digest = hashlib.blake2b(f"bgrunner:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def channel_name(logical: str, schema: str) -> str:
    """The wire channel: the logical name in the default schema, suffixed by schema otherwise.

    Several schemas may share one database (tests do): a cancel of job 5 in one
    must not reach a worker of job 5 in another.
    """
    if schema == DEFAULT_SCHEMA:
        return logical
    name = f"{logical}_{schema}"
    if len(name) > _MAX_IDENTIFIER:
        name = f"{logical}_{hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()}"
    return name


def connect(conninfo: str, where: str) -> psycopg.Connection[Any]:
    """An autocommit connection, or a one-line StoreError naming host and database."""
    info: dict[str, Any] = {}
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise StoreError(f"invalid PostgreSQL URL: {first_line(exc)}") from exc
    if "connect_timeout" not in given:
        info["connect_timeout"] = 10
    if "application_name" not in given:
        info["application_name"] = "bgrunner"
    try:
        return psycopg.connect(conninfo, autocommit=True, **info)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to the PostgreSQL job store at {where}: {first_line(exc)}"
        ) from exc


class PostgresStore(Store):
    """The PostgreSQL backend. One connection per process (and per thread-safe lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = split_url(url)
        self.where = describe(self.conninfo)
        self.jobs = f'"{self.schema}".jobs'
        self.attempts_table = f'"{self.schema}".attempts'
        self.meta = f'"{self.schema}".bgrunner_meta'
        self.audit_table = f'"{self.schema}".audit'
        self._claim_key = lock_key("claim", self.schema)
        self._init_key = lock_key("init", self.schema)
        self._conn: psycopg.Connection[Any] | None = None
        self._owner_pid = -1
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where}, schema={self.schema})"

    # -- connection ----------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._owner_pid != os.getpid():
            # A forked child: drop (never close) the parent's connection; psycopg
            # does not terminate a connection inherited through fork.
            self._conn = None
            self._owner_pid = os.getpid()
        if self._conn is None or self._conn.closed:
            conn = connect(self.conninfo, self.where)
            try:
                self._ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, held by this thread; database errors become one-line StoreErrors."""
        if self._owner_pid != os.getpid():
            self._lock = threading.RLock()  # a lock held at fork() time stays held in the child
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    self._conn = None
                raise StoreError(f"job store {self.where}: {first_line(exc)}") from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self._db() as conn, conn.transaction():
            yield conn

    def _read_version(self, conn: psycopg.Connection[Any]) -> int | None:
        found = conn.execute("SELECT to_regclass(%s)::text", (self.meta,)).fetchone()
        if found is None or found[0] is None:
            return None
        row = conn.execute(f"SELECT value FROM {self.meta} WHERE key = 'schema_version'").fetchone()
        if row is None:
            return None
        try:
            return int(row[0])
        except ValueError as exc:
            raise StoreError(f"job store {self.where}: bad schema_version {row[0]!r}") from exc

    def _check_version(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"job store {self.where} schema {self.schema} has version {version}, newer than"
                f" this bgrunner ({SCHEMA_VERSION}); upgrade bgrunner"
            )

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the schema once, under a lock, so two first users don't race."""
        try:
            version = self._read_version(conn)
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._init_key,))
                exists = conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                ).fetchone()
                if not exists:  # CREATE SCHEMA needs a privilege an existing schema does not
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.meta}"
                             " (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                version = self._read_version(conn)
                self._check_version(version)
                if version != SCHEMA_VERSION:
                    for statement in SCHEMA.replace("{s}", f'"{self.schema}"').split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {self.meta} (key, value) VALUES ('schema_version', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (str(SCHEMA_VERSION),),
                    )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot prepare job store {self.where} schema {self.schema}: {first_line(exc)}"
            ) from exc

    def close(self) -> None:
        if self._conn is not None and self._owner_pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> JobRecord | None:
        with self._db() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else row_to_record(row)

    def _records(self, sql: str, args: tuple[Any, ...] = ()) -> list[JobRecord]:
        with self._db() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [row_to_record(r) for r in rows]

    def _changed(self, sql: str, args: tuple[Any, ...]) -> bool:
        with self._db() as conn:
            return conn.execute(sql, args).rowcount == 1

    # -- wake-ups ----------------------------------------------------------------
    def channel(self, logical: str) -> str:
        """The wire name of a logical channel in this store's schema."""
        return channel_name(logical, self.schema)

    def notify(self, channel: str = JOBS_CHANNEL, payload: str = "") -> None:
        """Send a notification on a logical channel (delivered at once: autocommit)."""
        with self._db() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel(channel), payload))

    def listen(self, *channels: str) -> Listener:
        """A dedicated connection listening on logical channels (default ``bgrunner_jobs``)."""
        return Listener(self, channels or (JOBS_CHANNEL,))

    # -- submit and read -----------------------------------------------------------
    def _insert(self, job: NewJob, status: JobStatus, extra: dict[str, Any], notify: bool) -> int:
        now = time.time()
        values: dict[str, Any] = {
            "target": job.target, "method": job.method, "params": json.dumps(job.params),
            "status": status, "priority": job.priority, "max_attempts": job.max_attempts,
            "retry_delay": job.retry_delay, "timeout": job.timeout,
            "run_at": job.run_at or now, "created_at": now,
            "then_jobs": json.dumps(job.then) if job.then else None,
            "parent_id": job.parent_id, "retry_of": job.retry_of, **extra,
        }
        names = ", ".join(values)
        marks = ", ".join("%s" for _ in values)
        insert = f"INSERT INTO {self.jobs} ({names}) VALUES ({marks}) RETURNING id"
        args: tuple[Any, ...] = tuple(values.values())
        if notify:  # one statement: the notification is sent when the row commits
            insert = f"WITH ins AS ({insert}) SELECT id, pg_notify(%s, id::text) FROM ins"
            args += (self.channel(JOBS_CHANNEL),)
        with self._db() as conn:
            row = conn.execute(insert, args).fetchone()
        assert row is not None
        return int(row[0])

    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        return self._insert(job, status, {}, notify=True)

    def create_running(self, job: NewJob, *, pid: int, pid_ctime: float, host: str) -> int:
        now = time.time()
        return self._insert(job, JobStatus.RUNNING, {
            "attempts": 1, "started_at": now, "claimed_at": now, "pid": pid,
            "pid_ctime": pid_ctime, "host": host,
        }, notify=False)

    def get(self, job_id: int) -> JobRecord | None:
        return self._one(f"SELECT {COLUMNS} FROM {self.jobs} WHERE id = %s", (job_id,))

    def list(self, *, status: str | None = None, target: str | None = None,
             search: str | None = None, before_id: int | None = None,
             limit: int = 50) -> builtins.list[JobRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status:
            where.append("status = %s")
            args.append(status)
        if target:
            where.append("target = %s")
            args.append(target)
        if search:
            where.append("(params ILIKE %s ESCAPE '\\' OR error ILIKE %s ESCAPE '\\')")
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
            args += [pattern, pattern]
        if before_id is not None:
            where.append("id < %s")
            args.append(before_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._records(
            f"SELECT {COLUMNS} FROM {self.jobs} {clause} ORDER BY id DESC LIMIT %s",
            (*args, limit),
        )

    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        with self._db() as conn:
            rows = conn.execute(
                "SELECT job_id, attempt, outcome, started_at, finished_at, pid, error, traceback"
                f" FROM {self.attempts_table} WHERE job_id = %s ORDER BY attempt", (job_id,)
            ).fetchall()
        return [AttemptRecord(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        with self._db() as conn:
            for status, n in conn.execute(
                f"SELECT status, count(*) FROM {self.jobs} GROUP BY status"
            ):
                counts[status] = n
        return counts

    # -- claiming ------------------------------------------------------------------
    def _claim_where(self, pick_where: str, pick_args: tuple[Any, ...],
                     now: float, cap: int, host: str) -> JobRecord | None:
        # Two statements sent as one simple query, which PostgreSQL runs as one implicit
        # transaction: the advisory lock is held until its commit, and being its own
        # statement, the UPDATE's READ COMMITTED snapshot is taken after the lock is
        # granted, so the count sees every claim committed before this one. One round
        # trip also keeps the serialising lock held as briefly as possible. The cap test
        # sits inside the pick: at the cap no ready row is even locked.
        with self._db() as conn:
            cur = psycopg.ClientCursor(conn)  # client-side binding: multi-statement allowed
            cur.execute(
                "SELECT pg_advisory_xact_lock(%s);"
                f" UPDATE {self.jobs} SET status = 'running', attempts = attempts + 1,"
                " claimed_at = %s, started_at = COALESCE(started_at, %s), host = %s,"
                " pid = NULL, pid_ctime = NULL"
                f" WHERE id = (SELECT id FROM {self.jobs} WHERE {pick_where}"
                f" AND (SELECT count(*) FROM {self.jobs} WHERE {ACTIVE_WHERE}) < %s"
                " ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {COLUMNS}",
                (self._claim_key, now, now, host, *pick_args, cap),
            )
            cur.nextset()
            row = cur.fetchone()
        return None if row is None else row_to_record(row)

    def claim_next(self, *, now: float, cap: int, host: str) -> JobRecord | None:
        return self._claim_where(f"{READY_WHERE} AND run_at <= %s", (now,), now, cap, host)

    def claim(self, job_id: int, *, now: float, cap: int, host: str) -> JobRecord | None:
        return self._claim_where(f"id = %s AND {READY_WHERE} AND run_at <= %s",
                                 (job_id, now), now, cap, host)

    def set_process(self, job_id: int, attempt: int, *, pid: int, pid_ctime: float) -> bool:
        return self._changed(
            f"UPDATE {self.jobs} SET pid = %s, pid_ctime = %s WHERE id = %s AND attempts = %s"
            " AND status = 'running' AND (pid IS NULL OR pid = %s)",
            (pid, pid_ctime, job_id, attempt, pid),
        )

    def unclaim(self, job_id: int, attempt: int) -> bool:
        return self._changed(
            f"WITH upd AS (UPDATE {self.jobs} SET"
            " status = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'pending' END,"
            " attempts = attempts - 1, pid = NULL, pid_ctime = NULL, claimed_at = NULL,"
            " started_at = CASE WHEN attempts > 1 THEN started_at ELSE NULL END"
            " WHERE id = %s AND attempts = %s AND status = 'running' RETURNING id)"
            " SELECT pg_notify(%s, id::text) FROM upd",
            (job_id, attempt, self.channel(JOBS_CHANNEL)),
        )

    def next_run_at(self) -> float | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT min(run_at) FROM {self.jobs} WHERE {READY_WHERE}").fetchone()
        return None if row is None else row[0]

    def active(self) -> builtins.list[JobRecord]:
        return self._records(f"SELECT {COLUMNS} FROM {self.jobs} WHERE {ACTIVE_WHERE}")

    # -- attempt lifecycle -----------------------------------------------------------
    def begin_attempt(self, job_id: int, attempt: int, *, now: float) -> bool:
        return self._changed(
            f"UPDATE {self.jobs} SET status = 'running', attempts = attempts + 1, claimed_at = %s"
            " WHERE id = %s AND attempts = %s AND status = 'retrying' AND pid IS NOT NULL",
            (now, job_id, attempt),
        )

    def _end_attempt(self, conn: psycopg.Connection[Any], job_id: int, attempt: int,
                     outcome: str, started_at: float | None, now: float,
                     error: str | None, traceback: str | None) -> bool:
        """Lock the running attempt and record its outcome; False if the fence does not match.

        The row lock (not just the final UPDATE's WHERE) keeps a concurrent cancel
        from interleaving between the history row and the status change.
        """
        row = conn.execute(
            f"SELECT claimed_at, pid FROM {self.jobs}"
            " WHERE id = %s AND attempts = %s AND status = 'running' FOR UPDATE",
            (job_id, attempt),
        ).fetchone()
        if row is None:
            return False
        claimed_at, pid = row
        self._record_attempt(conn, job_id, attempt, outcome,
                             claimed_at if started_at is None else started_at,
                             now, pid, error, traceback)
        return True

    def _record_attempt(self, conn: psycopg.Connection[Any], job_id: int, attempt: int,
                        outcome: str, started_at: float | None, now: float, pid: int | None,
                        error: str | None, traceback: str | None) -> None:
        conn.execute(
            f"INSERT INTO {self.attempts_table} (job_id, attempt, outcome, started_at,"
            " finished_at, pid, error, traceback) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = EXCLUDED.outcome,"
            " started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,"
            " pid = EXCLUDED.pid, error = EXCLUDED.error, traceback = EXCLUDED.traceback",
            (job_id, attempt, outcome, started_at, now, pid, error, traceback),
        )

    def retry_later(self, job_id: int, attempt: int, *, outcome: str, error: str,
                    traceback: str | None, run_at: float, release: bool, now: float,
                    started_at: float | None = None) -> bool:
        keep_pid = "NULL" if release else "pid"
        keep_ctime = "NULL" if release else "pid_ctime"
        with self._tx() as conn:
            if not self._end_attempt(conn, job_id, attempt, outcome, started_at, now,
                                     error, traceback):
                return False
            conn.execute(
                f"UPDATE {self.jobs} SET status = 'retrying', error = %s, traceback = %s,"
                f" run_at = %s, pid = {keep_pid}, pid_ctime = {keep_ctime}"
                " WHERE id = %s AND attempts = %s AND status = 'running'",
                (error, traceback, run_at, job_id, attempt),
            )
            if release:
                conn.execute("SELECT pg_notify(%s, %s)",
                             (self.channel(JOBS_CHANNEL), str(job_id)))
        return True

    def finish(self, job_id: int, attempt: int, *, status: JobStatus, now: float,
               error: str | None = None, traceback: str | None = None,
               result: str | None = None, outcome: str | None = None,
               started_at: float | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() takes completed or failed, not {status!r}")
        with self._tx() as conn:
            if not self._end_attempt(conn, job_id, attempt, outcome or status, started_at, now,
                                     error, traceback):
                return False
            conn.execute(
                f"UPDATE {self.jobs} SET status = %s, finished_at = %s, error = %s,"
                " traceback = %s, result = %s"
                " WHERE id = %s AND attempts = %s AND status = 'running'",
                (status, now, error, traceback, result, job_id, attempt),
            )
            # A slot is free: a worker held back by the cap may claim again.
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel(JOBS_CHANNEL), str(job_id)))
        return True

    def set_progress(self, job_id: int, attempt: int, progress: dict[str, Any]) -> bool:
        return self._changed(
            f"UPDATE {self.jobs} SET progress = %s"
            " WHERE id = %s AND attempts = %s AND status = 'running'",
            (json.dumps(progress), job_id, attempt),
        )

    def finished_since(self, since: float) -> builtins.list[tuple[float, float | None, str]]:
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT finished_at, finished_at - started_at, status FROM {self.jobs}"
                " WHERE finished_at >= %s ORDER BY finished_at", (since,)).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    # -- audit -----------------------------------------------------------------------
    def add_audit(self, *, actor: str, action: str, job_id: int | None, detail: str | None,
                  address: str | None, now: float) -> int:
        with self._db() as conn:
            row = conn.execute(
                f"INSERT INTO {self.audit_table} (at, actor, action, job_id, detail, address)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (now, actor, action, job_id, detail, address)).fetchone()
        assert row is not None
        return int(row[0])

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> builtins.list[AuditEntry]:
        where = "" if before_id is None else "WHERE id < %s"
        args = () if before_id is None else (before_id,)
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT id, at, actor, action, job_id, detail, address FROM {self.audit_table}"
                f" {where} ORDER BY id DESC LIMIT %s", (*args, limit)).fetchall()
        return [AuditEntry(*r) for r in rows]

    # -- hosts -----------------------------------------------------------------------
    @property
    def hosts_table(self) -> str:
        return f'"{self.schema}".hosts'

    def heartbeat(self, host: str, *, pid: int, now: float) -> None:
        with self._db() as conn:
            conn.execute(
                f"INSERT INTO {self.hosts_table} AS h (host, pid, started_at, last_seen)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (host) DO UPDATE SET"
                " last_seen = EXCLUDED.last_seen, pid = EXCLUDED.pid,"
                " started_at = CASE WHEN h.pid = EXCLUDED.pid THEN h.started_at"
                " ELSE EXCLUDED.started_at END", (host, pid, now, now))

    def remove_host(self, host: str) -> None:
        with self._db() as conn:
            conn.execute(f"DELETE FROM {self.hosts_table} WHERE host = %s", (host,))

    def hosts(self) -> builtins.list[HostRecord]:
        with self._db() as conn:
            rows = conn.execute(f"SELECT host, pid, started_at, last_seen FROM {self.hosts_table}"
                                " ORDER BY last_seen DESC").fetchall()
        return [HostRecord(*r) for r in rows]

    def cancelled_on(self, host: str, *, since: float) -> builtins.list[JobRecord]:
        return self._records(
            f"SELECT {COLUMNS} FROM {self.jobs} WHERE status = 'cancelled' AND host = %s"
            " AND pid IS NOT NULL AND finished_at >= %s", (host, since))

    # -- cancellation and housekeeping ---------------------------------------------
    def cancel(self, job_id: int, *, now: float) -> JobRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM {self.jobs} WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            before = None if row is None else row_to_record(row)
            if before is None or before.status not in CANCELLABLE:
                return None
            if before.status == JobStatus.RUNNING:
                self._record_attempt(conn, job_id, before.attempts, JobStatus.CANCELLED, before.claimed_at,
                                     now, before.pid, "cancelled", None)
            conn.execute(
                f"UPDATE {self.jobs} SET status = '{JobStatus.CANCELLED}', finished_at = %s,"
                " error = 'cancelled' WHERE id = %s", (now, job_id),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel(CANCEL_CHANNEL), str(job_id)))
            if before.owned:
                conn.execute("SELECT pg_notify(%s, %s)",
                             (self.channel(JOBS_CHANNEL), str(job_id)))
        return before

    def prune(self, *, finished_before: float) -> int:
        with self._db() as conn:
            row = conn.execute(
                f"WITH gone AS (DELETE FROM {self.jobs} WHERE finished_at < %s"
                " AND status IN ('completed', 'failed', 'cancelled') RETURNING id),"
                f" history AS (DELETE FROM {self.attempts_table}"
                "  WHERE job_id IN (SELECT id FROM gone))"
                " SELECT count(*) FROM gone",
                (finished_before,),
            ).fetchone()
        return 0 if row is None else int(row[0])


class Listener:
    """A dedicated connection LISTENing on logical channels; ``wait`` returns what arrived.

    Notifications are hints: after a connection loss (``wait`` raises StoreError
    once, the next call reconnects) some may have been missed, so a listener
    must also poll the store now and then.
    """

    def __init__(self, store: PostgresStore, channels: tuple[str, ...]) -> None:
        self.store = store
        self.channels = {store.channel(c): c for c in channels}
        self._conn: psycopg.Connection[Any] | None = None
        self._owner_pid = -1

    def _connection(self) -> psycopg.Connection[Any]:
        if self._owner_pid != os.getpid():
            self._conn = None  # never use (nor close) a connection inherited through fork
            self._owner_pid = os.getpid()
        if self._conn is None or self._conn.closed:
            conn = connect(self.store.conninfo, self.store.where)
            try:
                for wire in self.channels:
                    conn.execute(f'LISTEN "{wire}"')
            except psycopg.Error as exc:
                conn.close()
                raise StoreError(f"cannot LISTEN on {self.store.where}: {first_line(exc)}") from exc
            self._conn = conn
        return self._conn

    def open(self) -> Listener:
        """Start listening now (otherwise the first ``wait`` does)."""
        self._connection()
        return self

    def events(self, timeout: float | None) -> builtins.list[tuple[str, str]]:
        """(logical channel, payload) pairs: waits up to ``timeout`` for the first, then drains."""
        conn = self._connection()
        received: builtins.list[tuple[str, str]] = []
        try:
            for note in conn.notifies(timeout=timeout, stop_after=1):
                received.append((self.channels.get(note.channel, note.channel), note.payload))
            if received:
                for note in conn.notifies(timeout=0):
                    received.append((self.channels.get(note.channel, note.channel), note.payload))
        except psycopg.Error as exc:
            conn.close()
            self._conn = None
            raise StoreError(f"lost the LISTEN connection to {self.store.where}:"
                             f" {first_line(exc)}") from exc
        return received

    def wait(self, timeout: float | None) -> builtins.list[str]:
        """The payloads received within ``timeout`` seconds (an empty list on timeout)."""
        return [payload for _, payload in self.events(timeout)]

    def fileno(self) -> int:
        """The socket, readable when a notification may be waiting (for select())."""
        return self._connection().fileno()

    def close(self) -> None:
        if self._conn is not None and self._owner_pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Listener:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
