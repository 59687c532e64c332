"""The job store interface: every backend (SQLite, PostgreSQL, memory) implements `Store`.

The store only talks to its database. Each state change is one atomic
compare-and-set on the job's current status and attempt number, so that a race
(a late write from a process that was given up on, a cancel arriving while the
job finishes) can never move a job out of a final state or overwrite a newer
attempt. Callers (runner, worker, CLI, dashboard) never see SQL.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from bgrunner.model import (
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


class Notifications(Protocol):
    """A store's wake-up channel (PostgreSQL LISTEN): select on ``fileno()``, then read ``events``."""

    def fileno(self) -> int: ...

    def events(self, timeout: float | None) -> builtins.list[tuple[str, str]]:
        """(logical channel, payload) pairs received within ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """The store URL with any password replaced by ``***``: what messages and logs may show."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    auth, at, host = rest.rpartition("@")
    if at and ":" in auth.split("/")[-1]:
        user = auth.split(":", 1)[0]
        url = f"{scheme}://{user}:***@{host}"
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)


class Store(ABC):
    """What a job store must do. Every mutating method is one atomic compare-and-set.

    Methods taking ``attempt`` are fenced: they change the row only while its
    ``attempts`` column still equals ``attempt``, so a process that was given
    up on cannot overwrite a newer attempt. They return False when the
    compare-and-set did not match (the job moved on, was cancelled, or is gone).
    """

    url: str
    #: How long (s) one call waits out an unreachable database (reconnecting with backoff)
    #: before it raises StoreError. Long for a job process, so its final write lands
    #: after a restart or failover; the worker sets its own, shorter.
    patience: float = 120.0

    # -- submit and read ---------------------------------------------------
    @abstractmethod
    def create(self, job: NewJob, *, status: JobStatus = JobStatus.PENDING) -> int:
        """Record a job durably and return its id."""

    @abstractmethod
    def create_unique(self, job: NewJob) -> tuple[int, bool]:
        """Record ``job`` unless an active (pending, retrying, running) job holds its ``unique_key``.

        (the new id, True), or (the holder's id, False). The database's unique index decides,
        so concurrent submits of one key from any number of processes record exactly one job.
        """

    @abstractmethod
    def create_running(self, job: NewJob, *, pid: int, pid_ctime: float, host: str) -> int:
        """Record a foreground job already claimed by this process (attempt 1 running)."""

    @abstractmethod
    def get(self, job_id: int) -> JobRecord | None:
        """The job, or None."""

    @abstractmethod
    def list(
        self,
        *,
        status: str | None = None,
        target: str | None = None,
        search: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
        queue: str | None = None,
    ) -> builtins.list[JobRecord]:
        """Jobs newest first (id descending), keyset-paginated by ``before_id``."""

    @abstractmethod
    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        """The job's finished attempts, oldest first."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""

    @abstractmethod
    def queue_counts(self) -> dict[str, dict[str, int]]:
        """Per queue holding jobs: the number per status (zeros included) and ``ready``.

        ``ready``: waiting jobs (pending, or retrying handed back) whose ``run_at`` has come
        on this host's clock.
        """

    # -- claiming ------------------------------------------------------------
    @abstractmethod
    def claim_next(self, *, now: float, cap: int, host: str, worker: str | None = None,
                   queues: Sequence[str] | None = None,
                   limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        """Claim the best ready job if fewer than ``cap`` are active.

        Ready: pending or released-retrying, ``run_at <= now``, in one of ``queues`` (None:
        any). Order: priority DESC, run_at ASC, id ASC, among the jobs ``limits`` allow: a
        target at its ``max_running`` active jobs (store-wide), or with ``rate`` starts within
        the last ``per`` seconds (store clock), is passed over, not failed. The claimed job
        becomes running with ``attempts + 1``, no pid yet (the launched process fills it
        in) and ``worker`` set; a rate-limited target's start is logged. One atomic step.
        """

    @abstractmethod
    def claim(self, job_id: int, *, now: float, cap: int, host: str, worker: str | None = None,
              limits: Sequence[TargetLimit] = ()) -> JobRecord | None:
        """Claim this job if it is ready, ``limits`` allow it and fewer than ``cap`` are active."""

    @abstractmethod
    def set_process(self, job_id: int, attempt: int, *, pid: int, pid_ctime: float) -> bool:
        """Record the process running the attempt (pid and start time)."""

    @abstractmethod
    def unclaim(self, job_id: int, attempt: int) -> bool:
        """Give back a claimed job whose process never started (attempt not counted).

        Fenced on the process too: only while no process has recorded itself on the
        claim (``pid`` still empty), so a claim whose process just started stays its own.
        """

    @abstractmethod
    def next_run_at(self, queues: Sequence[str] | None = None) -> float | None:
        """The earliest ``run_at`` among ready-or-waiting jobs (of ``queues``; None: any), or None."""

    @abstractmethod
    def active(self) -> builtins.list[JobRecord]:
        """Jobs a process is, or should be, working on (running; retrying with a pid)."""

    # -- attempt lifecycle (fenced) -----------------------------------------
    @abstractmethod
    def begin_attempt(self, job_id: int, attempt: int, *, now: float) -> bool:
        """The owning process starts attempt ``attempt + 1`` after a retry wait."""

    @abstractmethod
    def release(self, job_id: int, attempt: int) -> bool:
        """Hand a job kept for its next attempt (``retrying`` with a pid) to the workers: pid cleared.

        For a process stopped, or found dead, while it waited between attempts:
        the last attempt is already recorded, the next one runs in a new process.
        """

    @abstractmethod
    def retry_later(
        self,
        job_id: int,
        attempt: int,
        *,
        outcome: str,
        error: str,
        traceback: str | None,
        run_at: float,
        release: bool,
        now: float,
        started_at: float | None = None,
    ) -> bool:
        """Record a failed attempt and move to retrying.

        ``release`` hands the job to a worker (pid cleared); otherwise the
        current process keeps it and starts the next attempt itself.
        """

    @abstractmethod
    def finish(
        self,
        job_id: int,
        attempt: int,
        *,
        status: JobStatus,
        now: float,
        error: str | None = None,
        traceback: str | None = None,
        result: str | None = None,
        outcome: str | None = None,
        started_at: float | None = None,
    ) -> bool:
        """Move a running job to completed or failed and record the attempt."""

    @abstractmethod
    def set_progress(self, job_id: int, attempt: int, progress: dict[str, Any]) -> bool:
        """Store the job's latest progress report."""

    @abstractmethod
    def finished_since(self, since: float) -> builtins.list[tuple[float, float | None, str]]:
        """(finished_at, seconds from started_at, status) of jobs finished since ``since``."""

    # -- audit -----------------------------------------------------------------
    @abstractmethod
    def add_audit(self, *, actor: str, action: str, job_id: int | None, detail: str | None,
                  address: str | None, now: float) -> int:
        """Record an action taken on the jobs (dashboard, API)."""

    @abstractmethod
    def audit(self, *, limit: int = 100, before_id: int | None = None) -> builtins.list[AuditEntry]:
        """Audit entries, newest first, keyset-paginated by ``before_id``."""

    @abstractmethod
    def prune_audit(self, *, before: float) -> int:
        """Delete audit entries older than ``before`` (retention); the number deleted."""

    # -- the store's clock and leases ---------------------------------------------
    # Liveness is judged on the store's clock, never a host's own: ``now=None`` means
    # "the database's time now" (tests pass a time to simulate an old lease or heartbeat).
    @abstractmethod
    def clock(self) -> float:
        """The store's current time (epoch seconds): what leases and heartbeats are compared with."""

    @abstractmethod
    def renew_lease(self, job_id: int, *, pid: int, now: float | None = None) -> bool:
        """Process ``pid`` still works on the job: renew its lease. False: the job is no longer its."""

    @abstractmethod
    def expired_leases(self, *, timeout: float, now: float | None = None) -> builtins.list[JobRecord]:
        """Owned or claimed jobs whose lease is older than ``timeout`` seconds."""

    # -- workers (several on one store, several per host) ------------------------------
    @abstractmethod
    def register_worker(self, rec: WorkerRecord, *, timeout: float,
                        now: float | None = None) -> WorkerRecord | None:
        """Record this worker (``started_at`` and ``last_seen`` now on the store's clock).

        Refused, returning it, if a live worker (seen within ``timeout``) has the same
        ``host`` but another non-empty ``machine``: two machines sharing one host id.
        """

    @abstractmethod
    def heartbeat(self, worker_id: str, *, now: float | None = None) -> bool:
        """Say this worker is alive. False: its row is gone (removed as stale): register again."""

    @abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """A worker that stops cleanly (or one found stale) removes its row."""

    @abstractmethod
    def workers(self) -> builtins.list[WorkerRecord]:
        """Every worker row, most recently seen first (``last_seen`` on the store's clock)."""

    # -- schedules (CONTRACT §11) -----------------------------------------------------------
    @abstractmethod
    def sync_schedule(self, name: str, *, spec: str, next_at: float) -> ScheduleState:
        """Make the row match the configuration: inserted if missing; a changed ``spec`` restarts it.

        A row whose ``spec`` differs gets ``spec`` and ``next_at``; paused stays as it was.
        """

    @abstractmethod
    def fire_schedule(self, name: str, *, due: float, next_at: float, job: NewJob | None,
                      skip_if_running: bool) -> FireResult:
        """Fire the occurrence ``due``: exactly once across every process on the store.

        One transaction: compare-and-set ``next_at`` from ``due`` to ``next_at`` on an unpaused
        row; lost (or not due, paused, unknown): ``FireResult(None, None)``. Won: with
        ``skip_if_running`` and the last run still active, skipped; ``job`` None, skipped as
        "disabled"; else ``job`` is recorded as the schedule's last run.
        """

    @abstractmethod
    def run_schedule_now(self, name: str, job: NewJob) -> int:
        """Record ``job`` as the schedule's last run now (``next_at`` unchanged); its id."""

    @abstractmethod
    def pause_schedule(self, name: str, *, paused: bool, next_at: float | None = None) -> bool:
        """Pause or resume (``next_at``, if given, set too); True if the paused flag changed.

        A schedule no worker has synced yet gets a row (empty spec), so the pause holds.
        """

    @abstractmethod
    def schedules(self) -> builtins.list[ScheduleState]:
        """Every schedule row, by name."""

    @abstractmethod
    def get_schedule(self, name: str) -> ScheduleState | None:
        """The schedule's row, or None."""

    # -- dashboard sessions ------------------------------------------------------
    @abstractmethod
    def revoke_session(self, session_id: str, *, until: float) -> None:
        """Remember a logged-out session until it would have expired (survives restarts)."""

    @abstractmethod
    def session_revoked(self, session_id: str, *, now: float) -> bool:
        """True if the session was revoked and its revocation has not expired."""

    @abstractmethod
    def cancelled_on(self, host: str, *, since: float) -> builtins.list[JobRecord]:
        """Jobs on ``host`` cancelled since ``since`` that still had a process then."""

    def listen(self, *channels: str) -> Notifications | None:
        """A handle with ``fileno()`` that wakes on submits and cancels, or None (poll)."""
        return None

    # -- cancellation and housekeeping --------------------------------------
    @abstractmethod
    def cancel(self, job_id: int, *, now: float) -> JobRecord | None:
        """Cancel a pending/retrying/running job; the record as it was before, or None."""

    @abstractmethod
    def prune(self, *, finished_before: float) -> builtins.list[int]:
        """Delete final jobs finished before the given time (and their history); their ids."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""
