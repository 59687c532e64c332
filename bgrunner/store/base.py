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
from typing import Any, Protocol

from bgrunner.model import AttemptRecord, AuditEntry, HostRecord, JobRecord, JobStatus, NewJob


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
    ) -> builtins.list[JobRecord]:
        """Jobs newest first (id descending), keyset-paginated by ``before_id``."""

    @abstractmethod
    def attempts(self, job_id: int) -> builtins.list[AttemptRecord]:
        """The job's finished attempts, oldest first."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""

    # -- claiming ------------------------------------------------------------
    @abstractmethod
    def claim_next(self, *, now: float, cap: int, host: str) -> JobRecord | None:
        """Claim the best ready job if fewer than ``cap`` are active.

        Ready: pending or released-retrying, ``run_at <= now``. Order: priority
        DESC, run_at ASC, id ASC. The claimed job becomes running with
        ``attempts + 1`` and no pid yet (the launched process fills it in).
        """

    @abstractmethod
    def claim(self, job_id: int, *, now: float, cap: int, host: str) -> JobRecord | None:
        """Claim this job if it is ready and fewer than ``cap`` are active."""

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
    def next_run_at(self) -> float | None:
        """The earliest ``run_at`` among ready-or-waiting jobs, or None."""

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

    # -- hosts (several workers on one store) ------------------------------------
    @abstractmethod
    def register_host(self, host: str, *, pid: int, timeout: float,
                      now: float | None = None) -> HostRecord | None:
        """Register this worker under ``host``; the other live registration if one holds the id.

        Live: another pid seen within ``timeout``. A stale row is taken over.
        """

    @abstractmethod
    def heartbeat(self, host: str, *, pid: int, now: float | None = None) -> None:
        """Say this host's worker is alive (insert or update its row)."""

    @abstractmethod
    def remove_host(self, host: str) -> None:
        """A worker that stops cleanly removes its row."""

    @abstractmethod
    def hosts(self) -> builtins.list[HostRecord]:
        """Hosts with a worker row, most recently seen first (``last_seen`` on the store's clock)."""

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
