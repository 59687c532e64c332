"""What the SQLite and PostgreSQL stores share: columns, row decoding, DDL and every query that reads the same.

One copy of each shared statement keeps the backends from drifting apart; a
backend subclasses `SqlStore` and adds only what differs (connections,
transactions, schema versioning, claims, prune, durability, wake-ups). Shared
SQL uses ``?`` placeholders (converted by `_dialect`, so it never holds a
literal ``%``) and table names behind ``self.prefix`` (``""`` or ``"schema".``).
On the job path: nothing imported here registers at-fork handlers.
"""

from __future__ import annotations

import builtins
import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from bgrunner.model import (
    CANCELLABLE,
    STATUSES,
    AttemptRecord,
    AuditEntry,
    FireResult,
    JobRecord,
    JobStatus,
    NewJob,
    ScheduleState,
    TargetLimit,
    WorkerRecord,
)
from bgrunner.store.base import Store

Row = tuple[Any, ...]

COLUMNS = (
    "id, target, method, params, status, priority, attempts, max_attempts, retry_delay, timeout,"
    " run_at, created_at, started_at, finished_at, claimed_at, pid, pid_ctime, host, error,"
    " traceback, result, progress, then_jobs, parent_id, retry_of, unstarted, lease_at,"
    " queue, unique_key, schedule, scheduled_for, worker"
)
WORKER_COLUMNS = "id, host, pid, queues, concurrency, started_at, last_seen, machine"
SCHEDULE_COLUMNS = "name, next_at, paused, spec, last_at, last_job_id, updated_at"
ATTEMPT_COLUMNS = "job_id, attempt, outcome, started_at, finished_at, pid, error, traceback"

#: Jobs that hold (or are about to hold) a process: they count against the cap.
ACTIVE_WHERE = "(status = 'running' OR (status = 'retrying' AND pid IS NOT NULL))"
#: Jobs a worker may claim once their run_at has come.
READY_WHERE = "status IN ('pending', 'retrying') AND pid IS NULL"
FINAL_IN = "('completed', 'failed', 'cancelled')"
CANCELLABLE_IN = "(" + ", ".join(f"'{s}'" for s in sorted(CANCELLABLE)) + ")"
#: Jobs holding their unique key (the partial unique index's predicate, written as the index has it).
HOLDS_KEY_WHERE = "unique_key IS NOT NULL AND status IN ('pending', 'retrying', 'running')"

#: The meta table (PostgreSQL keeps its schema version there; SQLite uses user_version).
META_DDL = "CREATE TABLE IF NOT EXISTS {p}bgrunner_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# One layout for both databases. {p} is the table prefix, {id} the auto-increment key,
# {int} and {real} the 64-bit integer and float types. params/result/progress/then_jobs
# are TEXT holding json.dumps output, so they round-trip exactly (JSONB would reorder
# keys and rewrite numbers). Each dialect adds its own indexes (`SqlStore.extra_ddl`).
DDL = """
CREATE TABLE IF NOT EXISTS {p}jobs (
    id {id},
    target TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    priority {int} NOT NULL DEFAULT 0,
    attempts {int} NOT NULL DEFAULT 0,
    max_attempts {int} NOT NULL,
    retry_delay {real} NOT NULL,
    timeout {real} NOT NULL,
    run_at {real} NOT NULL,
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    claimed_at {real},
    pid {int},
    pid_ctime {real},
    host TEXT,
    error TEXT,
    traceback TEXT,
    result TEXT,
    progress TEXT,
    then_jobs TEXT,
    parent_id {int},
    retry_of {int},
    unstarted {int} NOT NULL DEFAULT 0,
    lease_at {real},
    queue TEXT NOT NULL DEFAULT 'default',
    unique_key TEXT,
    schedule TEXT,
    scheduled_for {real},
    worker TEXT
);
CREATE INDEX IF NOT EXISTS jobs_ready ON {p}jobs (priority DESC, run_at, id)
    WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON {p}jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_target ON {p}jobs (target, id);
CREATE INDEX IF NOT EXISTS jobs_finished ON {p}jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {p}attempts (
    job_id {int} NOT NULL,
    attempt {int} NOT NULL,
    outcome TEXT NOT NULL,
    started_at {real},
    finished_at {real} NOT NULL,
    pid {int},
    error TEXT,
    traceback TEXT,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS {p}workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid {int} NOT NULL,
    queues TEXT,
    concurrency {int} NOT NULL,
    started_at {real} NOT NULL,
    last_seen {real} NOT NULL,
    machine TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS {p}schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    next_at {real},
    paused {int} NOT NULL DEFAULT 0,
    last_at {real},
    last_job_id {int},
    updated_at {real}
);
CREATE TABLE IF NOT EXISTS {p}starts (
    target TEXT NOT NULL,
    at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS starts_target_at ON {p}starts (target, at);
CREATE TABLE IF NOT EXISTS {p}audit (
    id {id},
    at {real} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id {int},
    detail TEXT,
    address TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON {p}audit (at);
CREATE TABLE IF NOT EXISTS {p}revoked_sessions (
    session_id TEXT PRIMARY KEY,
    until {real} NOT NULL
)
"""

# Indexes over columns an older store gains by `ADDED_COLUMNS`: created after those are added.
# jobs_unique_active is what makes `create_unique` hold across processes; jobs_active_target
# serves the per-target counts of claims with limits (and PostgreSQL's cap count);
# jobs_ready_queue the claims of a worker serving some queues (the best job of each queue is
# its first entry there, whatever the other queues hold); jobs_queue queue_counts (covering)
# and list(queue=, status=).
INDEX_DDL = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_active ON {p}jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'retrying', 'running');
CREATE INDEX IF NOT EXISTS jobs_active_target ON {p}jobs (target)
    WHERE status = 'running' OR (status = 'retrying' AND pid IS NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_ready_queue ON {p}jobs (queue, priority DESC, run_at, id, target)
    WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON {p}jobs (queue, status, id)
"""

#: Columns added after the first layout: (table, column, type), added to older stores on open.
ADDED_COLUMNS = (
    ("jobs", "unstarted", "{int} NOT NULL DEFAULT 0"),
    ("jobs", "lease_at", "{real}"),
    ("jobs", "queue", "TEXT NOT NULL DEFAULT 'default'"),
    ("jobs", "unique_key", "TEXT"),
    ("jobs", "schedule", "TEXT"),
    ("jobs", "scheduled_for", "{real}"),
    ("jobs", "worker", "TEXT"),
)


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def row_to_record(row: Row) -> JobRecord:
    """A `JobRecord` from a row of `COLUMNS` (JSON columns decoded, status as `JobStatus`)."""
    (
        id_, target, method, params, status, priority, attempts, max_attempts, retry_delay,
        timeout, run_at, created_at, started_at, finished_at, claimed_at, pid, pid_ctime, host,
        error, traceback, result, progress, then_jobs, parent_id, retry_of, unstarted, lease_at,
        queue, unique_key, schedule, scheduled_for, worker,
    ) = row
    return JobRecord(
        id=id_, target=target, method=method, params=json.loads(params), status=JobStatus(status),
        priority=priority, attempts=attempts, max_attempts=max_attempts,
        retry_delay=float(retry_delay), timeout=float(timeout), run_at=run_at, created_at=created_at,
        started_at=started_at, finished_at=finished_at, claimed_at=claimed_at, pid=pid,
        pid_ctime=pid_ctime, host=host, error=error, traceback=traceback,
        result=decode_json(result), progress=decode_json(progress),
        then=decode_json(then_jobs) or [], parent_id=parent_id, retry_of=retry_of,
        unstarted=unstarted, lease_at=lease_at, queue=queue, unique_key=unique_key, schedule=schedule,
        scheduled_for=scheduled_for, worker=worker,
    )


def row_to_worker(row: Row) -> WorkerRecord:
    id_, host, pid, queues, concurrency, started_at, last_seen, machine = row
    return WorkerRecord(id=id_, host=host, pid=pid,
                        queues=None if queues is None else tuple(json.loads(queues)),
                        concurrency=concurrency, started_at=started_at, last_seen=last_seen, machine=machine)


def row_to_schedule(row: Row) -> ScheduleState:
    name, next_at, paused, spec, last_at, last_job_id, updated_at = row
    return ScheduleState(name=name, next_at=next_at, paused=bool(paused), spec=spec, last_at=last_at,
                         last_job_id=last_job_id, updated_at=updated_at)


def effective_limits(limits: Sequence[TargetLimit]) -> builtins.list[TargetLimit]:
    """The limits that limit something (a target with neither a cap nor a rate is free)."""
    return [lim for lim in limits if lim.max_running is not None or lim.rate is not None]


def rate_windows(limits: Sequence[TargetLimit]) -> dict[str, float]:
    """Per rate-limited target, the longest window: starts older than it are of no use."""
    windows: dict[str, float] = {}
    for lim in limits:
        if lim.rate is not None and lim.per is not None:
            windows[lim.target] = max(windows.get(lim.target, 0.0), float(lim.per))
    return windows


class SqlStore(Store):
    """The store methods whose SQL is the same on every database, over a few dialect hooks.

    A dialect implements `_fetch`, `_change` and `_tx`; with notifications, also
    `_waking`, `_wake_workers` and `_wake_cancelled`.
    """

    #: The driver's parameter placeholder (shared SQL is written with "?").
    placeholder: ClassVar[str] = "?"
    #: The case-insensitive pattern match used by list(search=...).
    like: ClassVar[str] = "LIKE"
    #: Appended to the job-row pick ending an attempt: a row lock keeps a concurrent cancel out.
    lock_row: ClassVar[str] = ""
    #: DDL type names: the auto-increment primary key, 64-bit integers, floats.
    id_type: ClassVar[str] = "INTEGER PRIMARY KEY AUTOINCREMENT"
    int_type: ClassVar[str] = "INTEGER"
    real_type: ClassVar[str] = "REAL"
    #: The dialect's own statements after the shared DDL (indexes its queries rely on).
    extra_ddl: ClassVar[tuple[str, ...]] = ()
    #: The database's clock in epoch seconds: every liveness comparison (heartbeats,
    #: leases) uses it, so hosts whose own clocks disagree still agree on who is alive.
    clock_sql: ClassVar[str] = "(julianday('now') - 2440587.5) * 86400.0"

    def __init__(self, url: str, *, prefix: str = "") -> None:
        self.url = url
        self.prefix = prefix

    # -- dialect hooks ---------------------------------------------------------------
    @abstractmethod
    def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[Row]:
        """Run one statement written with ``?`` placeholders; every row it returned."""

    @abstractmethod
    def _change(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement written with ``?`` placeholders; the number of rows it changed."""

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Any]:
        """A transaction: the `_fetch` / `_change` calls inside it commit together or not at all."""

    def _waking(self, sql: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        """``sql`` (ending ``RETURNING id``) also waking idle workers at commit; still one row per job."""
        return sql, args

    def _wake_workers(self, job_id: int) -> None:
        """In a transaction: wake idle workers at commit (a job became claimable or a slot freed)."""

    def _wake_cancelled(self, job_id: int) -> None:
        """In a transaction: tell the job's host at commit that it was cancelled."""

    def _indexed_by(self, index: str) -> str:
        """An index hint for the table before it (SQLite's planner needs some; none by default)."""
        return ""

    # -- helpers -----------------------------------------------------------------------
    def _dialect(self, sql: str) -> str:
        """Shared SQL with this driver's placeholders."""
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _schema_statements(self) -> builtins.list[str]:
        """The CREATE statements of the shared tables (and their first indexes), prefixed.

        Then `_column_additions`, then `_index_statements`: an older store gains its new
        columns before the indexes over them are made.
        """
        ddl = DDL.format(p=self.prefix, id=self.id_type, int=self.int_type, real=self.real_type)
        return [s.strip() for s in ddl.split(";") if s.strip()]

    def _index_statements(self) -> builtins.list[str]:
        """The indexes over added columns, then this dialect's own, prefixed."""
        shared = [s.strip() for s in INDEX_DDL.format(p=self.prefix).split(";") if s.strip()]
        return shared + [s.format(p=self.prefix) for s in self.extra_ddl]

    def _column_additions(self, existing: set[str] | None) -> builtins.list[str]:
        """ALTERs adding `ADDED_COLUMNS` a store made by an older bgrunner lacks.

        ``existing`` None: the dialect has ``ADD COLUMN IF NOT EXISTS`` (every one is listed).
        """
        return [f"ALTER TABLE {self.prefix}{table} ADD COLUMN"
                f"{' IF NOT EXISTS' if existing is None else ''} {column}"
                f" {kind.format(int=self.int_type, real=self.real_type)}"
                for table, column, kind in ADDED_COLUMNS
                if existing is None or column not in existing]

    def _serialise(self, purpose: str) -> None:
        """In a transaction: wait for any other transaction serialised on ``purpose`` to end.

        SQLite's ``BEGIN IMMEDIATE`` already serialises every writer: nothing to do there.
        """

    @staticmethod
    def _in_list(column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """`` AND column IN (?, …)`` (an empty sequence matches nothing)."""
        if not values:
            return " AND 1 = 0", ()
        return f" AND {column} IN ({', '.join('?' * len(values))})", tuple(values)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> JobRecord | None:
        rows = self._fetch(sql, args)
        return row_to_record(rows[0]) if rows else None

    def _records(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[JobRecord]:
        return [row_to_record(row) for row in self._fetch(sql, args)]

    # -- submit and read -------------------------------------------------------------
    def _insert_sql(self, job: NewJob, status: JobStatus, now: float, *, wake: bool, conflict: str = "",
                    **extra: Any) -> tuple[str, tuple[Any, ...]]:
        """The INSERT of the job's row as given (None is NULL), ``conflict`` before its RETURNING id."""
        values: dict[str, Any] = {
            "target": job.target, "method": job.method, "params": json.dumps(job.params),
            "status": status, "priority": job.priority, "max_attempts": job.max_attempts,
            "retry_delay": job.retry_delay, "timeout": job.timeout,
            "run_at": job.run_at or now, "created_at": now,
            "then_jobs": json.dumps(job.then) if job.then else None,
            "parent_id": job.parent_id, "retry_of": job.retry_of, "queue": job.queue,
            "unique_key": job.unique_key, "schedule": job.schedule, "scheduled_for": job.scheduled_for,
            **extra,
        }
        sql = (f"INSERT INTO {self.prefix}jobs ({', '.join(values)})"
               f" VALUES ({', '.join(['?'] * len(values))}){conflict} RETURNING id")
        args = tuple(values.values())
        if wake:  # one statement: the notification goes out when the row commits
            sql, args = self._waking(sql, args)
        return sql, args

    def _insert(self, job: NewJob, status: JobStatus, now: float, *, wake: bool, **extra: Any) -> int:
        """Insert the job's row as given: None is NULL (callers pass their timestamps)."""
        return int(self._fetch(*self._insert_sql(job, status, now, wake=wake, **extra))[0][0])

    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        return self._insert(job, status, time.time(), wake=True)

    def create_unique(self, job: NewJob) -> tuple[int, bool]:
        if not job.unique_key:
            raise ValueError("create_unique() needs a job with a unique_key")
        sql, args = self._insert_sql(job, JobStatus.PENDING, time.time(), wake=True,
                                     conflict=f" ON CONFLICT (unique_key) WHERE {HOLDS_KEY_WHERE} DO NOTHING")
        while True:
            # The insert waits for a concurrent holder's transaction, then does nothing; the
            # select (a later statement, a newer snapshot) then sees that holder. If it ended
            # in between, the key is free again: go round.
            with self._tx():
                rows = self._fetch(sql, args)
                if rows:
                    return int(rows[0][0]), True
                rows = self._fetch(f"SELECT id FROM {self.prefix}jobs WHERE unique_key = ? AND {HOLDS_KEY_WHERE}",
                                   (job.unique_key,))
                if rows:
                    return int(rows[0][0]), False

    def create_running(self, job: NewJob, *, pid: int, pid_ctime: float, host: str) -> int:
        now = time.time()
        job_id = self._insert(job, JobStatus.RUNNING, now, wake=False, attempts=1, started_at=now,
                              claimed_at=now, pid=pid, pid_ctime=pid_ctime, host=host)
        self.renew_lease(job_id, pid=pid)  # on the store's clock, like every lease
        return job_id

    def get(self, job_id: int) -> JobRecord | None:
        return self._one(f"SELECT {COLUMNS} FROM {self.prefix}jobs WHERE id = ?", (job_id,))

    def list(self, *, status: str | None = None, target: str | None = None,
             search: str | None = None, before_id: int | None = None,
             limit: int = 50, queue: str | None = None) -> builtins.list[JobRecord]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if queue:
            where.append("queue = ?")
            args.append(queue)
        if status:
            where.append("status = ?")
            args.append(status)
        if target:
            where.append("target = ?")
            args.append(target)
        if search:
            where.append(f"(params {self.like} ? ESCAPE '\\' OR error {self.like} ? ESCAPE '\\')")
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args += [f"%{escaped}%"] * 2
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._records(f"SELECT {COLUMNS} FROM {self.prefix}jobs {clause} ORDER BY id DESC LIMIT ?",
                             (*args, limit))

    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        rows = self._fetch(f"SELECT {ATTEMPT_COLUMNS} FROM {self.prefix}attempts WHERE job_id = ?"
                           " ORDER BY attempt", (job_id,))
        return [AttemptRecord(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for status, n in self._fetch(f"SELECT status, count(*) FROM {self.prefix}jobs GROUP BY status"):
            counts[status] = n
        return counts

    def queue_counts(self) -> dict[str, dict[str, int]]:
        # One statement (one snapshot), both halves answered from indexes alone.
        rows = self._fetch(
            f"SELECT queue, status, count(*) FROM {self.prefix}jobs{self._indexed_by('jobs_queue')}"
            " GROUP BY queue, status UNION ALL"
            f" SELECT queue, 'ready', count(*) FROM {self.prefix}jobs{self._indexed_by('jobs_ready_queue')}"
            f" WHERE {READY_WHERE} AND run_at <= ? GROUP BY queue", (time.time(),))
        counts: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            counts.setdefault(queue, {**dict.fromkeys(STATUSES, 0), "ready": 0})[status] = int(n)
        return counts

    # -- claiming (the claims themselves are the dialect's) -----------------------------
    def set_process(self, job_id: int, attempt: int, *, pid: int, pid_ctime: float) -> bool:
        return self._change(
            f"UPDATE {self.prefix}jobs SET pid = ?, pid_ctime = ?, lease_at = {self.clock_sql}"
            " WHERE id = ? AND attempts = ? AND status = 'running' AND (pid IS NULL OR pid = ?)",
            (pid, pid_ctime, job_id, attempt, pid),
        ) == 1

    def unclaim(self, job_id: int, attempt: int) -> bool:
        # ``attempts`` stays (it is the fence: a late process of this claim must never match a
        # later claim); ``unstarted`` records that this claim's attempt did not count.
        return len(self._fetch(*self._waking(
            f"UPDATE {self.prefix}jobs SET"
            " status = CASE WHEN attempts - unstarted > 1 THEN 'retrying' ELSE 'pending' END,"
            " unstarted = unstarted + 1, pid = NULL, pid_ctime = NULL, claimed_at = NULL,"
            " started_at = CASE WHEN attempts - unstarted > 1 THEN started_at ELSE NULL END"
            " WHERE id = ? AND attempts = ? AND status = 'running' AND pid IS NULL RETURNING id",
            (job_id, attempt),
        ))) == 1

    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None:
        if queues is None:
            rows = self._fetch(f"SELECT min(run_at) FROM {self.prefix}jobs{self._indexed_by('jobs_ready_at')}"
                               f" WHERE {READY_WHERE}")
        else:  # the served queues' entries of jobs_ready_queue (covering): never other queues' jobs
            where, args = self._in_list("queue", queues)
            rows = self._fetch(f"SELECT min(run_at) FROM {self.prefix}jobs{self._indexed_by('jobs_ready_queue')}"
                               f" WHERE {READY_WHERE}{where}", args)
        return rows[0][0] if rows else None

    def active(self) -> builtins.list[JobRecord]:
        return self._records(f"SELECT {COLUMNS} FROM {self.prefix}jobs WHERE {ACTIVE_WHERE}")

    # -- attempt lifecycle (fenced: attempts = ? and the expected status) ------------------
    def begin_attempt(self, job_id: int, attempt: int, *, now: float) -> bool:
        return self._change(
            f"UPDATE {self.prefix}jobs SET status = 'running', attempts = attempts + 1, claimed_at = ?,"
            f" lease_at = {self.clock_sql}"
            " WHERE id = ? AND attempts = ? AND status = 'retrying' AND pid IS NOT NULL",
            (now, job_id, attempt),
        ) == 1

    def release(self, job_id: int, attempt: int) -> bool:
        return len(self._fetch(*self._waking(
            f"UPDATE {self.prefix}jobs SET pid = NULL, pid_ctime = NULL"
            " WHERE id = ? AND attempts = ? AND status = 'retrying' AND pid IS NOT NULL RETURNING id",
            (job_id, attempt),
        ))) == 1

    def _record_attempt(self, job_id: int, attempt: int, outcome: str, started_at: float | None,
                        now: float, error: str | None, traceback: str | None) -> bool:
        """Write the running attempt's history row (insert or replace); False if the fence does not match.

        Its values come from the job row itself, picked with `lock_row`, in the
        caller's transaction: the status change that follows cannot miss.
        """
        return self._change(
            f"INSERT INTO {self.prefix}attempts ({ATTEMPT_COLUMNS})"
            " SELECT id, attempts, ?, COALESCE(?, claimed_at), ?, pid, ?, ?"
            f" FROM {self.prefix}jobs WHERE id = ? AND attempts = ? AND status = 'running'{self.lock_row}"
            " ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = excluded.outcome,"
            " started_at = excluded.started_at, finished_at = excluded.finished_at,"
            " pid = excluded.pid, error = excluded.error, traceback = excluded.traceback",
            (outcome, started_at, now, error, traceback, job_id, attempt),
        ) == 1

    def retry_later(self, job_id: int, attempt: int, *, outcome: str, error: str,
                    traceback: str | None, run_at: float, release: bool, now: float,
                    started_at: float | None = None) -> bool:
        keep_pid, keep_ctime = ("NULL", "NULL") if release else ("pid", "pid_ctime")
        with self._tx():
            if not self._record_attempt(job_id, attempt, outcome, started_at, now, error, traceback):
                return False
            self._change(
                f"UPDATE {self.prefix}jobs SET status = 'retrying', error = ?, traceback = ?, run_at = ?,"
                f" pid = {keep_pid}, pid_ctime = {keep_ctime}"
                " WHERE id = ? AND attempts = ? AND status = 'running'",
                (error, traceback, run_at, job_id, attempt),
            )
            if release:
                self._wake_workers(job_id)
        return True

    def finish(self, job_id: int, attempt: int, *, status: JobStatus, now: float,
               error: str | None = None, traceback: str | None = None,
               result: str | None = None, outcome: str | None = None,
               started_at: float | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() takes completed or failed, not {status!r}")
        with self._tx():
            if not self._record_attempt(job_id, attempt, outcome or status, started_at, now,
                                        error, traceback):
                return False
            self._change(
                f"UPDATE {self.prefix}jobs SET status = ?, finished_at = ?, error = ?, traceback = ?, result = ?"
                " WHERE id = ? AND attempts = ? AND status = 'running'",
                (status, now, error, traceback, result, job_id, attempt),
            )
            self._wake_workers(job_id)  # a slot is free: a worker held back by the cap may claim
        return True

    def set_progress(self, job_id: int, attempt: int, progress: dict[str, Any]) -> bool:
        return self._change(
            f"UPDATE {self.prefix}jobs SET progress = ? WHERE id = ? AND attempts = ? AND status = 'running'",
            (json.dumps(progress), job_id, attempt),
        ) == 1

    def finished_since(self, since: float) -> builtins.list[tuple[float, float | None, str]]:
        rows = self._fetch(f"SELECT finished_at, finished_at - started_at, status FROM {self.prefix}jobs"
                           " WHERE finished_at >= ? ORDER BY finished_at", (since,))
        return [(r[0], r[1], r[2]) for r in rows]

    # -- audit -------------------------------------------------------------------------
    def add_audit(self, *, actor: str, action: str, job_id: int | None, detail: str | None,
                  address: str | None, now: float) -> int:
        rows = self._fetch(f"INSERT INTO {self.prefix}audit (at, actor, action, job_id, detail, address)"
                           " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                           (now, actor, action, job_id, detail, address))
        return int(rows[0][0])

    def prune_audit(self, *, before: float) -> int:
        return self._change(f"DELETE FROM {self.prefix}audit WHERE at < ?", (before,))

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> builtins.list[AuditEntry]:
        where, args = ("", ()) if before_id is None else ("WHERE id < ? ", (before_id,))
        rows = self._fetch(f"SELECT id, at, actor, action, job_id, detail, address FROM {self.prefix}audit"
                           f" {where}ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditEntry(*r) for r in rows]

    # -- the store's clock and leases -------------------------------------------
    def clock(self) -> float:
        return float(self._fetch(f"SELECT {self.clock_sql}")[0][0])

    def renew_lease(self, job_id: int, *, pid: int, now: float | None = None) -> bool:
        return self._change(
            f"UPDATE {self.prefix}jobs SET lease_at = COALESCE(?, {self.clock_sql})"
            f" WHERE id = ? AND pid = ? AND {ACTIVE_WHERE}", (now, job_id, pid)) == 1

    def expired_leases(self, *, timeout: float, now: float | None = None) -> builtins.list[JobRecord]:
        # A claim not yet launched holds a lease too (set at claim): its claimer may have died.
        return self._records(
            f"SELECT {COLUMNS} FROM {self.prefix}jobs WHERE"
            f" ({ACTIVE_WHERE} OR (status = 'running' AND pid IS NULL))"
            f" AND COALESCE(lease_at, claimed_at, 0) < COALESCE(?, {self.clock_sql}) - ?",
            (now, timeout))

    # -- workers -------------------------------------------------------------------------
    def register_worker(self, rec: WorkerRecord, *, timeout: float,
                        now: float | None = None) -> WorkerRecord | None:
        with self._tx():
            self._serialise(f"worker:{rec.host}")  # two machines registering one host id at once
            rows = self._fetch(
                f"SELECT {WORKER_COLUMNS} FROM {self.prefix}workers WHERE host = ? AND machine <> ''"
                f" AND machine <> ? AND last_seen >= COALESCE(?, {self.clock_sql}) - ?"
                " ORDER BY last_seen DESC LIMIT 1", (rec.host, rec.machine, now, timeout))
            if rows:
                return row_to_worker(rows[0])
            queues = None if rec.queues is None else json.dumps(builtins.list(rec.queues))
            at = self.clock() if now is None else now  # one reading: started_at = last_seen
            self._change(
                f"INSERT INTO {self.prefix}workers ({WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " queues = excluded.queues, concurrency = excluded.concurrency,"
                " started_at = excluded.started_at, last_seen = excluded.last_seen, machine = excluded.machine",
                (rec.id, rec.host, rec.pid, queues, rec.concurrency, at, at, rec.machine))
        return None

    def heartbeat(self, worker_id: str, *, now: float | None = None) -> bool:
        return self._change(f"UPDATE {self.prefix}workers SET last_seen = COALESCE(?, {self.clock_sql})"
                            " WHERE id = ?", (now, worker_id)) == 1

    def remove_worker(self, worker_id: str) -> None:
        self._change(f"DELETE FROM {self.prefix}workers WHERE id = ?", (worker_id,))

    def workers(self) -> builtins.list[WorkerRecord]:
        rows = self._fetch(f"SELECT {WORKER_COLUMNS} FROM {self.prefix}workers ORDER BY last_seen DESC, id")
        return [row_to_worker(r) for r in rows]

    # -- schedules -------------------------------------------------------------------------
    def _schedule_row(self, name: str) -> ScheduleState | None:
        rows = self._fetch(f"SELECT {SCHEDULE_COLUMNS} FROM {self.prefix}schedules WHERE name = ?", (name,))
        return row_to_schedule(rows[0]) if rows else None

    def sync_schedule(self, name: str, *, spec: str, next_at: float) -> ScheduleState:
        with self._tx():
            self._change(
                f"INSERT INTO {self.prefix}schedules AS s (name, spec, next_at, paused, updated_at)"
                f" VALUES (?, ?, ?, 0, {self.clock_sql})"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, next_at = excluded.next_at,"
                " updated_at = excluded.updated_at WHERE s.spec <> excluded.spec",
                (name, spec, next_at))
            state = self._schedule_row(name)
        assert state is not None  # inserted above, in this transaction
        return state

    def _record_run(self, name: str, job: NewJob) -> int:
        """In a transaction: insert the schedule's run and remember it as its last."""
        job_id = self._insert(job, JobStatus.PENDING, time.time(), wake=True)
        self._change(f"UPDATE {self.prefix}schedules SET last_job_id = ?, last_at = ?,"
                     f" updated_at = {self.clock_sql} WHERE name = ?", (job_id, job.scheduled_for, name))
        return job_id

    def fire_schedule(self, name: str, *, due: float, next_at: float, job: NewJob | None,
                      skip_if_running: bool) -> FireResult:
        with self._tx():
            # The compare-and-set: of every process firing this occurrence, one moves next_at on.
            won = self._fetch(
                f"UPDATE {self.prefix}schedules SET next_at = ?, updated_at = {self.clock_sql}"
                " WHERE name = ? AND next_at = ? AND paused = 0 RETURNING last_job_id",
                (next_at, name, due))
            if not won:
                return FireResult(None, None)
            last = won[0][0]
            if skip_if_running and last is not None and self._fetch(
                    f"SELECT 1 FROM {self.prefix}jobs WHERE id = ? AND status IN {CANCELLABLE_IN}", (last,)):
                return FireResult(None, f"previous run {last} has not ended")
            if job is None:
                return FireResult(None, "disabled")
            return FireResult(self._record_run(name, job), None)

    def run_schedule_now(self, name: str, job: NewJob) -> int:
        with self._tx():
            self._change(f"INSERT INTO {self.prefix}schedules (name, spec, paused, updated_at)"
                         f" VALUES (?, '', 0, {self.clock_sql}) ON CONFLICT (name) DO NOTHING", (name,))
            return self._record_run(name, job)

    def pause_schedule(self, name: str, *, paused: bool, next_at: float | None = None) -> bool:
        with self._tx():
            self._change(f"INSERT INTO {self.prefix}schedules (name, spec, paused, updated_at)"
                         f" VALUES (?, '', ?, {self.clock_sql}) ON CONFLICT (name) DO NOTHING",
                         (name, int(not paused)))
            return self._change(
                f"UPDATE {self.prefix}schedules SET next_at = COALESCE(?, next_at), paused = ?,"
                f" updated_at = {self.clock_sql} WHERE name = ? AND paused <> ?",
                (next_at, int(paused), name, int(paused))) == 1

    def schedules(self) -> builtins.list[ScheduleState]:
        rows = self._fetch(f"SELECT {SCHEDULE_COLUMNS} FROM {self.prefix}schedules ORDER BY name")
        return [row_to_schedule(r) for r in rows]

    def get_schedule(self, name: str) -> ScheduleState | None:
        return self._schedule_row(name)

    # -- dashboard sessions ----------------------------------------------------------
    def revoke_session(self, session_id: str, *, until: float) -> None:
        with self._tx():
            self._change(f"DELETE FROM {self.prefix}revoked_sessions WHERE until < ?", (time.time(),))
            self._change(
                f"INSERT INTO {self.prefix}revoked_sessions (session_id, until) VALUES (?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET until = excluded.until", (session_id, until))

    def session_revoked(self, session_id: str, *, now: float) -> bool:
        return bool(self._fetch(
            f"SELECT 1 FROM {self.prefix}revoked_sessions WHERE session_id = ? AND until >= ?",
            (session_id, now)))

    def cancelled_on(self, host: str, *, since: float) -> builtins.list[JobRecord]:
        return self._records(
            f"SELECT {COLUMNS} FROM {self.prefix}jobs WHERE status = 'cancelled' AND host = ?"
            " AND pid IS NOT NULL AND finished_at >= ?", (host, since))

    # -- cancellation --------------------------------------------------------------------
    def cancel(self, job_id: int, *, now: float) -> JobRecord | None:
        with self._tx():
            before = self._one(f"SELECT {COLUMNS} FROM {self.prefix}jobs WHERE id = ?{self.lock_row}",
                               (job_id,))
            if before is None or before.status not in CANCELLABLE:
                return None
            if before.status == JobStatus.RUNNING:  # only a running attempt has a history row to end
                self._record_attempt(job_id, before.attempts, JobStatus.CANCELLED, None, now,
                                     "cancelled", None)
            self._change(
                f"UPDATE {self.prefix}jobs SET status = 'cancelled', finished_at = ?, error = 'cancelled'"
                f" WHERE id = ? AND status IN {CANCELLABLE_IN}", (now, job_id))
            self._wake_cancelled(job_id)
            if before.owned:  # its slot is free
                self._wake_workers(job_id)
        return before
