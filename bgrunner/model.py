"""The records bgrunner passes between its layers: job statuses, jobs, attempts, workers, schedules, audit entries.

Plain frozen dataclasses with no I/O: the store builds them from rows, every
other layer reads them. ``JobRecord.to_dict`` is the public form (CONTRACT §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """A job's status (CONTRACT §5). A ``str``: records, JSON and SQL hold the bare value."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUSES = tuple(JobStatus)
#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Statuses a cancel may act on.
CANCELLABLE = frozenset({JobStatus.PENDING, JobStatus.RETRYING, JobStatus.RUNNING})


def iso(ts: float | None) -> str | None:
    """An epoch timestamp as ISO 8601 UTC, the form every record and log line uses."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class NewJob:
    """What a submit records. Policy values are resolved from the allowlist at submit time."""

    target: str
    method: str
    params: list[Any] | dict[str, Any]
    priority: int = 0
    run_at: float = 0.0
    max_attempts: int = 3
    retry_delay: float = 5.0
    timeout: float = 0.0
    then: list[dict[str, Any]] = field(default_factory=list)
    parent_id: int | None = None
    retry_of: int | None = None
    #: The queue workers pick it from (CONTRACT §10).
    queue: str = "default"
    #: While a job with this key is pending, retrying or running, `Store.create_unique` records no other.
    unique_key: str | None = None
    #: The schedule that fired it, and the occurrence it was fired for (CONTRACT §11).
    schedule: str | None = None
    scheduled_for: float | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. Timestamps are epoch seconds; `to_dict` renders them ISO 8601."""

    id: int
    target: str
    method: str
    params: list[Any] | dict[str, Any]
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
    result: Any = None
    progress: dict[str, Any] | None = None
    then: list[dict[str, Any]] = field(default_factory=list)
    parent_id: int | None = None
    retry_of: int | None = None
    #: Claims given back before their process started (``unclaim``). ``attempts`` is also
    #: the fence token and never goes down, so these are subtracted where attempts are counted.
    unstarted: int = 0
    #: The store's clock when a process last proved it works on the job (claim, launch, lease renewal).
    lease_at: float | None = None
    queue: str = "default"
    unique_key: str | None = None
    schedule: str | None = None
    scheduled_for: float | None = None
    #: The id of the worker whose claim it runs under (None: launched by its caller, in the foreground).
    worker: str | None = None

    @property
    def tries(self) -> int:
        """Attempts that really started (the public ``attempts``; retry policies count these)."""
        return self.attempts - self.unstarted

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def owned(self) -> bool:
        """True while a process is (or should be) working on the job."""
        return self.status == JobStatus.RUNNING or (
            self.status == JobStatus.RETRYING and self.pid is not None)

    def to_dict(self) -> dict[str, Any]:
        """The public record (CONTRACT §4): what `status --json` and the API print."""
        return {
            "id": str(self.id),
            "target": self.target,
            "method": self.method,
            "params": self.params,
            "status": str(self.status),
            "priority": self.priority,
            "attempts": self.tries,
            "max_attempts": self.max_attempts,
            "retry_delay": self.retry_delay,
            "timeout": self.timeout,
            "run_at": iso(self.run_at),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "pid": self.pid,
            "host": self.host,
            "error": self.error,
            "traceback": self.traceback,
            "result": self.result,
            "progress": self.progress,
            "then": self.then,
            "parent_id": None if self.parent_id is None else str(self.parent_id),
            "retry_of": None if self.retry_of is None else str(self.retry_of),
            "queue": self.queue,
            "unique_key": self.unique_key,
            "schedule": self.schedule,
            "scheduled_for": iso(self.scheduled_for),
        }


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt, kept for the job's history."""

    job_id: int
    attempt: int
    outcome: str
    started_at: float | None
    finished_at: float
    pid: int | None
    error: str | None
    traceback: str | None


@dataclass(frozen=True)
class AuditEntry:
    """One action taken through the dashboard or API: who, what, when, from where."""

    id: int
    at: float
    actor: str
    action: str
    job_id: int | None
    detail: str | None
    address: str | None


@dataclass(frozen=True)
class WorkerRecord:
    """A worker heartbeating into this store; several may share a host (one per queue, or more)."""

    id: str
    host: str
    pid: int
    #: The queues it claims from; None: every queue.
    queues: tuple[str, ...] | None
    concurrency: int
    started_at: float
    last_seen: float
    #: What tells machines apart when two claim one host id (empty: unknown).
    machine: str = ""

    def serves(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues


@dataclass(frozen=True)
class TargetLimit:
    """How many jobs of one target may run at once, and start per window, across the store.

    A claim skips (never fails) a job whose target is at either limit.
    """

    target: str
    max_running: int | None = None
    #: At most ``rate`` starts per ``per`` seconds (both set, or neither).
    rate: int | None = None
    per: float | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) != (self.per is None):
            raise ValueError(f"limit of {self.target}: rate and per go together")
        if self.rate is not None and (self.rate < 1 or self.per is None or not self.per > 0):
            raise ValueError(f"limit of {self.target}: rate must be >= 1 per a positive number of seconds")
        if self.max_running is not None and self.max_running < 0:
            raise ValueError(f"limit of {self.target}: max_running must be >= 0")


@dataclass(frozen=True)
class ScheduleState:
    """What the store keeps of a schedule: where its sequence stands, and its last run.

    ``spec`` is what the configuration said when the sequence was started (``cron.spec_key``);
    an empty spec is a row made before any worker synced it (by a pause or a run-now).
    """

    name: str
    next_at: float | None
    paused: bool
    spec: str
    last_at: float | None
    last_job_id: int | None
    updated_at: float | None


@dataclass(frozen=True)
class FireResult:
    """What `Store.fire_schedule` did: a job fired, an occurrence skipped (why), or neither (lost the race)."""

    job_id: int | None
    skipped: str | None
