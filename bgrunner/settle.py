"""How an attempt ends: decide what follows (pure), then write it fenced and log it (settle).

Every path that ends an attempt comes through :func:`settle_attempt`: the job's
supervisor (the method returned, raised, timed out, crashed, was interrupted),
a job that could not start (import error, bad params, no longer allowed), and a
job process found dead by its worker, a caller, a reader or another host
(``jobs.record_death``). So the rules — what is retried, what the store records,
which event is logged with which fields — live in one place.

:func:`decide` is the pure part: a policy, an attempt number and an outcome in,
:class:`Complete`, :class:`Retry` (with its delay) or :class:`Fail` out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bgrunner import bounds
from bgrunner.model import JobStatus

if TYPE_CHECKING:
    from bgrunner.allowlist import Config, Policy
    from bgrunner.eventlog import EventLog
    from bgrunner.model import JobRecord
    from bgrunner.store.base import Store

#: Names a timeout answers to in ``retry_on`` (it counts as ``bgrunner.JobTimeout``, a ``TimeoutError``).
TIMEOUT_NAMES = ("JobTimeout", "bgrunner.JobTimeout", "TimeoutError", "builtins.TimeoutError")
#: Names a process that died without reporting answers to.
CRASH_NAMES = ("JobCrashed", "bgrunner.JobCrashed")
#: Names an attempt stopped by a signal (not a cancel) answers to.
INTERRUPT_NAMES = ("JobInterrupted", "bgrunner.JobInterrupted")


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. ``kind`` is what the attempt history records.

    Kinds: ``completed``; ``error`` (the method raised), ``timeout``, ``crashed``
    (its process died without reporting), ``interrupted`` (a stop signal that was
    not a cancel) — retried per policy; ``load_error``, ``invalid_params``,
    ``rejected`` (the job could not start) — never retried.
    """

    kind: str
    error: str | None = None
    traceback: str | None = None
    #: The exception's names, most specific first (``retry.exception_names``), for ``retry_on``.
    names: tuple[str, ...] = ()
    #: Completed: the return value as JSON text (None: nothing to keep).
    result: str | None = None
    #: Completed: why the return value was not stored, if it was not.
    note: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in ("error", "timeout", "crashed", "interrupted")

    @classmethod
    def completed(cls, result: str | None = None, note: str | None = None) -> Outcome:
        return cls("completed", result=result, note=note)

    @classmethod
    def raised(cls, error: str, traceback: str | None, names: tuple[str, ...] | list[str]) -> Outcome:
        return cls("error", error=error, traceback=traceback, names=tuple(names))

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        """The method raised ``exc``: its message, full traceback and ``retry_on`` names."""
        import traceback

        from bgrunner.retry import exception_names

        try:
            message = f"{type(exc).__name__}: {exc}"
            trace = "".join(traceback.format_exception(exc))
        except Exception:  # noqa: BLE001 - a job's own __str__ raised: the failure is still recorded
            message = trace = f"{type(exc).__name__}: <exception not printable>"
        return cls.raised(_clip_error(message), _clip_traceback(trace), exception_names(type(exc)))

    @classmethod
    def timed_out(cls, error: str) -> Outcome:
        return cls("timeout", error=error, names=TIMEOUT_NAMES)

    @classmethod
    def crashed(cls, how: str) -> Outcome:
        """The job's process is gone without recording an end; ``how`` says how it died."""
        return cls("crashed", error=f"the job's process died without reporting: {how}",
                   names=CRASH_NAMES)

    @classmethod
    def interrupted(cls, signame: str) -> Outcome:
        return cls("interrupted", error=f"interrupted by {signame}", names=INTERRUPT_NAMES)

    @classmethod
    def unstartable(cls, kind: str, exc: BaseException) -> Outcome:
        """A job that could not start: ``load_error``, ``invalid_params`` or ``rejected``."""
        from bgrunner.eventlog import format_exception

        return cls(kind, error=_clip_error(str(exc)), traceback=_clip_traceback(format_exception(exc)))


@dataclass(frozen=True)
class Complete:
    """The attempt succeeded: the job is completed."""


@dataclass(frozen=True)
class Retry:
    """The attempt failed and the policy allows another, ``delay`` seconds from now."""

    delay: float


@dataclass(frozen=True)
class Fail:
    """The attempt failed and it was the last: the job is failed."""


Decision = Complete | Retry | Fail


def decide(policy: Policy | None, attempt: int, outcome: Outcome,
           rand: Callable[[], float] | None = None) -> Decision:
    """What follows attempt number ``attempt`` (1-based). ``policy`` None: the job is no longer
    allowed, so nothing is retried."""
    if outcome.kind == "completed":
        return Complete()
    if policy is None or not outcome.retryable:
        return Fail()
    from bgrunner.retry import next_retry

    delay = next_retry(policy, attempt, outcome.names, rand)
    return Fail() if delay is None else Retry(delay)


def policy_of(config: Callable[[], Config], job: JobRecord) -> Policy | None:
    """The stored job's policy: its class's in the allowlist now, with the job's own overrides.

    None when the target or method is no longer allowed (or the allowlist cannot
    be read): such a job is not retried. ``config`` is called, not passed, so a
    broken allowlist is an answer here rather than an exception.
    """
    try:
        return config().check(job.target, job.method).policy.for_job(job)
    except Exception:  # noqa: BLE001 - not allowed any more, or unreadable: do not retry
        return None


def settle_attempt(store: Store, log: EventLog, job: JobRecord, attempt: int, outcome: Outcome,
                   policy: Policy | None, *, release: bool = True, started_at: float | None = None,
                   now: float | None = None, rand: Callable[[], float] | None = None,
                   **log_fields: Any) -> Decision | None:
    """Decide, write the decision fenced on ``attempt``, and log it; the decision, or None.

    None: the fenced write did not match (the job was cancelled, or the attempt
    was given up on and is no longer this caller's to settle): nothing is
    written, nothing logged. ``release`` (a retry only): hand the job to a
    worker (no pid) rather than keep it in this process for its next attempt.
    ``log`` should be bound to the job (``job_id``, ``target``, ``method``);
    ``log_fields`` are added to the event (e.g. the dead process's ``pid``).
    """
    # ``attempt`` is the fence; claims given back before a start do not count against the policy.
    outcome = storable(outcome)
    decision = decide(policy, attempt - job.unstarted, outcome, rand)
    now = time.time() if now is None else now
    if isinstance(decision, Complete):
        if not store.finish(job.id, attempt, status=JobStatus.COMPLETED, now=now,
                            result=outcome.result, error=outcome.note, started_at=started_at):
            return None
        duration: dict[str, Any] = {} if started_at is None else {
            "duration_ms": round((now - started_at) * 1000, 3)}
        warning = {"warning": outcome.note} if outcome.note else {}
        log.emit("job_completed", attempt=attempt, **duration, **warning, **log_fields)
        return decision
    error = outcome.error or "failed"
    if isinstance(decision, Fail):
        if not store.finish(job.id, attempt, status=JobStatus.FAILED, now=now, error=error,
                            traceback=outcome.traceback, outcome=outcome.kind, started_at=started_at):
            return None
        log.emit("job_failed", level="error", attempt=attempt, error=error,
                 traceback=outcome.traceback, outcome=outcome.kind, **log_fields)
        return decision
    if not store.retry_later(job.id, attempt, outcome=outcome.kind, error=error,
                             traceback=outcome.traceback, run_at=now + decision.delay,
                             release=release, now=now, started_at=started_at):
        return None
    log.emit("job_retrying", level="warning", attempt=attempt, error=error,
             retry_in_s=round(decision.delay, 3), outcome=outcome.kind, **log_fields)
    return decision


def storable(outcome: Outcome) -> Outcome:
    """The outcome as it may be stored (CONTRACT §14): text clipped, the result encodable by any reader.

    The attempt side already produces this (``bgrunner.bounds.sanitize``); this is the
    net under every path, for a result that still holds NaN or infinity (stored as null
    inside) or that is not JSON at all (not stored, and said why).
    """
    changes: dict[str, Any] = {}
    for name, clip_text in (("error", _clip_error), ("note", _clip_error), ("traceback", _clip_traceback)):
        text = getattr(outcome, name)
        if text is not None and clip_text(str(text)) is not text:
            changes[name] = clip_text(str(text))
    if outcome.result is not None:
        result, note = _storable_result(outcome.result)
        if result != outcome.result:
            changes["result"] = result
            changes["note"] = note or changes.get("note", outcome.note)
    return replace(outcome, **changes) if changes else outcome


def _storable_result(text: object) -> tuple[str | None, str | None]:
    """Result JSON text as stored: unchanged when strict JSON, else cleaned, else dropped with why."""
    if not isinstance(text, str) or len(text.encode("utf-8", "surrogatepass")) > bounds.MAX_RESULT_BYTES:
        return None, "result not stored: not JSON text within the size limit"
    loose: list[bool] = []

    def constant(name: str) -> float:
        loose.append(True)
        return float(name)

    try:
        value = json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError):
        return None, "result not stored: not valid JSON"
    if not loose and bounds.sanitize(value) == value:
        return text, None
    return json.dumps(bounds.sanitize(value), allow_nan=False), None


def _clip_error(text: str) -> str:
    return bounds.clip(text, bounds.MAX_ERROR_CHARS) or ""


def _clip_traceback(text: str) -> str:
    return bounds.clip(text, bounds.MAX_TRACEBACK_CHARS) or ""
