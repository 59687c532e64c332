"""A job store in this process's memory: ``memory://NAME`` (shared by name) or ``memory://`` (private).

For tests, and for unit-testing the decisions of the worker and supervisor
without a database. The data lives in one process: a job launched as a real
process (fork mode, ``run_job.py``, a CLI-started worker) cannot see it, and a
forked child works on a copy. Like procrastinate's InMemoryConnector, the same
NAME gives every ``open_store`` call a handle over the same tables, so two
``Context`` objects (or a thread's own copy of one) see the same jobs.

Semantics are the SQL stores' (``sqlite.py``): same fences, claim order, cap.
Rows keep params, result, progress and ``then`` as ``json.dumps`` text, decoded
again on every read, so no caller can change stored state through a returned
record. One lock per store makes each method one atomic step. ``listen()`` is
None: callers poll.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgrunner.errors import StoreError
from bgrunner.model import (
    CANCELLABLE,
    FINAL_STATUSES,
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

PREFIX = "memory://"


@dataclass(slots=True)
class _Row:
    """One job as its SQL row holds it: JSON columns as text, timestamps as floats."""

    id: int
    target: str
    method: str
    params: str
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    retry_delay: float
    timeout: float
    run_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    claimed_at: float | None = None
    pid: int | None = None
    pid_ctime: float | None = None
    host: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: str | None = None
    progress: str | None = None
    then_jobs: str | None = None
    parent_id: int | None = None
    retry_of: int | None = None
    unstarted: int = 0
    lease_at: float | None = None
    queue: str = "default"
    unique_key: str | None = None
    schedule: str | None = None
    scheduled_for: float | None = None
    worker: str | None = None

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) a process: counts against the cap."""
        return self.status == JobStatus.RUNNING or (self.status == JobStatus.RETRYING and self.pid is not None)

    @property
    def waiting(self) -> bool:
        """Ready once its ``run_at`` has come: pending, or retrying handed back to a worker."""
        return self.status in (JobStatus.PENDING, JobStatus.RETRYING) and self.pid is None

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id, target=self.target, method=self.method, params=json.loads(self.params),
            status=self.status, priority=self.priority, attempts=self.attempts,
            max_attempts=self.max_attempts, retry_delay=self.retry_delay, timeout=self.timeout,
            run_at=self.run_at, created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, claimed_at=self.claimed_at, pid=self.pid,
            pid_ctime=self.pid_ctime, host=self.host, error=self.error, traceback=self.traceback,
            result=_decode(self.result), progress=_decode(self.progress),
            then=_decode(self.then_jobs) or [], parent_id=self.parent_id, retry_of=self.retry_of,
            unstarted=self.unstarted, lease_at=self.lease_at, queue=self.queue, unique_key=self.unique_key,
            schedule=self.schedule, scheduled_for=self.scheduled_for, worker=self.worker,
        )


@dataclass
class _Tables:
    """The data behind one store name. ``lock`` guards every field; ids are never reused."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[int, _Row] = field(default_factory=dict)  # insertion order is id order
    attempts: dict[int, dict[int, AttemptRecord]] = field(default_factory=dict)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    schedules: dict[str, ScheduleState] = field(default_factory=dict)
    #: Per rate-limited target, the store-clock times of its claims (the SQL ``starts`` table).
    starts: dict[str, builtins.list[float]] = field(default_factory=dict)
    audit: builtins.list[AuditEntry] = field(default_factory=builtins.list)
    revoked: dict[str, float] = field(default_factory=dict)
    job_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    audit_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))


_registry: dict[str, _Tables] = {}
_registry_lock = threading.Lock()


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _float(value: float | None) -> float | None:
    """What a REAL / DOUBLE PRECISION column gives back (an int stored comes back a float)."""
    return None if value is None else float(value)


def _limited(items: Iterable[Any], limit: int) -> builtins.list[Any]:
    """SQLite's LIMIT: a negative limit means no limit."""
    return builtins.list(items if limit < 0 else itertools.islice(items, limit))


def name_from_url(url: str) -> str:
    """``memory://NAME`` -> NAME (empty for a private store)."""
    if not url.startswith(PREFIX):
        raise StoreError(f"not a memory store URL: {url!r} (expected memory://NAME or memory://)")
    return url[len(PREFIX):]


def drop_memory_store(name_or_url: str) -> None:
    """Forget a named store's data (tests call it when done); handles still open keep the old data."""
    name = name_from_url(name_or_url) if name_or_url.startswith(PREFIX) else name_or_url
    with _registry_lock:
        _registry.pop(name, None)


class MemoryStore(Store):
    """The in-process backend: thread-safe, shared by name, gone when the process ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = name_from_url(url)
        if not self.name:
            self._t = _Tables()
        else:
            with _registry_lock:
                self._t = _registry.setdefault(self.name, _Tables())

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    def close(self) -> None:
        """Nothing to release: the data stays for other handles of the same name."""

    def _select(self, where: Callable[[_Row], bool]) -> builtins.list[JobRecord]:
        with self._t.lock:
            return [row.record() for row in self._t.jobs.values() if where(row)]

    def _fenced(self, job_id: int, attempt: int, status: JobStatus = JobStatus.RUNNING) -> _Row | None:
        """The row if it is at ``attempt`` in ``status`` (retrying: kept, pid set); caller holds the lock."""
        row = self._t.jobs.get(job_id)
        if row is None or row.attempts != attempt or row.status != status:
            return None
        return None if status == JobStatus.RETRYING and row.pid is None else row

    # -- submit and read -------------------------------------------------------
    def _insert_locked(self, job: NewJob, status: JobStatus, **extra: Any) -> int:
        """Insert the job's row (the caller holds the lock)."""
        now = time.time()
        job_id = next(self._t.job_ids)
        self._t.jobs[job_id] = _Row(
            id=job_id, target=job.target, method=job.method, params=json.dumps(job.params),
            status=JobStatus(status), priority=job.priority, attempts=extra.pop("attempts", 0),
            max_attempts=job.max_attempts, retry_delay=float(job.retry_delay),
            timeout=float(job.timeout), run_at=float(job.run_at or now), created_at=now,
            then_jobs=json.dumps(job.then) if job.then else None, parent_id=job.parent_id,
            retry_of=job.retry_of, queue=job.queue, unique_key=job.unique_key, schedule=job.schedule,
            scheduled_for=_float(job.scheduled_for), **extra,
        )
        return job_id

    def _insert(self, job: NewJob, status: JobStatus, **extra: Any) -> int:
        json.dumps(job.params)  # unencodable params fail before anything is held
        with self._t.lock:
            if job.unique_key is not None and status in CANCELLABLE and self._holder(job.unique_key):
                raise StoreError(f"a job holding unique key {job.unique_key!r} is still active")
            return self._insert_locked(job, status, **extra)

    def _holder(self, key: str) -> _Row | None:
        """The active job holding ``key`` (the SQL stores' partial unique index); caller holds the lock."""
        return next((r for r in self._t.jobs.values() if r.unique_key == key and r.status in CANCELLABLE), None)

    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        return self._insert(job, status)

    def create_unique(self, job: NewJob) -> tuple[int, bool]:
        if not job.unique_key:
            raise ValueError("create_unique() needs a job with a unique_key")
        json.dumps(job.params)
        with self._t.lock:
            holder = self._holder(job.unique_key)
            if holder is not None:
                return holder.id, False
            return self._insert_locked(job, JobStatus.PENDING), True

    def create_running(self, job: NewJob, *, pid: int, pid_ctime: float, host: str) -> int:
        now = time.time()
        return self._insert(job, JobStatus.RUNNING, attempts=1, started_at=now, claimed_at=now,
                            pid=pid, pid_ctime=_float(pid_ctime), host=host, lease_at=now)

    def get(self, job_id: int) -> JobRecord | None:
        with self._t.lock:
            row = self._t.jobs.get(job_id)
            return None if row is None else row.record()

    def list(self, *, status: str | None = None, target: str | None = None,
             search: str | None = None, before_id: int | None = None,
             limit: int = 50, queue: str | None = None) -> builtins.list[JobRecord]:
        needle = search.lower() if search else None

        def matches(row: _Row) -> bool:
            return ((not queue or row.queue == queue)
                    and (not status or row.status == status)
                    and (not target or row.target == target)
                    and (before_id is None or row.id < before_id)
                    and (needle is None or needle in row.params.lower()
                         or (row.error is not None and needle in row.error.lower())))

        with self._t.lock:
            rows = (row for row in reversed(self._t.jobs.values()) if matches(row))
            return [row.record() for row in _limited(rows, limit)]

    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        with self._t.lock:
            history = self._t.attempts.get(job_id, {})
            return [history[n] for n in sorted(history)]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        with self._t.lock:
            for row in self._t.jobs.values():
                counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def queue_counts(self) -> dict[str, dict[str, int]]:
        now = time.time()
        counts: dict[str, dict[str, int]] = {}
        with self._t.lock:
            for row in self._t.jobs.values():
                per = counts.setdefault(row.queue, {**dict.fromkeys(STATUSES, 0), "ready": 0})
                per[row.status] += 1
                per["ready"] += row.waiting and row.run_at <= now
        return counts

    # -- claiming ----------------------------------------------------------------
    def _blocked(self, limits: Sequence[TargetLimit], rows: builtins.list[_Row], clock: float) -> set[str]:
        """Targets at their cap of active jobs or their rate (caller holds the lock)."""
        blocked: set[str] = set()
        for lim in limits:
            if lim.max_running is not None and sum(
                    r.active for r in rows if r.target == lim.target) >= lim.max_running:
                blocked.add(lim.target)
            if lim.rate is not None and lim.per is not None and sum(
                    at > clock - lim.per for at in self._t.starts.get(lim.target, ())) >= lim.rate:
                blocked.add(lim.target)
        return blocked

    def _claim(self, pick: Callable[[builtins.list[_Row]], _Row | None], *, now: float, cap: int,
               host: str, worker: str | None, limits: Sequence[TargetLimit]) -> JobRecord | None:
        """Count active, pick, update: one step under the lock, as SQL does in one transaction."""
        with self._t.lock:
            rows = builtins.list(self._t.jobs.values())
            if sum(row.active for row in rows) >= cap:
                return None
            clock = self.clock()
            blocked = self._blocked(limits, rows, clock) if limits else set()
            row = pick([r for r in rows if r.waiting and r.run_at <= now and r.target not in blocked])
            if row is None:
                return None
            row.status, row.attempts, row.claimed_at = JobStatus.RUNNING, row.attempts + 1, float(now)
            row.started_at = float(now) if row.started_at is None else row.started_at
            row.host, row.worker, row.pid, row.pid_ctime = host, worker, None, None
            row.lease_at = clock
            windows = [float(lim.per) for lim in limits
                       if lim.target == row.target and lim.rate is not None and lim.per is not None]
            if windows:  # log the start; forget what no window needs
                kept = [at for at in self._t.starts.get(row.target, ()) if at > clock - max(windows)]
                self._t.starts[row.target] = [*kept, clock]
            return row.record()

    def claim_next(self, *, now: float, cap: int, host: str, worker: str | None = None,
                   queues: Sequence[str] | None = None,
                   limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        wanted = None if queues is None else set(queues)

        def best(ready: builtins.list[_Row]) -> _Row | None:
            return min((r for r in ready if wanted is None or r.queue in wanted),
                       key=lambda r: (-r.priority, r.run_at, r.id), default=None)

        return self._claim(best, now=now, cap=cap, host=host, worker=worker, limits=limits)

    def claim(self, job_id: int, *, now: float, cap: int, host: str, worker: str | None = None,
              limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        def this(ready: builtins.list[_Row]) -> _Row | None:
            return next((r for r in ready if r.id == job_id), None)

        return self._claim(this, now=now, cap=cap, host=host, worker=worker, limits=limits)

    def set_process(self, job_id: int, attempt: int, *, pid: int, pid_ctime: float) -> bool:
        with self._t.lock:
            row = self._fenced(job_id, attempt)
            if row is None or row.pid not in (None, pid):
                return False
            row.pid, row.pid_ctime, row.lease_at = pid, _float(pid_ctime), self.clock()
            return True

    def unclaim(self, job_id: int, attempt: int) -> bool:
        with self._t.lock:
            if (row := self._fenced(job_id, attempt)) is None or row.pid is not None:
                return False
            later = row.attempts - row.unstarted > 1
            row.status = JobStatus.RETRYING if later else JobStatus.PENDING
            row.unstarted += 1  # attempts stays: it is the fence
            row.pid = row.pid_ctime = row.claimed_at = None
            row.started_at = row.started_at if later else None
            return True

    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None:
        wanted = None if queues is None else set(queues)
        with self._t.lock:
            return min((row.run_at for row in self._t.jobs.values()
                        if row.waiting and (wanted is None or row.queue in wanted)), default=None)

    def active(self) -> builtins.list[JobRecord]:
        return self._select(lambda row: row.active)

    # -- attempt lifecycle (fenced) -------------------------------------------------
    def begin_attempt(self, job_id: int, attempt: int, *, now: float) -> bool:
        with self._t.lock:
            if (row := self._fenced(job_id, attempt, JobStatus.RETRYING)) is None:
                return False
            row.status, row.attempts, row.claimed_at = JobStatus.RUNNING, row.attempts + 1, float(now)
            row.lease_at = self.clock()
            return True

    def release(self, job_id: int, attempt: int) -> bool:
        with self._t.lock:
            if (row := self._fenced(job_id, attempt, JobStatus.RETRYING)) is None:
                return False
            row.pid = row.pid_ctime = None
            return True

    def _record_attempt(self, row: _Row, outcome: str, started_at: float | None, now: float,
                        error: str | None, traceback: str | None) -> None:
        """Insert or replace the history row of the job's current attempt (caller holds the lock)."""
        self._t.attempts.setdefault(row.id, {})[row.attempts] = AttemptRecord(
            job_id=row.id, attempt=row.attempts, outcome=str(outcome),
            started_at=_float(row.claimed_at if started_at is None else started_at),
            finished_at=float(now), pid=row.pid, error=error, traceback=traceback)

    def retry_later(self, job_id: int, attempt: int, *, outcome: str, error: str,
                    traceback: str | None, run_at: float, release: bool, now: float,
                    started_at: float | None = None) -> bool:
        with self._t.lock:
            if (row := self._fenced(job_id, attempt)) is None:
                return False
            self._record_attempt(row, outcome, started_at, now, error, traceback)
            row.status, row.error, row.traceback, row.run_at = JobStatus.RETRYING, error, traceback, float(run_at)
            if release:
                row.pid = row.pid_ctime = None
            return True

    def finish(self, job_id: int, attempt: int, *, status: JobStatus, now: float,
               error: str | None = None, traceback: str | None = None,
               result: str | None = None, outcome: str | None = None,
               started_at: float | None = None) -> bool:
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise ValueError(f"finish() takes completed or failed, not {status!r}")
        with self._t.lock:
            if (row := self._fenced(job_id, attempt)) is None:
                return False
            self._record_attempt(row, outcome or status, started_at, now, error, traceback)
            row.status, row.finished_at = JobStatus(status), float(now)
            row.error, row.traceback, row.result = error, traceback, result
            return True

    def set_progress(self, job_id: int, attempt: int, progress: dict[str, Any]) -> bool:
        text = json.dumps(progress)
        with self._t.lock:
            if (row := self._fenced(job_id, attempt)) is None:
                return False
            row.progress = text
            return True

    def finished_since(self, since: float) -> builtins.list[tuple[float, float | None, str]]:
        with self._t.lock:
            ended = [(end, None if row.started_at is None else end - row.started_at, str(row.status))
                     for row in self._t.jobs.values()
                     if (end := row.finished_at) is not None and end >= since]
        return sorted(ended, key=lambda item: item[0])

    # -- audit -----------------------------------------------------------------------
    def add_audit(self, *, actor: str, action: str, job_id: int | None, detail: str | None,
                  address: str | None, now: float) -> int:
        with self._t.lock:
            entry_id = next(self._t.audit_ids)
            self._t.audit.append(AuditEntry(id=entry_id, at=float(now), actor=actor, action=action,
                                            job_id=job_id, detail=detail, address=address))
            return entry_id

    def prune_audit(self, *, before: float) -> int:
        with self._t.lock:
            kept = [e for e in self._t.audit if e.at >= before]
            gone = len(self._t.audit) - len(kept)
            self._t.audit[:] = kept
            return gone

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> builtins.list[AuditEntry]:
        with self._t.lock:
            entries = (e for e in reversed(self._t.audit) if before_id is None or e.id < before_id)
            return _limited(entries, limit)

    # -- the clock and leases ------------------------------------------------
    def clock(self) -> float:
        return time.time()  # one process: its clock is the store's

    def renew_lease(self, job_id: int, *, pid: int, now: float | None = None) -> bool:
        with self._t.lock:
            row = self._t.jobs.get(job_id)
            if row is None or row.pid != pid or not row.active:
                return False
            row.lease_at = self.clock() if now is None else float(now)
            return True

    def expired_leases(self, *, timeout: float, now: float | None = None) -> builtins.list[JobRecord]:
        limit = (self.clock() if now is None else now) - timeout
        return self._select(lambda row: (row.active or (row.status == JobStatus.RUNNING and row.pid is None))
                            and (row.lease_at or row.claimed_at or 0.0) < limit)

    # -- workers -------------------------------------------------------------------
    def register_worker(self, rec: WorkerRecord, *, timeout: float,
                        now: float | None = None) -> WorkerRecord | None:
        with self._t.lock:
            at = self.clock() if now is None else float(now)
            clash = [w for w in self._t.workers.values() if w.host == rec.host and w.machine
                     and w.machine != rec.machine and w.last_seen >= at - timeout]
            if clash:
                return max(clash, key=lambda w: w.last_seen)
            queues = None if rec.queues is None else tuple(rec.queues)
            self._t.workers[rec.id] = dataclasses.replace(rec, queues=queues, started_at=at, last_seen=at)
            return None

    def heartbeat(self, worker_id: str, *, now: float | None = None) -> bool:
        with self._t.lock:
            seen = self._t.workers.get(worker_id)
            if seen is None:
                return False
            at = self.clock() if now is None else float(now)
            self._t.workers[worker_id] = dataclasses.replace(seen, last_seen=at)
            return True

    def remove_worker(self, worker_id: str) -> None:
        with self._t.lock:
            self._t.workers.pop(worker_id, None)

    def workers(self) -> builtins.list[WorkerRecord]:
        with self._t.lock:
            return sorted(self._t.workers.values(), key=lambda w: (-w.last_seen, w.id))

    # -- schedules -------------------------------------------------------------------
    def _placeholder(self, name: str, *, paused: bool = False) -> ScheduleState:
        """The schedule's row, made (empty spec, no next_at) if no worker synced it yet; lock held."""
        if name not in self._t.schedules:
            self._t.schedules[name] = ScheduleState(name=name, next_at=None, paused=paused, spec="",
                                                    last_at=None, last_job_id=None, updated_at=self.clock())
        return self._t.schedules[name]

    def sync_schedule(self, name: str, *, spec: str, next_at: float) -> ScheduleState:
        with self._t.lock:
            state = self._t.schedules.get(name)
            if state is None:
                state = ScheduleState(name=name, next_at=float(next_at), paused=False, spec=spec,
                                      last_at=None, last_job_id=None, updated_at=self.clock())
            elif state.spec != spec:
                state = dataclasses.replace(state, spec=spec, next_at=float(next_at), updated_at=self.clock())
            self._t.schedules[name] = state
            return state

    def _record_run(self, state: ScheduleState, job: NewJob) -> int:
        job_id = self._insert_locked(job, JobStatus.PENDING)
        self._t.schedules[state.name] = dataclasses.replace(
            self._t.schedules[state.name], last_job_id=job_id, last_at=_float(job.scheduled_for),
            updated_at=self.clock())
        return job_id

    def fire_schedule(self, name: str, *, due: float, next_at: float, job: NewJob | None,
                      skip_if_running: bool) -> FireResult:
        if job is not None:
            json.dumps(job.params)
        with self._t.lock:
            state = self._t.schedules.get(name)
            if state is None or state.paused or state.next_at != due:
                return FireResult(None, None)
            state = self._t.schedules[name] = dataclasses.replace(state, next_at=float(next_at),
                                                                  updated_at=self.clock())
            last = None if state.last_job_id is None else self._t.jobs.get(state.last_job_id)
            if skip_if_running and last is not None and last.status in CANCELLABLE:
                return FireResult(None, f"previous run {last.id} has not ended")
            if job is None:
                return FireResult(None, "disabled")
            return FireResult(self._record_run(state, job), None)

    def run_schedule_now(self, name: str, job: NewJob) -> int:
        json.dumps(job.params)
        with self._t.lock:
            return self._record_run(self._placeholder(name), job)

    def pause_schedule(self, name: str, *, paused: bool, next_at: float | None = None) -> bool:
        with self._t.lock:
            state = self._placeholder(name, paused=not paused)
            if state.paused == paused:
                return False
            self._t.schedules[name] = dataclasses.replace(
                state, paused=paused, next_at=state.next_at if next_at is None else float(next_at),
                updated_at=self.clock())
            return True

    def schedules(self) -> builtins.list[ScheduleState]:
        with self._t.lock:
            return [self._t.schedules[name] for name in sorted(self._t.schedules)]

    def get_schedule(self, name: str) -> ScheduleState | None:
        with self._t.lock:
            return self._t.schedules.get(name)

    # -- dashboard sessions ------------------------------------------------------------
    def revoke_session(self, session_id: str, *, until: float) -> None:
        with self._t.lock:
            now = time.time()
            for sid in [s for s, end in self._t.revoked.items() if end < now]:
                del self._t.revoked[sid]
            self._t.revoked[session_id] = float(until)

    def session_revoked(self, session_id: str, *, now: float) -> bool:
        with self._t.lock:
            return self._t.revoked.get(session_id, -1.0) >= now

    def cancelled_on(self, host: str, *, since: float) -> builtins.list[JobRecord]:
        return self._select(lambda row: row.status == JobStatus.CANCELLED and row.host == host
                            and row.pid is not None and row.finished_at is not None
                            and row.finished_at >= since)

    # -- cancellation and housekeeping ---------------------------------------------
    def cancel(self, job_id: int, *, now: float) -> JobRecord | None:
        with self._t.lock:
            row = self._t.jobs.get(job_id)
            if row is None or row.status not in CANCELLABLE:
                return None
            before = row.record()
            if row.status == JobStatus.RUNNING:  # only a running attempt has a history row to end
                self._record_attempt(row, JobStatus.CANCELLED, None, now, "cancelled", None)
            row.status, row.finished_at, row.error = JobStatus.CANCELLED, float(now), "cancelled"
            return before

    def prune(self, *, finished_before: float) -> builtins.list[int]:
        with self._t.lock:
            gone = [row.id for row in self._t.jobs.values()
                    if row.status in FINAL_STATUSES and row.finished_at is not None
                    and row.finished_at < finished_before]
            for job_id in gone:
                del self._t.jobs[job_id]
                self._t.attempts.pop(job_id, None)
            return gone
