"""How an attempt ends: the pure decision (``decide``) and the one write that records it (``settle_attempt``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest

from bgrunner.allowlist import Config, Policy, parse_config
from bgrunner.errors import ConfigError
from bgrunner.eventlog import EventLog
from bgrunner.model import JobRecord, JobStatus
from bgrunner.settle import (
    CRASH_NAMES,
    TIMEOUT_NAMES,
    Complete,
    Fail,
    Outcome,
    Retry,
    decide,
    policy_of,
    settle_attempt,
)
from bgrunner.store.memory import MemoryStore
from tests.unit.conftest import PROBE, UNIT_ALLOWLIST, current, events, job_log, new_job, start

NOW = 1_700_000_000.0
PID = 424242


def always(value: float) -> Callable[[], float]:
    """A fixed stand-in for random.random."""
    return lambda: value


def error_outcome(exc: BaseException) -> Outcome:
    return Outcome.from_exception(exc)


class FlakyConnection(ConnectionError):
    """A subclass of a retry_on entry, defined here."""


# -- decide: completed ------------------------------------------------------------------


@pytest.mark.parametrize("policy", [Policy(max_attempts=1), None])
def test_completed_is_complete_whatever_the_policy_or_attempt(policy: Policy | None) -> None:
    """A completed attempt is Complete, even past max_attempts and with no policy (not allowed any more)."""
    assert decide(policy, 5, Outcome.completed('"ok"')) == Complete()


# -- decide: retries and delays -------------------------------------------------------------


def test_error_with_attempts_left_retries_after_the_fixed_delay() -> None:
    """Fixed backoff: every retry waits retry_delay, whatever the attempt and the random draw."""
    policy = Policy(max_attempts=4, retry_delay=7.5)
    outcome = error_outcome(KeyError("k"))
    assert decide(policy, 1, outcome, always(0.1)) == Retry(7.5)
    assert decide(policy, 3, outcome, always(0.9)) == Retry(7.5)


@pytest.mark.parametrize(("attempt", "draw", "delay"), [
    (1, 0.5, 1.0),    # ceiling 2 * 2**0 = 2
    (2, 0.5, 2.0),    # ceiling 4
    (3, 0.25, 2.0),   # ceiling 8
    (5, 0.5, 5.0),    # ceiling 32, capped at max_retry_delay 10
    (8, 1.0, 10.0),   # capped
    (2, 0.0, 0.0),    # full jitter reaches zero
])
def test_exponential_backoff_is_a_jittered_draw_below_the_capped_ceiling(
        attempt: int, draw: float, delay: float) -> None:
    """Exponential backoff: rand() * min(max_retry_delay, retry_delay * 2**(attempt-1))."""
    policy = Policy(max_attempts=10, retry_delay=2.0, backoff="exponential", max_retry_delay=10.0)
    decision = decide(policy, attempt, error_outcome(RuntimeError("x")), always(draw))
    assert isinstance(decision, Retry)
    assert decision.delay == pytest.approx(delay)


def test_the_last_attempt_fails() -> None:
    """Attempt == max_attempts (or beyond) is Fail; one before it still retries."""
    policy = Policy(max_attempts=3, retry_delay=1.0)
    outcome = error_outcome(RuntimeError("boom"))
    assert decide(policy, 2, outcome) == Retry(1.0)
    assert decide(policy, 3, outcome) == Fail()
    assert decide(policy, 4, outcome) == Fail()


def test_max_attempts_one_never_retries() -> None:
    """max_attempts = 1 means the first failure is final."""
    assert decide(Policy(max_attempts=1), 1, error_outcome(RuntimeError("x"))) == Fail()


# -- decide: retry_on ---------------------------------------------------------------------

RETRY_ON = Policy(max_attempts=3, retry_delay=1.0,
                  retry_on={"ValueError": 1, "ConnectionError": 5, "Exception": 2})


def test_retry_on_one_fails_at_once() -> None:
    """`ValueError = 1` fails the first ValueError, although max_attempts and `Exception` allow more."""
    assert decide(RETRY_ON, 1, error_outcome(ValueError("bad"))) == Fail()


def test_retry_on_allows_more_than_max_attempts() -> None:
    """`ConnectionError = 5` retries attempt 4 (past max_attempts 3) and fails attempt 5."""
    outcome = error_outcome(ConnectionError("down"))
    assert decide(RETRY_ON, 4, outcome) == Retry(1.0)
    assert decide(RETRY_ON, 5, outcome) == Fail()


def test_retry_on_the_most_specific_entry_wins_for_a_subclass() -> None:
    """A ConnectionError subclass gets ConnectionError's 5, not the broader Exception's 2."""
    outcome = error_outcome(FlakyConnection("flaky"))
    assert decide(RETRY_ON, 3, outcome) == Retry(1.0)
    assert decide(RETRY_ON, 5, outcome) == Fail()


def test_retry_on_a_base_class_entry_covers_unlisted_exceptions() -> None:
    """An exception listed only through `Exception = 2` gets 2 attempts, not max_attempts 3."""
    outcome = error_outcome(KeyError("k"))
    assert decide(RETRY_ON, 1, outcome) == Retry(1.0)
    assert decide(RETRY_ON, 2, outcome) == Fail()


def test_retry_on_with_module_qualified_names() -> None:
    """A `module.Name` entry matches too (here builtins.ConnectionError = 4)."""
    policy = Policy(max_attempts=1, retry_on={"builtins.ConnectionError": 4})
    outcome = error_outcome(ConnectionResetError("reset"))
    assert decide(policy, 3, outcome) == Retry(5.0)
    assert decide(policy, 4, outcome) == Fail()


# -- decide: kinds that are never retried, and no policy ------------------------------------------

GENEROUS = Policy(max_attempts=10, retry_delay=1.0,
                  retry_on={"Exception": 10, "BaseException": 10, "TargetLoadError": 10})


@pytest.mark.parametrize("kind", ["load_error", "invalid_params", "rejected"])
def test_unstartable_kinds_fail_whatever_the_policy(kind: str) -> None:
    """load_error, invalid_params and rejected are Fail on attempt 1 even with 10 attempts allowed."""
    outcome = Outcome.unstartable(kind, ValueError("cannot start"))
    assert not outcome.retryable
    assert decide(GENEROUS, 1, outcome) == Fail()


@pytest.mark.parametrize("outcome", [
    Outcome.raised("RuntimeError: x", None, ["RuntimeError", "Exception"]),
    Outcome.timed_out("timed out after 1 s"),
    Outcome.crashed("exit code 9"),
    Outcome.interrupted("SIGTERM"),
], ids=["error", "timeout", "crashed", "interrupted"])
def test_no_policy_means_no_retry(outcome: Outcome) -> None:
    """policy None (the job is no longer allowed): every failure is Fail at attempt 1; with a policy it would retry."""
    assert outcome.retryable
    assert decide(None, 1, outcome) == Fail()
    assert decide(GENEROUS, 1, outcome) == Retry(1.0)


# -- decide: timeouts and crashes ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["TimeoutError", "builtins.TimeoutError", "JobTimeout", "bgrunner.JobTimeout"])
def test_a_timeout_counts_as_timeout_error(name: str) -> None:
    """A timeout answers to retry_on's TimeoutError / JobTimeout: 3 attempts where max_attempts is 1."""
    policy = Policy(max_attempts=1, retry_delay=2.0, retry_on={name: 3, "ValueError": 9})
    outcome = Outcome.timed_out("timed out after 5 s")
    assert outcome.names == TIMEOUT_NAMES
    assert decide(policy, 2, outcome) == Retry(2.0)
    assert decide(policy, 3, outcome) == Fail()


def test_a_timeout_is_not_matched_by_unrelated_entries() -> None:
    """A timeout with only a ValueError entry gets max_attempts (1): Fail."""
    policy = Policy(max_attempts=1, retry_on={"ValueError": 9})
    assert decide(policy, 1, Outcome.timed_out("timed out")) == Fail()


def test_a_crash_counts_as_job_crashed() -> None:
    """A dead process answers to retry_on's JobCrashed: 2 attempts where max_attempts is 1."""
    policy = Policy(max_attempts=1, retry_delay=3.0, retry_on={"JobCrashed": 2, "TimeoutError": 9})
    outcome = Outcome.crashed("killed by signal 9 (SIGKILL)")
    assert outcome.names == CRASH_NAMES
    assert outcome.error == "the job's process died without reporting: killed by signal 9 (SIGKILL)"
    assert decide(policy, 1, outcome) == Retry(3.0)
    assert decide(policy, 2, outcome) == Fail()


def test_an_interrupt_counts_as_job_interrupted() -> None:
    """A stop signal that was not a cancel answers to retry_on's JobInterrupted."""
    policy = Policy(max_attempts=1, retry_delay=0.0, retry_on={"JobInterrupted": 2})
    outcome = Outcome.interrupted("SIGTERM")
    assert outcome.error == "interrupted by SIGTERM"
    assert decide(policy, 1, outcome) == Retry(0.0)
    assert decide(policy, 2, outcome) == Fail()


def test_from_exception_keeps_message_traceback_and_names() -> None:
    """Outcome.from_exception: "Type: message", the full traceback, and the MRO names most specific first."""
    try:
        raise FlakyConnection("lost it")
    except FlakyConnection as exc:
        outcome = Outcome.from_exception(exc)
    assert outcome.kind == "error"
    assert outcome.error == "FlakyConnection: lost it"
    assert outcome.traceback is not None and "raise FlakyConnection" in outcome.traceback
    assert outcome.names[:3] == ("FlakyConnection", f"{__name__}.FlakyConnection", "ConnectionError")


# -- policy_of ------------------------------------------------------------------------------------


def stored(**fields: object) -> JobRecord:
    """A job record as the store would give it."""
    values: dict[str, object] = {
        "id": 1, "target": PROBE, "method": "noop", "params": [], "status": JobStatus.RUNNING,
        "priority": 0, "attempts": 1, "max_attempts": 3, "retry_delay": 7.0, "timeout": 0.0,
        "run_at": NOW, "created_at": NOW}
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


def test_policy_of_is_the_class_policy_with_the_jobs_own_overrides() -> None:
    """The allowlist's retry_on and backoff stay; the job's max_attempts, retry_delay and timeout win."""
    config = parse_config(UNIT_ALLOWLIST, "allowed_jobs.toml")
    policy = policy_of(lambda: config, stored(max_attempts=9, retry_delay=0.5, timeout=30.0))
    assert policy is not None
    assert (policy.max_attempts, policy.retry_delay, policy.timeout) == (9, 0.5, 30.0)
    assert dict(policy.retry_on) == {"ValueError": 1, "ConnectionError": 5}


def test_policy_of_a_job_no_longer_allowed_is_none() -> None:
    """A target or method that is not in the allowlist any more has no policy (so it is not retried)."""
    config = parse_config(UNIT_ALLOWLIST, "allowed_jobs.toml")
    assert policy_of(lambda: config, stored(target="tests.fixtures:Gone")) is None
    assert policy_of(lambda: config, stored(method="crash")) is None


def test_policy_of_with_an_unreadable_allowlist_is_none() -> None:
    """A config loader that raises gives None rather than an exception."""
    def broken() -> Config:
        raise ConfigError("allowed_jobs.toml: invalid TOML")

    assert policy_of(broken, stored()) is None


# -- settle_attempt --------------------------------------------------------------------------------

POLICY = Policy(max_attempts=3, retry_delay=7.0, retry_on=MappingProxyType({"ValueError": 1}))


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / "logs")


@pytest.fixture
def running(store: MemoryStore) -> JobRecord:
    """A job claimed at NOW - 10 with its process (PID) recorded: attempt 1 running."""
    job_id = store.create(new_job(run_at=NOW - 60))
    return start(store, job_id, now=NOW - 10, pid=PID, pid_ctime=NOW - 11)


def test_settle_complete_writes_the_result_and_logs_job_completed(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """Complete: status completed, result, finished_at, one history row, one job_completed with duration_ms."""
    decision = settle_attempt(store, job_log(log, running), running, 1,
                              Outcome.completed(json.dumps({"n": 3})), POLICY,
                              started_at=NOW - 2.5, now=NOW, pid=PID)
    assert decision == Complete()
    job = current(store, running.id)
    assert job.status == JobStatus.COMPLETED
    assert job.result == {"n": 3}
    assert (job.finished_at, job.error, job.traceback, job.attempts) == (NOW, None, None, 1)
    [row] = store.attempts(running.id)
    assert (row.attempt, row.outcome, row.started_at, row.finished_at, row.pid, row.error) == (
        1, "completed", NOW - 2.5, NOW, PID, None)
    [event] = events(tmp_path / "logs")
    assert event["event"] == "job_completed" and event["level"] == "info"
    assert (event["job_id"], event["target"], event["method"]) == (str(running.id), PROBE, "noop")
    assert (event["attempt"], event["pid"], event["duration_ms"]) == (1, PID, 2500.0)
    assert "warning" not in event


def test_settle_complete_with_a_note_keeps_it_and_logs_a_warning(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """A completed attempt whose result was not stored: result None, the note as error and as the event's warning."""
    note = "result not stored: 70000 bytes > result_max_bytes 65536"
    decision = settle_attempt(store, job_log(log, running), running, 1,
                              Outcome.completed(None, note), POLICY, now=NOW)
    assert decision == Complete()
    job = current(store, running.id)
    assert (job.status, job.result, job.error) == (JobStatus.COMPLETED, None, note)
    [row] = store.attempts(running.id)
    assert (row.outcome, row.error, row.started_at) == ("completed", note, NOW - 10)  # started: the claim
    [event] = events(tmp_path / "logs")
    assert event["event"] == "job_completed"
    assert event["warning"] == note
    assert "duration_ms" not in event  # no started_at given


def test_settle_fail_writes_error_and_traceback_and_logs_job_failed(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """Fail: status failed with error, traceback and finished_at; history row with the outcome kind; job_failed at error level."""
    outcome = Outcome.raised("ValueError: bad", "Traceback ...\nValueError: bad", ["ValueError"])
    decision = settle_attempt(store, job_log(log, running), running, 1, outcome, POLICY,
                              started_at=NOW - 1, now=NOW, pid=PID)
    assert decision == Fail()
    job = current(store, running.id)
    assert job.status == JobStatus.FAILED
    assert (job.error, job.traceback, job.finished_at, job.result) == (
        "ValueError: bad", "Traceback ...\nValueError: bad", NOW, None)
    [row] = store.attempts(running.id)
    assert (row.attempt, row.outcome, row.error, row.traceback, row.started_at, row.finished_at) == (
        1, "error", "ValueError: bad", "Traceback ...\nValueError: bad", NOW - 1, NOW)
    [event] = events(tmp_path / "logs")
    assert (event["event"], event["level"], event["attempt"], event["pid"]) == ("job_failed", "error", 1, PID)
    assert (event["error"], event["traceback"], event["outcome"]) == (
        "ValueError: bad", "Traceback ...\nValueError: bad", "error")
    assert [e["event"] for e in events(tmp_path / "logs", errors=True)] == ["job_failed"]


def test_settle_fail_of_an_unstartable_job_records_its_kind(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """A job that could not start (load_error) fails at once with that kind in its history and event."""
    outcome = Outcome.unstartable("load_error", ImportError("no module named 'gone'"))
    assert settle_attempt(store, job_log(log, running), running, 1, outcome, POLICY, now=NOW) == Fail()
    job = current(store, running.id)
    assert (job.status, job.error) == (JobStatus.FAILED, "no module named 'gone'")
    assert [r.outcome for r in store.attempts(running.id)] == ["load_error"]
    [event] = events(tmp_path / "logs")
    assert (event["event"], event["outcome"]) == ("job_failed", "load_error")


def test_settle_fail_without_an_error_message_says_failed(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """An outcome without an error text is recorded and logged as "failed"."""
    outcome = Outcome("error", names=("RuntimeError",))
    assert settle_attempt(store, job_log(log, running), running, 1, outcome,
                          Policy(max_attempts=1), now=NOW) == Fail()
    assert current(store, running.id).error == "failed"
    [event] = events(tmp_path / "logs")
    assert event["error"] == "failed"


def test_settle_retry_released_waits_for_a_worker(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """Retry with release=True: retrying, pid cleared, run_at = now + delay, error kept; job_retrying with retry_in_s."""
    outcome = Outcome.raised("KeyError: 'k'", "Traceback ...\nKeyError: 'k'", ["KeyError"])
    decision = settle_attempt(store, job_log(log, running), running, 1, outcome, POLICY,
                              release=True, now=NOW, pid=PID)
    assert decision == Retry(7.0)
    job = current(store, running.id)
    assert (job.status, job.attempts, job.run_at) == (JobStatus.RETRYING, 1, NOW + 7.0)
    assert (job.pid, job.pid_ctime, job.finished_at) == (None, None, None)
    assert (job.error, job.traceback) == ("KeyError: 'k'", "Traceback ...\nKeyError: 'k'")
    assert not job.owned and store.active() == []
    [row] = store.attempts(running.id)
    assert (row.attempt, row.outcome, row.error, row.finished_at, row.pid) == (
        1, "error", "KeyError: 'k'", NOW, PID)
    [event] = events(tmp_path / "logs")
    assert (event["event"], event["level"], event["attempt"], event["pid"]) == (
        "job_retrying", "warning", 1, PID)
    assert (event["error"], event["retry_in_s"], event["outcome"]) == ("KeyError: 'k'", 7.0, "error")
    assert "traceback" not in event
    assert events(tmp_path / "logs", errors=True) == []


def test_settle_retry_kept_stays_with_its_process(
        store: MemoryStore, log: EventLog, running: JobRecord) -> None:
    """Retry with release=False: retrying with the pid kept, so the job is still active (owned) for its next attempt."""
    decision = settle_attempt(store, job_log(log, running), running, 1, Outcome.timed_out("timed out after 1 s"),
                              POLICY, release=False, now=NOW)
    assert decision == Retry(7.0)
    job = current(store, running.id)
    assert (job.status, job.pid, job.pid_ctime, job.run_at) == (JobStatus.RETRYING, PID, NOW - 11, NOW + 7.0)
    assert job.owned and [j.id for j in store.active()] == [running.id]
    assert [r.outcome for r in store.attempts(running.id)] == ["timeout"]


def test_settle_retry_delay_is_the_exponential_draw(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """The injected rand reaches the delay: run_at and retry_in_s follow rand() * ceiling."""
    policy = Policy(max_attempts=3, retry_delay=4.0, backoff="exponential")
    decision = settle_attempt(store, job_log(log, running), running, 1, Outcome.crashed("exit code 1"),
                              policy, now=NOW, rand=always(0.25))
    assert decision == Retry(1.0)
    assert current(store, running.id).run_at == NOW + 1.0
    [event] = events(tmp_path / "logs")
    assert (event["retry_in_s"], event["outcome"]) == (1.0, "crashed")


def test_settle_after_the_last_attempt_of_a_retried_job_keeps_the_whole_history(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """Retry at attempt 1, then (re-claimed) Fail at attempt 2 of 2: two history rows, two events."""
    policy = Policy(max_attempts=2, retry_delay=0.0)
    failed = Outcome.raised("RuntimeError: x", None, ["RuntimeError"])
    assert settle_attempt(store, job_log(log, running), running, 1, failed, policy, now=NOW) == Retry(0.0)
    second = start(store, running.id, now=NOW + 1, pid=PID + 1)
    assert second.attempts == 2
    assert settle_attempt(store, job_log(log, second), second, 2, failed, policy, now=NOW + 2) == Fail()
    assert current(store, running.id).status == JobStatus.FAILED
    assert [(r.attempt, r.outcome, r.pid) for r in store.attempts(running.id)] == [
        (1, "error", PID), (2, "error", PID + 1)]
    assert [(e["event"], e["attempt"]) for e in events(tmp_path / "logs")] == [
        ("job_retrying", 1), ("job_failed", 2)]


@pytest.mark.parametrize("outcome", [
    Outcome.completed('"done"'),
    Outcome.raised("KeyError: 'k'", None, ["KeyError"]),  # would retry
    Outcome.raised("ValueError: v", None, ["ValueError"]),  # would fail
], ids=["complete", "retry", "fail"])
def test_settle_on_a_wrong_attempt_writes_and_logs_nothing(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path, outcome: Outcome) -> None:
    """Fenced: attempt 2 of a job at attempt 1 returns None; the job, its history and the log are unchanged."""
    before = current(store, running.id)
    assert settle_attempt(store, job_log(log, running), running, 2, outcome, POLICY, now=NOW) is None
    assert current(store, running.id) == before
    assert store.attempts(running.id) == []
    assert events(tmp_path / "logs") == []


@pytest.mark.parametrize("outcome", [
    Outcome.completed('"done"'),
    Outcome.raised("KeyError: 'k'", None, ["KeyError"]),
    Outcome.raised("ValueError: v", None, ["ValueError"]),
], ids=["complete", "retry", "fail"])
def test_settle_after_a_cancel_writes_and_logs_nothing(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path, outcome: Outcome) -> None:
    """Fenced: a job cancelled before its attempt is settled stays cancelled; None, no write, no event."""
    assert store.cancel(running.id, now=NOW - 1) is not None
    before = current(store, running.id)
    history = store.attempts(running.id)
    assert settle_attempt(store, job_log(log, running), running, 1, outcome, POLICY, now=NOW) is None
    after = current(store, running.id)
    assert after == before
    assert (after.status, after.error, after.result, after.finished_at) == (
        JobStatus.CANCELLED, "cancelled", None, NOW - 1)
    assert store.attempts(running.id) == history
    assert [r.outcome for r in history] == ["cancelled"]
    assert events(tmp_path / "logs") == []


def test_settle_of_a_job_kept_for_its_next_attempt_is_rejected(
        store: MemoryStore, log: EventLog, running: JobRecord, tmp_path: Path) -> None:
    """A second settle of an attempt already settled (retrying, pid kept) matches nothing: None, one event only."""
    failed = Outcome.raised("KeyError: 'k'", None, ["KeyError"])
    assert settle_attempt(store, job_log(log, running), running, 1, failed, POLICY,
                          release=False, now=NOW) == Retry(7.0)
    before = current(store, running.id)
    assert settle_attempt(store, job_log(log, running), running, 1, Outcome.completed(), POLICY,
                          now=NOW + 1) is None
    assert current(store, running.id) == before
    assert len(store.attempts(running.id)) == 1
    assert [e["event"] for e in events(tmp_path / "logs")] == ["job_retrying"]
