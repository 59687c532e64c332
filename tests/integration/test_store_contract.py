"""The store contract, one suite for every backend (the ``store`` fixture runs it on each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bgrunner.errors import StoreError
from bgrunner.model import STATUSES, JobStatus, NewJob, WorkerRecord
from bgrunner.store.base import Store
from bgrunner.store.factory import open_store
from bgrunner.store.memory import drop_memory_store
from tests.backends import execute_sql, fresh_postgres_url, require_postgres

REPO = Path(__file__).resolve().parents[2]
HOST = "test-host"


def job(params: Any = None, **fields: Any) -> NewJob:
    fields.setdefault("target", "tests.fixtures:Job")
    fields.setdefault("method", "run")
    return NewJob(params=[] if params is None else params, **fields)


def claimed(store: Store, *, now: float | None = None, cap: int = 100) -> Any:
    """Claim the next job, asserting there is one; returns the record."""
    record = store.claim_next(now=time.time() if now is None else now, cap=cap, host=HOST)
    assert record is not None
    return record


# -- submit and read --------------------------------------------------------------------
def test_create_get_round_trips_a_list(store: Store) -> None:
    """A job's list params and policy fields come back exactly as created."""
    params = ["a", 3, 2.5, None, True, {"k": [1, 2]}]
    before = time.time()
    job_id = store.create(job(params, priority=7, max_attempts=4, retry_delay=1.5, timeout=9.0))
    record = store.get(job_id)
    assert record is not None
    assert record.id == job_id
    assert record.params == params
    assert (record.target, record.method) == ("tests.fixtures:Job", "run")
    assert (record.status, record.priority, record.attempts) == ("pending", 7, 0)
    assert (record.max_attempts, record.retry_delay, record.timeout) == (4, 1.5, 9.0)
    assert before <= record.created_at <= time.time()
    assert record.run_at == record.created_at  # no run_at given: ready at once
    assert record.started_at is record.finished_at is record.pid is record.result is None
    assert record.then == [] and record.progress is None


def test_create_get_round_trips_unicode_nested_dict(store: Store) -> None:
    """Dict params with unicode, NUL, big ints and extreme floats compare equal, key order kept."""
    params = {
        "name": "Zoë ☃ 𝄞 日本語 \"quoted\" back\\slash",
        "nul": "a\x00b",
        "nested": {"deep": [{"x": [1.5, -0.0, 1e-300, 1.7976931348623157e308]}, [], {}]},
        "big": 2**62,
        "zeta": None,
        "alpha": False,
    }
    then = [{"target": "tests.fixtures:Job", "method": "next", "params": {"é": 1}}]
    parent = store.create(job())
    job_id = store.create(job(params, then=then, parent_id=parent, retry_of=parent, run_at=123.25))
    record = store.get(job_id)
    assert record is not None
    assert record.params == params
    assert list(record.params) == list(params)
    assert record.then == then
    assert (record.parent_id, record.retry_of, record.run_at) == (parent, parent, 123.25)


def test_get_unknown_job_is_none(store: Store) -> None:
    """get() of an id that was never created returns None."""
    assert store.get(987654) is None


def test_create_running_is_claimed_by_the_caller(store: Store) -> None:
    """create_running records attempt 1 running with the caller's process; it is active."""
    job_id = store.create_running(job(["x"]), pid=4242, pid_ctime=1234.5, host=HOST)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.pid, record.pid_ctime, record.host) == (
        "running", 1, 4242, 1234.5, HOST)
    assert record.started_at is not None and record.claimed_at == record.started_at
    assert [r.id for r in store.active()] == [job_id]
    assert store.claim_next(now=time.time(), cap=100, host=HOST) is None


def test_list_is_newest_first_with_filters_and_keyset(store: Store) -> None:
    """list() orders by id descending and filters by status, target, search and before_id."""
    a = store.create(job(["alpha"], target="m:A"))
    b = store.create(job(["beta"], target="m:B"))
    c = store.create(job(["gamma"], target="m:A"))
    d = store.create(job(["delta"], target="m:B"))
    assert [r.id for r in store.list()] == [d, c, b, a]
    assert [r.id for r in store.list(limit=2)] == [d, c]
    assert [r.id for r in store.list(before_id=c)] == [b, a]
    assert [r.id for r in store.list(before_id=c, limit=1)] == [b]
    assert [r.id for r in store.list(target="m:A")] == [c, a]
    assert [r.id for r in store.list(target="m:B", before_id=d)] == [b]

    first = claimed(store)  # a, the oldest ready job
    assert first.id == a
    store.finish(a, 1, status="failed", now=time.time(), error="Boom: disk full")
    assert [r.id for r in store.list(status="failed")] == [a]
    assert [r.id for r in store.list(status="pending")] == [d, c, b]
    assert [r.id for r in store.list(search="gamm")] == [c]
    assert [r.id for r in store.list(search="DISK FULL")] == [a]  # error text, any case
    assert [r.id for r in store.list(search="ALPHA")] == [a]
    assert store.list(search="nothing like it") == []


def test_list_search_escapes_like_wildcards(store: Store) -> None:
    """search matches %, _ and backslash literally, never as LIKE wildcards."""
    pct = store.create(job(["50%"]))
    store.create(job(["500"]))
    under = store.create(job(["a_b"]))
    store.create(job(["axb"]))
    slash = store.create(job(["back\\slash"]))
    assert [r.id for r in store.list(search="50%")] == [pct]
    assert [r.id for r in store.list(search="a_b")] == [under]
    assert [r.id for r in store.list(search="\\")] == [slash]
    assert [r.id for r in store.list(search="%")] == [pct]


def test_counts_report_every_status(store: Store) -> None:
    """counts() has a key for every status, zeros included."""
    assert store.counts() == dict.fromkeys(STATUSES, 0)
    store.create(job())
    store.create(job())
    store.cancel(store.create(job()), now=time.time())
    claimed(store)
    assert store.counts() == {**dict.fromkeys(STATUSES, 0),
                              "pending": 1, "running": 1, "cancelled": 1}


# -- claiming ----------------------------------------------------------------------------
def test_claim_order_is_priority_then_run_at_then_id(store: Store) -> None:
    """claim_next takes priority DESC, then run_at ASC, then id ASC."""
    low = store.create(job(priority=0, run_at=100.0))
    late = store.create(job(priority=5, run_at=200.0))
    tie_first = store.create(job(priority=5, run_at=150.0))
    tie_second = store.create(job(priority=5, run_at=150.0))
    negative = store.create(job(priority=-3, run_at=50.0))
    order = [claimed(store).id for _ in range(5)]
    assert order == [tie_first, tie_second, late, low, negative]
    assert store.claim_next(now=time.time(), cap=100, host=HOST) is None


def test_claim_sets_running_attempt_and_no_pid(store: Store) -> None:
    """A claimed job is running, attempt 1, claimed and started now, on our host, no pid yet."""
    job_id = store.create(job(run_at=10.0))
    record = claimed(store, now=1000.0)
    assert record.id == job_id
    assert (record.status, record.attempts, record.host, record.pid) == ("running", 1, HOST, None)
    assert record.claimed_at == record.started_at == 1000.0
    assert store.get(job_id) == record


def test_future_run_at_is_not_claimed(store: Store) -> None:
    """A job whose run_at is still ahead is not claimed until that time."""
    now = time.time()
    job_id = store.create(job(run_at=now + 60))
    assert store.claim_next(now=now, cap=100, host=HOST) is None
    assert store.claim(job_id, now=now, cap=100, host=HOST) is None
    assert claimed(store, now=now + 61).id == job_id


def test_cap_counts_active_jobs(store: Store) -> None:
    """With as many active jobs as the cap, nothing is claimed; one more slot allows a claim."""
    store.create(job())
    store.create(job())
    claimed(store, cap=1)
    assert store.claim_next(now=time.time(), cap=1, host=HOST) is None
    assert store.claim_next(now=time.time(), cap=0, host=HOST) is None
    assert claimed(store, cap=2) is not None
    assert store.claim_next(now=time.time(), cap=3, host=HOST) is None  # none left


def test_kept_retry_counts_against_the_cap(store: Store) -> None:
    """A retrying job whose process keeps it (pid set) is active and holds a slot."""
    store.create(job())
    store.create(job())
    first = claimed(store)
    store.set_process(first.id, 1, pid=111, pid_ctime=1.0)
    now = time.time()
    assert store.retry_later(first.id, 1, outcome="failed", error="E", traceback=None,
                             run_at=now - 1, release=False, now=now)
    assert store.claim_next(now=now, cap=1, host=HOST) is None
    assert claimed(store, cap=2).id != first.id


def test_claim_of_a_specific_job(store: Store) -> None:
    """claim(id) takes that ready job whatever its priority, and nothing that is not ready."""
    low = store.create(job(priority=-10))
    high = store.create(job(priority=10))
    now = time.time()
    record = store.claim(low, now=now, cap=100, host=HOST)
    assert record is not None and record.id == low and record.status == "running"
    assert store.claim(low, now=now, cap=100, host=HOST) is None  # already running
    assert store.claim(999999, now=now, cap=100, host=HOST) is None
    assert store.claim(high, now=now, cap=1, host=HOST) is None  # cap reached
    assert store.get(high).status == "pending"  # type: ignore[union-attr]
    store.cancel(high, now=now)
    assert store.claim(high, now=now, cap=100, host=HOST) is None  # cancelled


def test_set_process_is_fenced(store: Store) -> None:
    """set_process records pid and start time once; another pid or attempt is refused."""
    store.create(job())
    record = claimed(store)
    assert store.set_process(record.id, 1, pid=321, pid_ctime=99.5)
    assert store.set_process(record.id, 1, pid=321, pid_ctime=99.5)  # same process: idempotent
    assert not store.set_process(record.id, 1, pid=322, pid_ctime=99.5)
    assert not store.set_process(record.id, 2, pid=321, pid_ctime=99.5)
    after = store.get(record.id)
    assert after is not None and (after.pid, after.pid_ctime) == (321, 99.5)
    assert [r.id for r in store.active()] == [record.id]


def test_unclaim_gives_back_a_first_attempt(store: Store) -> None:
    """unclaim of attempt 1 makes the job pending again, uncounted and claimable."""
    job_id = store.create(job())
    claimed(store)
    assert not store.unclaim(job_id, 2)
    assert store.unclaim(job_id, 1)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.tries, record.pid, record.claimed_at, record.started_at) == (
        "pending", 0, None, None, None)
    assert record.to_dict()["attempts"] == 0
    assert not store.unclaim(job_id, 1)  # no longer running
    again = claimed(store)
    assert (again.attempts, again.tries) == (2, 1)


def test_a_reclaim_after_unclaim_never_reuses_the_fence(store: Store) -> None:
    """A late process of a given-back claim (attempt 1) cannot write over the next claim's attempt."""
    job_id = store.create(job())
    claimed(store)
    assert store.unclaim(job_id, 1)
    second = claimed(store)
    assert second.attempts == 2
    assert not store.set_process(job_id, 1, pid=4242, pid_ctime=1.0)
    assert not store.finish(job_id, 1, status=JobStatus.COMPLETED, now=time.time(), result="1")
    assert store.set_process(job_id, 2, pid=4243, pid_ctime=1.0)
    record = store.get(job_id)
    assert record is not None and (record.status, record.pid) == ("running", 4243)


def test_unclaim_leaves_a_claim_whose_process_recorded_itself(store: Store) -> None:
    """unclaim is refused once a process has recorded itself on the claim: it is that process's job."""
    job_id = store.create(job())
    claimed(store)
    assert store.set_process(job_id, 1, pid=4242, pid_ctime=1.0)
    assert not store.unclaim(job_id, 1)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.pid) == ("running", 1, 4242)


def test_unclaim_of_a_later_attempt_returns_to_retrying(store: Store) -> None:
    """unclaim of attempt 2 leaves the job retrying at attempt 1 with its first start time."""
    job_id = store.create(job(run_at=1.0))
    first = claimed(store, now=1000.0)
    store.retry_later(job_id, 1, outcome="failed", error="E", traceback=None, run_at=1001.0,
                      release=True, now=1000.5)
    assert claimed(store, now=1002.0).attempts == 2
    assert store.unclaim(job_id, 2)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.tries, record.pid) == ("retrying", 1, None)
    assert record.started_at == first.started_at == 1000.0
    third = claimed(store, now=1003.0)
    assert (third.attempts, third.tries) == (3, 2)


def test_retry_later_release_hands_the_job_back(store: Store) -> None:
    """retry_later(release=True) records the attempt, clears the pid, and waits for run_at."""
    job_id = store.create(job(run_at=1.0))
    claimed(store, now=1000.0)
    store.set_process(job_id, 1, pid=55, pid_ctime=7.0)
    assert store.retry_later(job_id, 1, outcome="timeout", error="took too long",
                             traceback="Traceback…", run_at=2000.0, release=True, now=1010.0)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.pid, record.pid_ctime) == (
        "retrying", 1, None, None)
    assert (record.error, record.traceback, record.run_at) == (
        "took too long", "Traceback…", 2000.0)
    assert store.active() == []
    assert store.next_run_at() == 2000.0
    assert store.claim_next(now=1999.0, cap=100, host=HOST) is None
    again = claimed(store, now=2000.0)
    assert (again.id, again.attempts, again.claimed_at, again.started_at) == (
        job_id, 2, 2000.0, 1000.0)
    [attempt] = store.attempts(job_id)
    assert (attempt.attempt, attempt.outcome, attempt.pid) == (1, "timeout", 55)
    assert (attempt.started_at, attempt.finished_at, attempt.error) == (
        1000.0, 1010.0, "took too long")


def test_retry_later_keep_then_begin_attempt(store: Store) -> None:
    """retry_later(release=False) keeps the process; begin_attempt starts attempt 2 once."""
    job_id = store.create(job(run_at=1.0))
    claimed(store, now=1000.0)
    store.set_process(job_id, 1, pid=77, pid_ctime=8.0)
    assert store.retry_later(job_id, 1, outcome="failed", error="E1", traceback=None,
                             run_at=1005.0, release=False, now=1001.0, started_at=1000.25)
    kept = store.get(job_id)
    assert kept is not None and (kept.status, kept.pid, kept.owned) == ("retrying", 77, True)
    assert [r.id for r in store.active()] == [job_id]
    assert store.claim_next(now=2000.0, cap=100, host=HOST) is None  # its process has it
    assert store.next_run_at() is None
    assert not store.begin_attempt(job_id, 2, now=1005.0)
    assert store.begin_attempt(job_id, 1, now=1005.0)
    assert not store.begin_attempt(job_id, 1, now=1005.0)
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.attempts, record.pid, record.claimed_at) == (
        "running", 2, 77, 1005.0)
    assert store.attempts(job_id)[0].started_at == 1000.25


def test_finish_completed_keeps_the_result(store: Store) -> None:
    """finish(completed) stores the JSON result, the end time, and the attempt's history."""
    job_id = store.create(job(run_at=1.0))
    claimed(store, now=1000.0)
    store.set_process(job_id, 1, pid=88, pid_ctime=9.0)
    assert store.finish(job_id, 1, status="completed", now=1002.5,
                        result=json.dumps({"rows": 3, "names": ["ä", "b"]}))
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.finished_at, record.error) == ("completed", 1002.5, None)
    assert record.result == {"rows": 3, "names": ["ä", "b"]}
    assert store.active() == []
    [attempt] = store.attempts(job_id)
    assert (attempt.job_id, attempt.attempt, attempt.outcome, attempt.pid) == (
        job_id, 1, "completed", 88)
    assert (attempt.started_at, attempt.finished_at) == (1000.0, 1002.5)


def test_finish_failed_keeps_error_and_traceback(store: Store) -> None:
    """finish(failed) stores the error and traceback; the attempt's outcome may be more precise."""
    job_id = store.create(job())
    claimed(store)
    assert store.finish(job_id, 1, status="failed", now=time.time(), error="ValueError: x",
                        traceback="Traceback (most recent call last): …", outcome="timeout")
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.error) == ("failed", "ValueError: x")
    assert record.traceback == "Traceback (most recent call last): …"
    assert [a.outcome for a in store.attempts(job_id)] == ["timeout"]


def test_finish_takes_only_final_statuses(store: Store) -> None:
    """finish() with a status other than completed or failed is a programming error."""
    job_id = store.create(job())
    claimed(store)
    with pytest.raises(ValueError):
        store.finish(job_id, 1, status="cancelled", now=time.time())
    assert store.get(job_id).status == "running"  # type: ignore[union-attr]


def test_finish_after_cancel_changes_nothing(store: Store) -> None:
    """A running job cancelled stays cancelled: its late finish returns False."""
    job_id = store.create(job(run_at=1.0))
    claimed(store, now=1000.0)
    before = store.cancel(job_id, now=1001.0)
    assert before is not None and before.status == "running"
    assert not store.finish(job_id, 1, status="completed", now=1002.0, result="1")
    assert not store.retry_later(job_id, 1, outcome="failed", error="E", traceback=None,
                                 run_at=1003.0, release=True, now=1002.0)
    assert not store.set_progress(job_id, 1, {"done": 1})
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.finished_at, record.error, record.result) == (
        "cancelled", 1001.0, "cancelled", None)
    assert [(a.attempt, a.outcome) for a in store.attempts(job_id)] == [(1, "cancelled")]


def test_cancel_after_completed_returns_none(store: Store) -> None:
    """A completed job cannot be cancelled: cancel() returns None and the job stays completed."""
    job_id = store.create(job())
    claimed(store)
    store.finish(job_id, 1, status="completed", now=time.time())
    assert store.cancel(job_id, now=time.time()) is None
    assert store.get(job_id).status == "completed"  # type: ignore[union-attr]


def test_cancel_pending_returns_the_record_before(store: Store) -> None:
    """cancel() of a pending job returns it as it was; a second cancel or unknown id is None."""
    job_id = store.create(job(["p"]))
    before = store.cancel(job_id, now=1500.0)
    assert before is not None and (before.id, before.status) == (job_id, "pending")
    record = store.get(job_id)
    assert record is not None
    assert (record.status, record.finished_at, record.error) == ("cancelled", 1500.0, "cancelled")
    assert store.attempts(job_id) == []
    assert store.cancel(job_id, now=1501.0) is None
    assert store.cancel(424242, now=1501.0) is None
    assert store.claim_next(now=time.time(), cap=100, host=HOST) is None


def test_stale_attempt_writes_change_nothing(store: Store) -> None:
    """Every fenced write naming an older attempt returns False and leaves the job as it was."""
    job_id = store.create(job(run_at=1.0))
    claimed(store, now=1000.0)
    store.retry_later(job_id, 1, outcome="failed", error="E1", traceback=None, run_at=1001.0,
                      release=True, now=1000.5)
    claimed(store, now=1002.0)
    assert store.set_process(job_id, 2, pid=200, pid_ctime=2.0)
    before, history = store.get(job_id), store.attempts(job_id)
    now = 1003.0
    assert not store.finish(job_id, 1, status="completed", now=now, result="1")
    assert not store.finish(job_id, 1, status="failed", now=now, error="old")
    assert not store.retry_later(job_id, 1, outcome="failed", error="old", traceback=None,
                                 run_at=now, release=True, now=now)
    assert not store.set_progress(job_id, 1, {"done": 9})
    assert not store.set_process(job_id, 1, pid=100, pid_ctime=1.0)
    assert not store.unclaim(job_id, 1)
    assert not store.begin_attempt(job_id, 1, now=now)
    assert store.get(job_id) == before
    assert store.attempts(job_id) == history


def test_set_progress_keeps_the_latest_report(store: Store) -> None:
    """set_progress stores the running attempt's latest report; not while pending."""
    job_id = store.create(job())
    assert not store.set_progress(job_id, 0, {"done": 1})
    claimed(store)
    assert store.set_progress(job_id, 1, {"done": 1, "total": 10, "message": None})
    assert store.set_progress(job_id, 1, {"done": 5, "total": 10, "message": "halfway ½"})
    record = store.get(job_id)
    assert record is not None
    assert record.progress == {"done": 5, "total": 10, "message": "halfway ½"}


def test_attempts_history_is_oldest_first(store: Store) -> None:
    """attempts() lists each finished attempt once, in order, with its own outcome."""
    job_id = store.create(job(run_at=1.0))
    now = 1000.0
    for attempt in (1, 2):
        claimed(store, now=now)
        store.retry_later(job_id, attempt, outcome="failed", error=f"E{attempt}",
                          traceback=None, run_at=now, release=True, now=now + 1)
        now += 10
    claimed(store, now=now)
    store.finish(job_id, 3, status="completed", now=now + 1)
    history = store.attempts(job_id)
    assert [(a.attempt, a.outcome, a.error) for a in history] == [
        (1, "failed", "E1"), (2, "failed", "E2"), (3, "completed", None)]
    assert [a.finished_at for a in history] == [1001.0, 1011.0, 1021.0]
    assert store.attempts(987654) == []


def test_prune_deletes_old_final_jobs_only(store: Store) -> None:
    """prune removes final jobs finished before the cutoff, with their history, and counts them."""
    old = store.create(job())
    claimed(store)
    store.finish(old, 1, status="completed", now=1000.0)
    recent = store.create(job())
    claimed(store)
    store.finish(recent, 1, status="failed", now=5000.0)
    cancelled_old = store.create(job())
    store.cancel(cancelled_old, now=1500.0)
    pending = store.create(job())
    running = store.create(job())
    store.claim(running, now=time.time(), cap=100, host=HOST)
    assert len(store.prune(finished_before=2000.0)) == 2
    assert store.get(old) is None and store.get(cancelled_old) is None
    assert store.attempts(old) == []
    assert {r.id for r in store.list()} == {recent, pending, running}
    assert store.prune(finished_before=2000.0) == []


def test_next_run_at_is_the_earliest_waiting_job(store: Store) -> None:
    """next_run_at is the smallest run_at among ready or waiting jobs, None when there are none."""
    assert store.next_run_at() is None
    store.create(job(run_at=500.0))
    early = store.create(job(run_at=300.0))
    store.create(job(run_at=400.0))
    assert store.next_run_at() == 300.0
    store.claim(early, now=1000.0, cap=100, host=HOST)
    assert store.next_run_at() == 400.0


def test_active_lists_running_and_kept_retrying_jobs(store: Store) -> None:
    """active() holds running jobs and retrying jobs with a pid, not pending or released ones."""
    running = store.create(job())
    kept = store.create(job())
    released = store.create(job())
    pending = store.create(job(run_at=time.time() + 3600))
    now = time.time()
    for job_id in (running, kept, released):
        store.claim(job_id, now=now, cap=100, host=HOST)
        store.set_process(job_id, 1, pid=1000 + job_id, pid_ctime=1.0)
    store.retry_later(kept, 1, outcome="failed", error="E", traceback=None, run_at=now,
                      release=False, now=now)
    store.retry_later(released, 1, outcome="failed", error="E", traceback=None, run_at=now,
                      release=True, now=now)
    assert sorted(r.id for r in store.active()) == [running, kept]
    assert pending not in {r.id for r in store.active()}


def test_finished_since_lists_recent_endings(store: Store) -> None:
    """finished_since gives (finished_at, run time, status) of jobs ended at or after a time."""
    done = store.create(job(run_at=1.0))
    failed = store.create(job(run_at=1.0))
    never_started = store.create(job(run_at=1.0))
    store.claim(done, now=1000.0, cap=100, host=HOST)
    store.claim(failed, now=1000.0, cap=100, host=HOST)
    store.finish(done, 1, status="completed", now=1010.0)
    store.cancel(never_started, now=1020.0)
    store.finish(failed, 1, status="failed", now=1030.0, error="E")
    assert store.finished_since(1005.0) == [
        (1010.0, 10.0, "completed"), (1020.0, None, "cancelled"), (1030.0, 30.0, "failed")]
    assert [row[0] for row in store.finished_since(1020.0)] == [1020.0, 1030.0]
    assert store.finished_since(1031.0) == []


def test_audit_is_newest_first_with_keyset(store: Store) -> None:
    """add_audit returns increasing ids; audit() lists entries newest first, by before_id."""
    ids = [store.add_audit(actor="admin", action="cancel", job_id=i, detail=f"job {i} ✓",
                           address="127.0.0.1", now=1000.0 + i) for i in (1, 2, 3)]
    anonymous = store.add_audit(actor="token", action="login", job_id=None, detail=None,
                                address=None, now=2000.0)
    assert ids == sorted(ids) and anonymous > ids[-1]
    entries = store.audit()
    assert [e.id for e in entries] == [anonymous, *reversed(ids)]
    assert (entries[0].actor, entries[0].action, entries[0].job_id, entries[0].detail,
            entries[0].address, entries[0].at) == ("token", "login", None, None, None, 2000.0)
    assert (entries[1].job_id, entries[1].detail, entries[1].address) == (3, "job 3 ✓", "127.0.0.1")
    assert [e.id for e in store.audit(limit=2)] == [anonymous, ids[2]]
    assert [e.id for e in store.audit(before_id=ids[2])] == [ids[1], ids[0]]


def test_returned_records_are_copies(store: Store) -> None:
    """Changing a returned record's params, then, progress or result never changes the stored job."""
    params = {"rows": [1, 2], "opts": {"deep": True}}
    then = [{"target": "m:Next", "method": "run", "params": []}]
    job_id = store.create(job(params, then=then))
    first = store.get(job_id)
    assert first is not None
    first.params["rows"].append(3)  # type: ignore[call-overload]
    first.then[0]["params"].append("x")
    store.list()[0].params["opts"]["deep"] = False  # type: ignore[call-overload]
    claimed(store)
    store.set_progress(job_id, 1, {"done": 1})
    store.get(job_id).progress["done"] = 99  # type: ignore[index, union-attr]
    store.finish(job_id, 1, status="completed", now=time.time(), result=json.dumps({"n": [1]}))
    store.get(job_id).result["n"].append(2)  # type: ignore[union-attr]
    store.attempts(job_id).clear()
    record = store.get(job_id)
    assert record is not None
    assert record.params == {"rows": [1, 2], "opts": {"deep": True}}
    assert record.then == [{"target": "m:Next", "method": "run", "params": []}]
    assert (record.progress, record.result) == ({"done": 1}, {"n": [1]})
    assert len(store.attempts(job_id)) == 1


def worker(worker_id: str, host: str = "h1", *, pid: int = 10, machine: str = "m1",
           queues: tuple[str, ...] | None = None, concurrency: int = 4) -> WorkerRecord:
    return WorkerRecord(id=worker_id, host=host, pid=pid, queues=queues, concurrency=concurrency,
                        started_at=0.0, last_seen=0.0, machine=machine)


def test_workers_register_heartbeat_and_leave(store: Store) -> None:
    """register_worker records the worker at the given time; heartbeat moves last_seen; workers() newest first."""
    assert store.workers() == []
    assert store.register_worker(worker("w1", queues=("a", "b")), timeout=30, now=100.0) is None
    assert store.register_worker(worker("w2", concurrency=2), timeout=30, now=105.0) is None
    assert store.heartbeat("w1", now=110.0)
    assert [(w.id, w.host, w.pid, w.queues, w.concurrency, w.started_at, w.last_seen, w.machine)
            for w in store.workers()] == [("w1", "h1", 10, ("a", "b"), 4, 100.0, 110.0, "m1"),
                                          ("w2", "h1", 10, None, 2, 105.0, 105.0, "m1")]
    assert store.workers()[0].serves("a") and not store.workers()[0].serves("c")
    assert store.workers()[1].serves("anything")
    store.remove_worker("w1")
    store.remove_worker("never-seen")
    assert not store.heartbeat("w1", now=120.0)  # its row is gone: the caller registers again
    assert [w.id for w in store.workers()] == ["w2"]
    # Registering an id again (a restarted worker) replaces the row and restarts it.
    assert store.register_worker(worker("w2", pid=11, queues=("q",)), timeout=30, now=130.0) is None
    (again,) = store.workers()
    assert (again.pid, again.queues, again.started_at, again.last_seen) == (11, ("q",), 130.0, 130.0)


def test_the_store_clock_is_the_databases(store: Store) -> None:
    """clock() is epoch seconds from the database (close to this machine's, which shares it here)."""
    assert abs(store.clock() - time.time()) < 5


def test_workers_without_a_time_use_the_store_clock(store: Store) -> None:
    before = store.clock()
    assert store.register_worker(worker("w1"), timeout=30) is None
    (row,) = store.workers()
    assert before - 0.01 <= row.started_at == row.last_seen <= store.clock() + 0.01
    assert store.heartbeat("w1")
    (row,) = store.workers()
    assert row.started_at <= row.last_seen <= store.clock() + 0.01


def test_register_worker_refuses_a_host_id_live_on_another_machine(store: Store) -> None:
    """A live worker of the same host on another (known) machine is returned; others never clash."""
    now = store.clock()
    assert store.register_worker(worker("w1", "h", machine="m1"), timeout=30, now=now) is None
    clash = store.register_worker(worker("w2", "h", machine="m2"), timeout=30, now=now + 5)
    assert clash is not None and (clash.id, clash.machine) == ("w1", "m1")
    assert store.register_worker(worker("w3", "h", machine="m1"), timeout=30, now=now + 6) is None  # same machine
    assert store.register_worker(worker("w4", "other", machine="m2"), timeout=30, now=now + 7) is None
    assert store.register_worker(worker("w5", "h", machine="m2"), timeout=30, now=now + 40) is None  # m1 silent
    assert store.register_worker(worker("w6", "g", machine=""), timeout=30, now=now + 41) is None
    assert store.register_worker(worker("w7", "g", machine="m9"), timeout=30, now=now + 42) is None  # unknown one
    assert sorted(w.id for w in store.workers()) == ["w1", "w3", "w4", "w5", "w6", "w7"]


def test_leases_expire_on_the_store_clock(store: Store) -> None:
    """claim and set_process start a lease; renew_lease (fenced on the pid) keeps it; expired_leases lists the rest."""
    fresh, stale, unlaunched, done = (store.create(job()) for _ in range(4))
    for job_id in (fresh, stale, unlaunched, done):
        assert store.claim(job_id, now=time.time(), cap=100, host=HOST) is not None
    assert store.set_process(fresh, 1, pid=101, pid_ctime=1.0)
    assert store.set_process(stale, 1, pid=102, pid_ctime=1.0)
    assert store.set_process(done, 1, pid=104, pid_ctime=1.0)
    assert store.finish(done, 1, status=JobStatus.COMPLETED, now=time.time(), result="1")
    now = store.clock()
    assert store.renew_lease(stale, pid=102, now=now - 100)
    assert not store.renew_lease(stale, pid=999, now=now)  # another process: not its job
    assert not store.renew_lease(done, pid=104)  # finished: nothing to renew
    record = store.get(fresh)
    assert record is not None and record.lease_at is not None and abs(record.lease_at - now) < 5
    assert [j.id for j in store.expired_leases(timeout=30)] == [stale]
    assert sorted(j.id for j in store.expired_leases(timeout=30, now=now + 60)) == [fresh, stale, unlaunched]


def test_revoked_sessions_persist_until_they_expire(store: Store) -> None:
    now = time.time()
    store.revoke_session("s1", until=now + 60)
    store.revoke_session("s0", until=now - 1)
    assert store.session_revoked("s1", now=now)
    assert not store.session_revoked("s1", now=now + 61)
    assert not store.session_revoked("s0", now=now)
    assert not store.session_revoked("never", now=now)


def test_prune_audit_deletes_entries_older_than_the_cutoff(store: Store) -> None:
    for at in (100.0, 200.0, 300.0):
        store.add_audit(actor="a", action="cancel", job_id=None, detail=None, address=None, now=at)
    assert store.prune_audit(before=250.0) == 2
    assert [e.at for e in store.audit()] == [300.0]


def test_cancelled_on_lists_this_hosts_cancelled_jobs_that_had_a_process(store: Store) -> None:
    """cancelled_on(host, since) holds jobs of that host cancelled since then while a pid was set."""
    with_pid, without_pid, pending, elsewhere, earlier = (store.create(job()) for _ in range(5))
    for job_id, host in ((with_pid, HOST), (without_pid, HOST), (elsewhere, "other"), (earlier, HOST)):
        assert store.claim(job_id, now=time.time(), cap=100, host=host) is not None
    for job_id in (with_pid, elsewhere, earlier):
        assert store.set_process(job_id, 1, pid=500 + job_id, pid_ctime=1.0)
    store.cancel(earlier, now=900.0)
    for job_id in (with_pid, without_pid, pending, elsewhere):
        store.cancel(job_id, now=1000.0)
    assert [r.id for r in store.cancelled_on(HOST, since=1000.0)] == [with_pid]
    assert sorted(r.id for r in store.cancelled_on(HOST, since=900.0)) == [with_pid, earlier]
    assert [r.status for r in store.cancelled_on("other", since=0.0)] == ["cancelled"]
    assert store.cancelled_on(HOST, since=1000.5) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.cross_process("a forked child writes to its own copy, which the parent never sees")
def test_forked_child_opens_its_own_connection(store: Store) -> None:
    """A store used before fork() works in the child, and the parent's connection survives."""
    first = store.create(job(["parent"]))
    pid = os.fork()
    if pid == 0:  # the child: any failure becomes a non-zero exit status
        code = 1
        try:
            child = store.create(job(["child"]))
            ok = store.get(first) is not None and store.get(child) is not None
            store.close()
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r.params for r in store.list()] == [["child"], ["parent"]]
    assert store.claim_next(now=time.time(), cap=100, host=HOST) is not None


# -- concurrency with real processes ------------------------------------------------------
CLAIMER = """
import json, sys, time
from bgrunner.store.factory import open_store
url, cap, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(url)
store.counts()  # connect (and check the schema) before the start signal
print("ready", flush=True)
sys.stdin.readline()
claimed, misses = [], 0
while misses < tries:
    job = store.claim_next(now=time.time(), cap=cap, host=sys.argv[4])
    if job is None:
        misses += 1
    else:
        claimed.append(job.id)
print(json.dumps(claimed), flush=True)
"""


def run_together(script: str, argvs: list[list[str]]) -> list[Any]:
    """Start one process per argv, release them at once, and return each one's JSON output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *argv], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        for argv in argvs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            results.append(json.loads(out))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_claimers(url: str, processes: int, *, cap: int, tries: int) -> list[list[int]]:
    """Claimer processes racing on one store; the ids each one claimed."""
    return run_together(CLAIMER, [[url, str(cap), str(tries), f"c{i}"] for i in range(processes)])


@pytest.mark.cross_process("claimer processes cannot open the test's store (see the thread version below)")
def test_concurrent_claimers_take_each_job_exactly_once(store: Store, database_url: str) -> None:
    """Four processes claiming from 200 ready jobs claim every job, none twice."""
    ids = {store.create(job([i], priority=i % 3)) for i in range(200)}
    results = run_claimers(database_url, 4, cap=10_000, tries=3)
    everything = [job_id for claims in results for job_id in claims]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == ids
    assert store.counts()["running"] == 200


@pytest.mark.cross_process("claimer processes cannot open the test's store (see the thread version below)")
def test_cap_holds_with_concurrent_claimers(store: Store, database_url: str) -> None:
    """Six processes racing with cap=3 claim exactly 3 jobs in total."""
    for i in range(30):
        store.create(job([i]))
    results = run_claimers(database_url, 6, cap=3, tries=25)
    assert sum(len(claims) for claims in results) == 3
    assert len(store.active()) == 3
    assert store.counts()["running"] == 3


# -- concurrency with threads, each through its own store handle (every backend) -------------
def run_claimer_threads(url: str, threads: int, *, cap: int, tries: int) -> list[list[int]]:
    """Threads racing on one store, each with its own handle (connection); the ids each one claimed.

    A tiny switch interval makes the interpreter interleave the threads as often as it can,
    so a claim that is not one atomic step shows up as a double claim or a broken cap.
    """
    barrier = threading.Barrier(threads)
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        own = open_store(url)
        try:
            own.counts()  # connect (and check the schema) before the start signal
            barrier.wait(timeout=60)
            misses = 0
            while misses < tries:
                record = own.claim_next(now=time.time(), cap=cap, host=f"t{index}")
                if record is None:
                    misses += 1
                else:
                    results[index].append(record.id)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            own.close()

    workers = [threading.Thread(target=claimer, args=(i,), daemon=True) for i in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(worker.is_alive() for worker in workers)
    if errors:
        raise errors[0]
    return results


def test_threads_claiming_take_each_job_exactly_once(store: Store, database_url: str) -> None:
    """Four threads, each with its own store handle, claim every one of 200 ready jobs, none twice."""
    ids = {store.create(job([i], priority=i % 3)) for i in range(200)}
    results = run_claimer_threads(database_url, 4, cap=10_000, tries=3)
    everything = [job_id for claims in results for job_id in claims]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == ids
    assert store.counts()["running"] == 200


def test_cap_holds_with_threads_claiming(store: Store, database_url: str) -> None:
    """Six threads racing with cap=3, each with its own store handle, claim exactly 3 jobs in total."""
    for i in range(30):
        store.create(job([i]))
    results = run_claimer_threads(database_url, 6, cap=3, tries=25)
    assert sum(len(claims) for claims in results) == 3
    assert len(store.active()) == 3
    assert store.counts()["running"] == 3


# -- PostgreSQL only: schema handling, errors, LISTEN/NOTIFY ---------------------------------
OPENER = """
import json, sys
from bgrunner.store.factory import open_store
from bgrunner.model import NewJob
print("ready", flush=True)
sys.stdin.readline()
store = open_store(sys.argv[1])
print(json.dumps(store.create(NewJob("m:C", "run", [sys.argv[2]]))), flush=True)
"""


def test_pg_url_schema_parameter_is_bgrunners_own() -> None:
    """?schema= picks the schema (default bgrunner) and is not passed on to libpq."""
    pytest.importorskip("psycopg")
    from bgrunner.store.postgres import PostgresStore

    store = PostgresStore("postgresql://u:pw@db.example:6543/app?sslmode=disable&schema=jobs_2")
    assert store.schema == "jobs_2"
    assert store.conninfo == "postgresql://u:pw@db.example:6543/app?sslmode=disable"
    assert PostgresStore("postgres://u@h/app").schema == "bgrunner"
    socket = PostgresStore("postgresql:///app?host=/run/postgresql&schema=s&user=u")
    assert socket.conninfo == "postgresql:///app?host=/run/postgresql&user=u"
    assert socket.schema == "s"
    with pytest.raises(StoreError, match="schema"):
        PostgresStore("postgresql://u@h/app?schema=bad-name;drop")


def test_pg_unreachable_server_is_a_one_line_store_error() -> None:
    """An unreachable server gives a one-line StoreError naming host and database, no password."""
    pytest.importorskip("psycopg")
    from bgrunner.store.factory import open_store

    store = open_store("postgresql://postgres:s3cret@127.0.0.1:1/nodb?schema=x")
    with pytest.raises(StoreError) as caught:
        store.counts()
    message = str(caught.value)
    assert "127.0.0.1:1/nodb" in message
    assert "s3cret" not in message and "\n" not in message


def test_pg_newer_schema_version_is_refused(pg_url: str) -> None:
    """A schema written by a newer bgrunner is refused with a StoreError saying so."""
    from bgrunner.store.factory import open_store

    first = open_store(pg_url)
    first.counts()
    first.close()
    schema = pg_url.rsplit("schema=", 1)[1]
    execute_sql(f'UPDATE "{schema}".bgrunner_meta SET value = %s WHERE key = %s',
                ("99", "schema_version"))
    with pytest.raises(StoreError, match="newer"):
        open_store(pg_url).counts()


def test_pg_racing_first_users_create_the_schema_once(request: pytest.FixtureRequest) -> None:
    """Six processes opening a store whose schema does not exist yet all succeed."""
    require_postgres()
    url = fresh_postgres_url(request, create=False)
    ids = run_together(OPENER, [[url, str(i)] for i in range(6)])
    assert sorted(ids) == list(range(1, 7))


def collect(listener: Any, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """(channel, payload) pairs until at least ``count`` arrived, or the deadline passed.

    Waiting for the notifications themselves (not a sleep) means a drain can never run
    ahead of their delivery; what arrived by the deadline is returned for the test to judge.
    """
    received: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and (left := deadline - time.monotonic()) > 0:
        received += listener.events(left)
    return received


def test_pg_create_and_cancel_notify_listeners(pg_url: str) -> None:
    """create() wakes bgrunner_jobs listeners and cancel() bgrunner_cancel ones, with the job id."""
    from bgrunner.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    with store.listen("bgrunner_jobs") as jobs, store.listen("bgrunner_cancel") as cancels:
        started = time.monotonic()
        assert jobs.wait(0.2) == []
        assert 0.15 < time.monotonic() - started < 2
        job_id = store.create(job())
        assert jobs.wait(5) == [str(job_id)]
        assert store.cancel(job_id, now=time.time()) is not None
        assert cancels.wait(5) == [str(job_id)]
        assert jobs.wait(0.1) == []  # a pending job's cancel frees no slot
        store.notify("bgrunner_jobs", "hello")
        store.notify("bgrunner_jobs", "again")
        # Delivered in commit order: a late bgrunner_jobs note from the cancel would come first.
        assert [payload for _, payload in collect(jobs, 2)] == ["hello", "again"]
    with store.listen("bgrunner_jobs", "bgrunner_cancel") as both:
        other = store.create(job())
        store.cancel(other, now=time.time())
        assert collect(both, 2) == [("bgrunner_jobs", str(other)), ("bgrunner_cancel", str(other))]
    store.close()


def test_pg_notifications_stay_in_their_schema(pg_url: str, request: pytest.FixtureRequest) -> None:
    """A listener of one schema does not hear the jobs of another schema in the same database."""
    from bgrunner.store.postgres import PostgresStore

    mine, theirs = PostgresStore(pg_url), PostgresStore(fresh_postgres_url(request))
    with mine.listen("bgrunner_jobs", "bgrunner_cancel") as listener:
        theirs.cancel(theirs.create(job()), now=time.time())
        assert listener.wait(0.3) == []
        # A fence sent after their commits: anything of theirs heard here would arrive before it.
        mine.notify("bgrunner_jobs", "fence")
        assert collect(listener, 1) == [("bgrunner_jobs", "fence")]
    mine.close()
    theirs.close()


# -- memory only: naming ----------------------------------------------------------------------
def test_memory_stores_are_shared_by_name_within_the_process() -> None:
    """memory://NAME is one set of jobs for every handle naming it; memory:// alone is private."""
    from bgrunner.context import Context

    url = f"memory://shared-{uuid.uuid4().hex}"
    try:
        first, second = open_store(url), open_store(url)
        job_id = first.create(job(["seen"]))
        assert second.get(job_id) == first.get(job_id)
        first.close()  # closing one handle keeps the data for the others
        assert [r.id for r in open_store(url).list()] == [job_id]
        contexts = [Context(config_path="unused", log_dir="unused", database_url=url) for _ in range(2)]
        assert [c.store.counts()["pending"] for c in contexts] == [1, 1]
        assert open_store(f"{url}-other").list() == []
        private = open_store("memory://")
        private.create(job())
        assert open_store("memory://").list() == []
        assert len(private.list()) == 1
    finally:
        drop_memory_store(url)
        drop_memory_store(f"{url}-other")
    assert open_store(url).list() == []


def test_memory_and_unknown_urls_are_checked() -> None:
    """memory: needs the memory:// form; an unknown scheme's error names every supported one."""
    with pytest.raises(StoreError, match="memory://"):
        open_store("memory:jobs")
    with pytest.raises(StoreError, match="memory://") as caught:
        open_store("redis://localhost/0")
    assert "sqlite:///" in str(caught.value) and "postgresql://" in str(caught.value)
