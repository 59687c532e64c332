"""The PostgreSQL job store: one schema shared by every process on every machine.

Same semantics, fencing, columns and shared queries as the SQLite store (both
build on `bgrunner.store._sql`). What PostgreSQL adds:

- Claims are one ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)``
  statement behind a transaction-level advisory lock: the lock serialises the
  "count active jobs, then claim" check so the cap holds across processes, and
  it is taken in its own statement so the claim's snapshot sees every claim
  committed before it.
- Wake-ups by LISTEN/NOTIFY. Logical channels: ``bgrunner_jobs`` (something may
  have become claimable: a submit, a release, an unclaim, a freed slot; payload
  the job id) and ``bgrunner_cancel`` (payload the cancelled job's id).
  Notifications are hints sent at commit: a listener re-reads the store.
- Outages are ridden out: a method that loses its connection (a restart, a
  failover, a terminated backend) reconnects with backoff and runs again, for
  up to ``store.patience`` seconds (`_riding_out`).
- Every table lives in one schema, ``?schema=NAME`` in the URL (default
  ``bgrunner``), created and versioned on first use under an advisory lock.

psycopg is imported here only, so the job path never pays for it.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bgrunner.errors import StoreError
from bgrunner.model import JobRecord, TargetLimit
from bgrunner.store._sql import (
    ACTIVE_WHERE,
    COLUMNS,
    FINAL_IN,
    META_DDL,
    READY_WHERE,
    Row,
    SqlStore,
    effective_limits,
    row_to_record,
)
from bgrunner.store.base import Store

#: 4: queues, unique keys, schedules, workers, per-target limits (3 schemas gain them on open).
SCHEMA_VERSION = 4
DEFAULT_SCHEMA = "bgrunner"
#: Logical channel woken when a job may have become claimable.
JOBS_CHANNEL = "bgrunner_jobs"
#: Logical channel carrying the id of each cancelled job.
CANCEL_CHANNEL = "bgrunner_cancel"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_MAX_IDENTIFIER = 63


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


class PostgresStore(SqlStore):
    """The PostgreSQL backend. One connection per process (and per thread-safe lock)."""

    placeholder = "%s"
    like = "ILIKE"
    lock_row = " FOR UPDATE"
    id_type = "BIGSERIAL PRIMARY KEY"
    int_type = "BIGINT"  # SQLite's INTEGER is 64-bit
    real_type = "DOUBLE PRECISION"
    clock_sql = "extract(epoch from clock_timestamp())::float8"
    # jobs_active_target (shared) serves the cap count inside every claim and the per-target
    # counts of limits; the older jobs_active on (id) made those scan every active job per target.
    # jobs_ready_at serves next_run_at (a min() over the ready partial index).
    extra_ddl = (
        "DROP INDEX IF EXISTS {p}jobs_active",
        "CREATE INDEX IF NOT EXISTS jobs_ready_at ON {p}jobs (run_at)"
        " WHERE status IN ('pending', 'retrying') AND pid IS NULL",
    )

    def __init__(self, url: str) -> None:
        conninfo, schema = split_url(url)
        super().__init__(url, prefix=f'"{schema}".')
        self.conninfo, self.schema = conninfo, schema
        self.where = describe(self.conninfo)
        self.meta = f"{self.prefix}bgrunner_meta"
        self._claim_key = lock_key("claim", self.schema)
        self._init_key = lock_key("init", self.schema)
        self._conn: psycopg.Connection[Any] | None = None
        self._owner_pid = -1
        self._lock = threading.RLock()
        self._connected_once = False

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
            self._connected_once = True
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
        # The lock is re-entrant: `_fetch` / `_change` inside run on this connection and transaction.
        with self._db() as conn, conn.transaction():
            yield conn

    def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[Row]:
        with self._db() as conn:
            return conn.execute(self._dialect(sql), args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._db() as conn:
            return conn.execute(self._dialect(sql), args).rowcount

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
                conn.execute(META_DDL.format(p=self.prefix))
                version = self._read_version(conn)
                self._check_version(version)
                if version != SCHEMA_VERSION:
                    for statement in (*self._schema_statements(), *self._column_additions(None),
                                      *self._index_statements()):
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

    # -- wake-ups ----------------------------------------------------------------
    def channel(self, logical: str) -> str:
        """The wire name of a logical channel in this store's schema."""
        return channel_name(logical, self.schema)

    def notify(self, channel: str = JOBS_CHANNEL, payload: str = "") -> None:
        """Send a notification on a logical channel (at once; in a transaction, at its commit)."""
        self._fetch("SELECT pg_notify(?, ?)", (self.channel(channel), payload))

    def listen(self, *channels: str) -> Listener:
        """A dedicated connection listening on logical channels (default ``bgrunner_jobs``)."""
        return Listener(self, channels or (JOBS_CHANNEL,))

    def _waking(self, sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        # One statement: the notification is sent when the row commits.
        return (f"WITH written AS ({sql}) SELECT id, pg_notify(?, id::text) FROM written",
                (*args, self.channel(JOBS_CHANNEL)))

    def _wake_workers(self, job_id: int) -> None:
        self.notify(JOBS_CHANNEL, str(job_id))

    def _wake_cancelled(self, job_id: int) -> None:
        self.notify(CANCEL_CHANNEL, str(job_id))

    def _serialise(self, purpose: str) -> None:
        self._fetch("SELECT pg_advisory_xact_lock(?)", (lock_key(purpose, self.schema),))

    # -- claiming ------------------------------------------------------------------
    def _blocked_cte(self, limits: Sequence[TargetLimit]) -> tuple[str, tuple[Any, ...]]:
        """``WITH lim (…), blocked AS (…)``: the limited targets no claim may take now.

        Blocked: at ``max_running`` active jobs across the store, or ``rate`` starts logged
        within the last ``per`` seconds on the store's clock. Part of the claim's one
        statement, so counted under its lock. The limits travel as four arrays
        (``unnest``): the claim is sent as a simple query (two statements, one round
        trip), so PostgreSQL plans it on every call, and a VALUES row per limit cost
        more to plan than the claim takes to run.
        """
        args = ([lim.target for lim in limits], [lim.max_running for lim in limits],
                [lim.rate for lim in limits], [None if lim.per is None else float(lim.per) for lim in limits])
        sql = ("WITH lim (target, max_running, rate, per) AS MATERIALIZED"
               " (SELECT * FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::float8[])),"
               f" blocked AS MATERIALIZED ({self._blocked_select(limits)}) ")
        return sql, args

    def _blocked_select(self, limits: Sequence[TargetLimit]) -> str:
        """The targets of ``lim`` at a limit: one pass over the active jobs and one over the start log.

        Driven by the (small) active set and start log, not a count per limited target:
        a claim's cost does not grow with the number of targets that have limits. A
        part no limit needs is left out (a claim is planned each time it is sent).
        """
        jobs, starts = f"{self.prefix}jobs", f"{self.prefix}starts"
        parts = ["SELECT target FROM lim WHERE max_running <= 0"]  # no active job to group
        if any(lim.max_running is not None for lim in limits):
            parts.append(f"SELECT a.target FROM (SELECT target, count(*) AS n FROM {jobs} WHERE {ACTIVE_WHERE}"
                         " GROUP BY target) AS a JOIN lim ON lim.target = a.target"
                         " WHERE lim.max_running IS NOT NULL AND a.n >= lim.max_running")
        if any(lim.rate is not None for lim in limits):
            parts.append(f"SELECT s.target FROM {starts} s JOIN lim ON lim.target = s.target"
                         f" WHERE lim.rate IS NOT NULL AND s.at > {self.clock_sql} - lim.per"
                         " GROUP BY s.target, lim.rate HAVING count(*) >= lim.rate")
        return " UNION ".join(parts)

    def _claim_where(self, pick_where: str, pick_args: tuple[Any, ...], *, now: float, cap: int, host: str,
                     worker: str | None, limits: Sequence[TargetLimit],
                     queues: Sequence[str] | None = None) -> JobRecord | None:
        # Two statements sent as one simple query, which PostgreSQL runs as one implicit
        # transaction: the advisory lock is held until its commit, and being its own
        # statement, the UPDATE's READ COMMITTED snapshot is taken after the lock is
        # granted, so the count sees every claim committed before this one. One round
        # trip also keeps the serialising lock held as briefly as possible. The cap test
        # sits inside the pick: at the cap no ready row is even locked. With limits, the
        # blocked targets are counted in the same statement (so under the same lock), and
        # a rate-limited target's start is logged by a data-modifying CTE of it.
        jobs, starts = f"{self.prefix}jobs", f"{self.prefix}starts"
        limits = effective_limits(limits)
        where = (f"{pick_where}{' AND target NOT IN (SELECT target FROM blocked)' if limits else ''}"
                 f" AND (SELECT count(*) FROM {jobs} WHERE {ACTIVE_WHERE}) < %s")
        order = " ORDER BY priority DESC, run_at, id LIMIT 1"
        if queues:
            # The best ready job of each queue (the head of its entries in jobs_ready_queue),
            # then the best of those: bounded by the number of queues, never by how many
            # jobs of other queues rank before them in the global order.
            pick = (f"SELECT heads.id FROM unnest(%s::text[]) AS q (queue) CROSS JOIN LATERAL"
                    f" (SELECT id, priority, run_at FROM {jobs} WHERE {where} AND queue = q.queue"
                    f"{order} FOR UPDATE SKIP LOCKED) AS heads{order}")
            pick_args = (builtins.list(queues), *pick_args, cap)
        else:
            pick = f"SELECT id FROM {jobs} WHERE {where}{order} FOR UPDATE SKIP LOCKED"
            pick_args = (*pick_args, cap)
        claim = (f"UPDATE {jobs} SET status = 'running', attempts = attempts + 1,"
                 " claimed_at = %s, started_at = COALESCE(started_at, %s), host = %s, worker = %s,"
                 f" pid = NULL, pid_ctime = NULL, lease_at = {self.clock_sql}"
                 f" WHERE id = ({pick})"
                 f" RETURNING {COLUMNS}")
        args: tuple[Any, ...] = (now, now, host, worker, *pick_args)
        if limits:
            cte, cte_args = self._blocked_cte(limits)
            if any(lim.rate is not None for lim in limits):  # log the start of a rate-limited target
                claim = (f"{self._dialect(cte)}, claimed AS ({claim}),"
                         " rated AS (SELECT target, max(per) AS per FROM lim WHERE rate IS NOT NULL"
                         " GROUP BY target),"
                         f" pruned AS (DELETE FROM {starts} s USING claimed c, rated r WHERE s.target = c.target"
                         f" AND r.target = c.target AND s.at <= {self.clock_sql} - r.per),"
                         f" logged AS (INSERT INTO {starts} (target, at) SELECT c.target, {self.clock_sql}"
                         " FROM claimed c JOIN rated r ON r.target = c.target)"
                         f" SELECT {COLUMNS} FROM claimed")
            else:
                claim = f"{self._dialect(cte)} {claim}"
            args = (*cte_args, *args)
        with self._db() as conn:
            cur = psycopg.ClientCursor(conn)  # client-side binding: multi-statement allowed
            cur.execute(f"SELECT pg_advisory_xact_lock(%s); {claim}", (self._claim_key, *args))
            cur.nextset()
            row = cur.fetchone()
        return None if row is None else row_to_record(row)

    def claim_next(self, *, now: float, cap: int, host: str, worker: str | None = None,
                   queues: Sequence[str] | None = None,
                   limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        if queues is not None and not queues:
            return None  # serves no queue
        return self._claim_where(f"{READY_WHERE} AND run_at <= %s", (now,), now=now, cap=cap, host=host,
                                 worker=worker, limits=limits,
                                 queues=None if queues is None else builtins.list(dict.fromkeys(queues)))

    def claim(self, job_id: int, *, now: float, cap: int, host: str, worker: str | None = None,
              limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        return self._claim_where(f"id = %s AND {READY_WHERE} AND run_at <= %s", (job_id, now),
                                 now=now, cap=cap, host=host, worker=worker, limits=limits)

    # -- housekeeping ----------------------------------------------------------------
    def prune(self, *, finished_before: float) -> builtins.list[int]:
        rows = self._fetch(
            f"WITH gone AS (DELETE FROM {self.prefix}jobs WHERE finished_at < ?"
            f" AND status IN {FINAL_IN} RETURNING id),"
            f" history AS (DELETE FROM {self.prefix}attempts WHERE job_id IN (SELECT id FROM gone))"
            " SELECT id FROM gone ORDER BY id",
            (finished_before,),
        )
        return [int(r[0]) for r in rows]


def _is_connection_loss(exc: BaseException) -> bool:
    """A StoreError caused by the server going away (restart, failover, a terminated backend)."""
    cause = exc.__cause__
    return isinstance(cause, psycopg.OperationalError)


def _riding_out(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a store method: on a lost connection, reconnect with backoff and call it again.

    Each method is one statement or one transaction, so a call that failed on a
    lost connection did not commit and is safe to repeat (a reply lost after its
    commit is the one window left: a fenced write then reports False). Gives up
    after ``store.patience`` seconds. A store that never connected fails at once:
    a wrong URL is not an outage.
    """
    @functools.wraps(method)
    def call(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        if getattr(_calls, "depth", 0):
            return method(self, *args, **kwargs)  # inside another store call: it retries the whole
        deadline = None
        delay = OUTAGE_FIRST_DELAY
        while True:
            _calls.depth = 1
            try:
                return method(self, *args, **kwargs)
            except StoreError as exc:
                if not (self._connected_once and _is_connection_loss(exc)):
                    raise
                self._conn = None
                now = time.monotonic()
                deadline = deadline or now + self.patience
                if now >= deadline:
                    raise StoreError(f"{exc} (still unreachable after {self.patience:.0f} s)") from exc
                time.sleep(min(delay, max(0.0, deadline - now)) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, OUTAGE_MAX_DELAY)
            finally:
                _calls.depth = 0

    return call


_calls = threading.local()
#: Backoff between reconnects while the server is away: doubled from the first to the maximum.
OUTAGE_FIRST_DELAY = 0.1
OUTAGE_MAX_DELAY = 2.0


def _ride_out_outages(cls: type[PostgresStore]) -> type[PostgresStore]:
    """Apply `_riding_out` to every public method of the store interface."""
    for name in (*dir(Store), "notify"):
        if not name.startswith("_") and name != "listen" and callable(getattr(cls, name)):
            setattr(cls, name, _riding_out(getattr(cls, name)))
    return cls


_ride_out_outages(PostgresStore)


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
