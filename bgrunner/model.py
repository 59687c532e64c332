"""The records bgrunner passes between its layers: job statuses, jobs, attempts, hosts, audit entries.

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
class HostRecord:
    """A host whose worker heartbeats into this store."""

    host: str
    pid: int
    started_at: float
    last_seen: float
