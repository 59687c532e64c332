"""The store contract of CONTRACT §10-§11 on every backend: queues, unique jobs, per-target limits, schedules.

Same fixtures as ``test_store_contract.py`` (SQLite, PostgreSQL, memory); races run
threads on every backend and processes where the database is shared.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bgrunner.model import STATUSES, FireResult, JobStatus, NewJob, TargetLimit, WorkerRecord
from bgrunner.store.base import Store
from bgrunner.store.factory import open_store
from tests.integration.test_store_contract import HOST, job, run_together

A, B, C = "m:A", "m:B", "m:C"


def claim_ids(store: Store, *, limits: tuple[TargetLimit, ...] = (), queues: Any = None,
              times: int = 10) -> list[int]:
    """Claim up to ``times`` jobs (stopping at the first miss); their ids in claim order."""
    ids = []
    for _ in range(times):
        record = store.claim_next(now=time.time(), cap=100, host=HOST, worker="w1", queues=queues,
                                  limits=limits)
        if record is None:
            break
        ids.append(record.id)
    return ids


def race(threads: int, url: str, action: Callable[[Store], Any]) -> list[Any]:
    """Run ``action`` in ``threads`` threads at once, each with its own store handle; every result."""
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        own = open_store(url)
        try:
            own.counts()  # connect (and check the schema) before the start signal
            barrier.wait(timeout=60)
            results[index] = action(own)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            own.close()

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
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


# -- records --------------------------------------------------------------------------------
def test_queue_and_schedule_fields_round_trip(store: Store) -> None:
    """queue, unique_key, schedule and scheduled_for are stored; worker is set by the claim only."""
    plain = store.get(store.create(job()))
    assert plain is not None
    assert (plain.queue, plain.unique_key, plain.schedule, plain.scheduled_for, plain.worker) == (
        "default", None, None, None, None)
    job_id = store.create(job(queue="mail", schedule="nightly", scheduled_for=1_700_000_000.0))
    record = store.get(job_id)
    assert record is not None and (record.queue, record.schedule, record.scheduled_for) == (
        "mail", "nightly", 1_700_000_000.0)
    public = record.to_dict()
    assert (public["queue"], public["unique_key"], public["schedule"], public["scheduled_for"]) == (
        "mail", None, "nightly", "2023-11-14T22:13:20Z")
    assert "worker" not in public
    claimed = store.claim(job_id, now=time.time(), cap=10, host=HOST, worker="w-7")
    assert claimed is not None and claimed.worker == "w-7"
    running = store.create_running(job(), pid=1, pid_ctime=1.0, host=HOST)
    assert store.get(running).worker is None  # type: ignore[union-attr]


# -- unique jobs ------------------------------------------------------------------------------
def test_create_unique_returns_the_active_holder(store: Store) -> None:
    """While a job holds the key (pending, running, retrying) the holder's id comes back; once ended, a new one."""
    first, new = store.create_unique(job(unique_key="k"))
    assert new and store.get(first).unique_key == "k"  # type: ignore[union-attr]
    assert store.create_unique(job(["other"], unique_key="k")) == (first, False)
    other, new = store.create_unique(job(unique_key="k2"))
    assert new and other != first
    assert store.claim(first, now=time.time(), cap=10, host=HOST) is not None
    assert store.create_unique(job(unique_key="k")) == (first, False)  # running
    assert store.retry_later(first, 1, outcome="failed", error="e", traceback=None, run_at=time.time(),
                             release=True, now=time.time())
    assert store.create_unique(job(unique_key="k")) == (first, False)  # retrying
    assert store.claim(first, now=time.time(), cap=10, host=HOST) is not None
    assert store.finish(first, 2, status=JobStatus.COMPLETED, now=time.time(), result="1")
    second, new = store.create_unique(job(unique_key="k"))
    assert new and second not in (first, other)
    store.cancel(second, now=time.time())
    third, new = store.create_unique(job(unique_key="k"))
    assert new and third != second
    assert [r.id for r in store.list() if r.unique_key == "k"] == [third, second, first]
    assert store.counts()["pending"] == 2  # third, other


def test_create_unique_needs_a_key(store: Store) -> None:
    with pytest.raises(ValueError):
        store.create_unique(job())


def test_threads_submitting_one_key_record_one_job(store: Store, database_url: str) -> None:
    """Eight threads submitting one key, each with its own store handle: exactly one job, every one gets its id."""
    results = race(8, database_url, lambda own: own.create_unique(job(unique_key="once")))
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(new for _, new in results) == 1
    assert len(store.list()) == 1


UNIQUE_SUBMITTER = """
import json, sys
from bgrunner.model import NewJob
from bgrunner.store.factory import open_store
store = open_store(sys.argv[1])
store.counts()
print("ready", flush=True)
sys.stdin.readline()
out = [store.create_unique(NewJob("m:A", "run", [i], unique_key=sys.argv[2])) for i in range(20)]
print(json.dumps(out), flush=True)
"""


@pytest.mark.cross_process("submitter processes cannot open the test's store (see the thread version)")
def test_processes_submitting_one_key_record_one_job(store: Store, database_url: str) -> None:
    """Six processes submitting one key 20 times each: one job, and every submit returns its id."""
    results = run_together(UNIQUE_SUBMITTER, [[database_url, "shared"] for _ in range(6)])
    pairs = [pair for out in results for pair in out]
    assert len({job_id for job_id, _ in pairs}) == 1
    assert sum(new for _, new in pairs) == 1
    assert len(store.list()) == 1


# -- queues -------------------------------------------------------------------------------------
def test_claim_next_serves_only_the_given_queues(store: Store) -> None:
    """queues None: any queue; a list: only those, still in priority order; an empty list: none."""
    mail = store.create(job(queue="mail"))
    urgent_report = store.create(job(queue="reports", priority=5))
    default = store.create(job())
    assert claim_ids(store, queues=[]) == []
    assert claim_ids(store, queues=["nothing"]) == []
    assert claim_ids(store, queues=["mail", "default"]) == [mail, default]
    late = store.create(job(queue="reports"))
    assert claim_ids(store) == [urgent_report, late]


def test_next_run_at_of_queues(store: Store) -> None:
    assert store.next_run_at(["a"]) is None
    store.create(job(queue="a", run_at=500.0))
    store.create(job(queue="b", run_at=300.0))
    store.create(job(queue="a", run_at=400.0))
    assert store.next_run_at() == 300.0
    assert store.next_run_at(["a"]) == 400.0
    assert store.next_run_at(["a", "b"]) == 300.0
    assert store.next_run_at(["c"]) is None
    assert store.next_run_at([]) is None


def test_list_filters_by_queue(store: Store) -> None:
    a1 = store.create(job(queue="a"))
    store.create(job(queue="b"))
    a2 = store.create(job(queue="a", target=B))
    assert [r.id for r in store.list(queue="a")] == [a2, a1]
    assert [r.id for r in store.list(queue="a", target=B)] == [a2]
    assert store.list(queue="none") == []


def test_queue_counts_per_status_and_ready(store: Store) -> None:
    """Every status per queue holding jobs, plus ready: waiting with run_at come."""
    assert store.queue_counts() == {}
    store.create(job(queue="a"))
    store.create(job(queue="a", run_at=time.time() + 3600))  # pending, not ready
    running = store.create(job(queue="b"))
    assert store.claim(running, now=time.time(), cap=10, host=HOST) is not None
    store.cancel(store.create(job(queue="b")), now=time.time())
    counts = store.queue_counts()
    assert counts == {
        "a": {**dict.fromkeys(STATUSES, 0), "pending": 2, "ready": 1},
        "b": {**dict.fromkeys(STATUSES, 0), "running": 1, "cancelled": 1, "ready": 0},
    }


# -- per-target limits --------------------------------------------------------------------------
def test_max_running_skips_to_the_next_allowed_target(store: Store) -> None:
    """A target at max_running is passed over (kept pending) for the best job of another target."""
    a1 = store.create(job(target=A, priority=9))
    a2 = store.create(job(target=A, priority=8))
    b1 = store.create(job(target=B, priority=1))
    c1 = store.create(job(target=C, priority=5))
    limits = (TargetLimit(A, max_running=1), TargetLimit(C, max_running=0))
    assert claim_ids(store, limits=limits) == [a1, b1]
    assert store.get(a2).status == store.get(c1).status == "pending"  # type: ignore[union-attr]
    assert store.claim(a2, now=time.time(), cap=10, host=HOST, limits=limits) is None
    assert store.finish(a1, 1, status=JobStatus.COMPLETED, now=time.time(), result="1")
    assert store.claim(a2, now=time.time(), cap=10, host=HOST, limits=limits) is not None
    assert claim_ids(store) == [c1]  # without limits, anything goes


def test_max_running_counts_every_active_job_of_the_target(store: Store) -> None:
    """Claims by other hosts, foreground jobs and kept retries all count, across the store."""
    store.create_running(job(target=A), pid=1, pid_ctime=1.0, host="elsewhere")
    kept = store.create(job(target=A))
    assert store.claim(kept, now=time.time(), cap=10, host="other-host") is not None
    assert store.set_process(kept, 1, pid=2, pid_ctime=1.0)
    assert store.retry_later(kept, 1, outcome="failed", error="e", traceback=None, run_at=time.time() + 60,
                             release=False, now=time.time())
    waiting = store.create(job(target=A))
    limits = (TargetLimit(A, max_running=2),)
    assert claim_ids(store, limits=limits) == []
    assert claim_ids(store, limits=(TargetLimit(A, max_running=3),)) == [waiting]


def test_a_rate_limit_counts_starts_in_its_window(store: Store) -> None:
    """rate=2 per 60 s: the third job of the target is skipped, other targets are still claimed."""
    a_jobs = [store.create(job(target=A, priority=5)) for _ in range(3)]
    b1 = store.create(job(target=B))
    limits = (TargetLimit(A, rate=2, per=60.0),)
    assert claim_ids(store, limits=limits) == [*a_jobs[:2], b1]
    for job_id in a_jobs[:2]:  # ended starts still count: a rate is of starts, not of running jobs
        assert store.finish(job_id, 1, status=JobStatus.COMPLETED, now=time.time(), result="1")
    assert claim_ids(store, limits=limits) == []
    assert store.claim(a_jobs[2], now=time.time(), cap=10, host=HOST, limits=limits) is None
    assert claim_ids(store, limits=(TargetLimit(A, rate=3, per=60.0),)) == [a_jobs[2]]


def test_a_rate_window_passes_on_the_store_clock(store: Store) -> None:
    """A start older than ``per`` seconds no longer counts."""
    first, second = store.create(job(target=A)), store.create(job(target=A))
    limits = (TargetLimit(A, rate=1, per=0.3),)
    assert claim_ids(store, limits=limits) == [first]
    assert claim_ids(store, limits=limits) == []
    time.sleep(0.4)
    assert claim_ids(store, limits=limits) == [second]


def test_limits_and_queues_together_keep_priority_order(store: Store) -> None:
    """Within what may start and the served queues, the order is priority, run_at, id."""
    store.create(job(target=A, queue="q1", priority=9))
    b_low = store.create(job(target=B, queue="q1", priority=1))
    c_other = store.create(job(target=C, queue="q2", priority=7))
    b_high = store.create(job(target=B, queue="q1", priority=3))
    limits = (TargetLimit(A, max_running=0), TargetLimit(B, max_running=5, rate=10, per=60.0))
    assert claim_ids(store, limits=limits, queues=["q1"]) == [b_high, b_low]
    assert claim_ids(store, limits=limits, queues=["q1", "q2"]) == [c_other]


def test_a_limit_on_another_target_changes_nothing(store: Store) -> None:
    jobs = [store.create(job(target=A)) for _ in range(3)]
    assert claim_ids(store, limits=(TargetLimit(B, max_running=0), TargetLimit(C))) == jobs


def test_the_cap_still_holds_with_limits(store: Store) -> None:
    for _ in range(3):
        store.create(job(target=A))
    limits = (TargetLimit(A, max_running=10),)
    assert store.claim_next(now=time.time(), cap=1, host=HOST, limits=limits) is not None
    assert store.claim_next(now=time.time(), cap=1, host=HOST, limits=limits) is None


def test_threads_claiming_with_a_limit_never_exceed_it(store: Store, database_url: str) -> None:
    """Six threads claiming with max_running=2 and rate=3/min for target A: the store holds both."""
    for i in range(10):
        store.create(job([i], target=A))
        store.create(job([i], target=B))
    limits = (TargetLimit(A, max_running=2), TargetLimit(B, rate=3, per=60.0))

    def claimer(own: Store) -> list[str]:
        got = []
        for _ in range(10):
            record = own.claim_next(now=time.time(), cap=100, host=HOST, limits=limits)
            if record is not None:
                got.append(record.target)
        return got

    targets = [t for got in race(6, database_url, claimer) for t in got]
    assert sorted(targets) == [A, A, B, B, B]


def test_target_limit_checks_its_values() -> None:
    with pytest.raises(ValueError):
        TargetLimit(A, rate=2)
    with pytest.raises(ValueError):
        TargetLimit(A, rate=0, per=1.0)
    with pytest.raises(ValueError):
        TargetLimit(A, max_running=-1)


# -- schedules ---------------------------------------------------------------------------------------
def fired(name: str, at: float, **fields: Any) -> NewJob:
    return job(schedule=name, scheduled_for=at, **fields)


def test_sync_schedule_inserts_then_restarts_on_a_changed_spec(store: Store) -> None:
    assert store.get_schedule("s") is None
    state = store.sync_schedule("s", spec="every 60", next_at=120.0)
    assert (state.name, state.spec, state.next_at, state.paused, state.last_job_id, state.last_at) == (
        "s", "every 60", 120.0, False, None, None)
    assert state.updated_at is not None
    assert store.sync_schedule("s", spec="every 60", next_at=999.0).next_at == 120.0  # same spec: kept
    assert store.pause_schedule("s", paused=True)
    changed = store.sync_schedule("s", spec="cron 0 3 * * *", next_at=300.0)
    assert (changed.spec, changed.next_at, changed.paused) == ("cron 0 3 * * *", 300.0, True)
    assert store.get_schedule("s") == changed


def test_fire_schedule_fires_once_and_remembers_its_run(store: Store) -> None:
    store.sync_schedule("s", spec="x", next_at=100.0)
    assert store.fire_schedule("s", due=90.0, next_at=200.0, job=fired("s", 90.0),
                               skip_if_running=False) == FireResult(None, None)  # not the due one
    result = store.fire_schedule("s", due=100.0, next_at=200.0, job=fired("s", 100.0), skip_if_running=False)
    assert result.job_id is not None and result.skipped is None
    record = store.get(result.job_id)
    assert record is not None and (record.schedule, record.scheduled_for, record.status) == ("s", 100.0, "pending")
    state = store.get_schedule("s")
    assert state is not None and (state.next_at, state.last_job_id, state.last_at) == (200.0, result.job_id, 100.0)
    assert store.fire_schedule("s", due=100.0, next_at=200.0, job=fired("s", 100.0),
                               skip_if_running=False) == FireResult(None, None)  # already fired
    assert store.fire_schedule("nothing", due=100.0, next_at=200.0, job=fired("s", 100.0),
                               skip_if_running=False) == FireResult(None, None)
    assert len(store.list()) == 1


def test_fire_schedule_skips_while_the_last_run_is_active(store: Store) -> None:
    """skip_if_running: an active last run skips the occurrence (next_at still moves on); an ended one does not."""
    store.sync_schedule("s", spec="x", next_at=100.0)
    first = store.fire_schedule("s", due=100.0, next_at=200.0, job=fired("s", 100.0), skip_if_running=True)
    assert first.job_id is not None
    skipped = store.fire_schedule("s", due=200.0, next_at=300.0, job=fired("s", 200.0), skip_if_running=True)
    assert skipped == FireResult(None, f"previous run {first.job_id} has not ended")
    state = store.get_schedule("s")
    assert state is not None and (state.next_at, state.last_job_id, state.last_at) == (300.0, first.job_id, 100.0)
    overlap = store.fire_schedule("s", due=300.0, next_at=400.0, job=fired("s", 300.0), skip_if_running=False)
    assert overlap.job_id is not None  # overlap allowed
    store.cancel(overlap.job_id, now=time.time())
    again = store.fire_schedule("s", due=400.0, next_at=500.0, job=fired("s", 400.0), skip_if_running=True)
    assert again.job_id is not None


def test_fire_schedule_without_a_job_is_disabled(store: Store) -> None:
    store.sync_schedule("s", spec="x", next_at=100.0)
    assert store.fire_schedule("s", due=100.0, next_at=200.0, job=None,
                               skip_if_running=False) == FireResult(None, "disabled")
    assert store.get_schedule("s").next_at == 200.0  # type: ignore[union-attr]
    assert store.list() == []


def test_a_paused_schedule_does_not_fire_and_resumes_at_the_given_time(store: Store) -> None:
    store.sync_schedule("s", spec="x", next_at=100.0)
    assert store.pause_schedule("s", paused=True)
    assert not store.pause_schedule("s", paused=True)  # already paused
    assert store.fire_schedule("s", due=100.0, next_at=200.0, job=fired("s", 100.0),
                               skip_if_running=False) == FireResult(None, None)
    assert store.pause_schedule("s", paused=False, next_at=700.0)
    state = store.get_schedule("s")
    assert state is not None and (state.paused, state.next_at) == (False, 700.0)
    assert not store.pause_schedule("s", paused=False)
    assert store.fire_schedule("s", due=700.0, next_at=800.0, job=fired("s", 700.0),
                               skip_if_running=False).job_id is not None


def test_a_schedule_paused_or_run_before_any_sync_keeps_it(store: Store) -> None:
    """pause and run-now of a schedule no worker synced yet make its row (empty spec); sync then starts it."""
    assert store.pause_schedule("early", paused=True)
    state = store.get_schedule("early")
    assert state is not None and (state.spec, state.next_at, state.paused) == ("", None, True)
    job_id = store.run_schedule_now("fresh", fired("fresh", 50.0))
    fresh = store.get_schedule("fresh")
    assert fresh is not None and (fresh.spec, fresh.next_at, fresh.last_job_id) == ("", None, job_id)
    synced = store.sync_schedule("early", spec="x", next_at=100.0)
    assert (synced.spec, synced.next_at, synced.paused) == ("x", 100.0, True)
    assert [s.name for s in store.schedules()] == ["early", "fresh"]


def test_run_schedule_now_leaves_the_sequence(store: Store) -> None:
    store.sync_schedule("s", spec="x", next_at=100.0)
    job_id = store.run_schedule_now("s", fired("s", 42.0))
    state = store.get_schedule("s")
    assert state is not None and (state.next_at, state.last_job_id, state.last_at) == (100.0, job_id, 42.0)
    assert store.get(job_id).schedule == "s"  # type: ignore[union-attr]
    assert store.fire_schedule("s", due=100.0, next_at=200.0, job=fired("s", 100.0),
                               skip_if_running=True).skipped == f"previous run {job_id} has not ended"


def test_schedules_are_listed_by_name(store: Store) -> None:
    for name in ("b", "c", "a"):
        store.sync_schedule(name, spec=name, next_at=1.0)
    assert [s.name for s in store.schedules()] == ["a", "b", "c"]


def test_threads_firing_one_occurrence_fire_it_once(store: Store, database_url: str) -> None:
    store.sync_schedule("s", spec="x", next_at=100.0)
    results = race(8, database_url, lambda own: own.fire_schedule(
        "s", due=100.0, next_at=200.0, job=fired("s", 100.0), skip_if_running=True))
    assert sorted(r.job_id is not None for r in results) == [False] * 7 + [True]
    assert all(r.skipped is None for r in results)
    assert len(store.list()) == 1


FIRER = """
import json, sys
from bgrunner.model import NewJob
from bgrunner.store.factory import open_store
store = open_store(sys.argv[1])
store.counts()
print("ready", flush=True)
sys.stdin.readline()
fired = []
for n in range(20):  # occurrences 100, 200, ...: each process tries every one
    due = 100.0 * (n + 1)
    while True:
        state = store.get_schedule("s")
        if state.next_at >= due:
            break
    job = NewJob("m:A", "run", [], schedule="s", scheduled_for=due)
    result = store.fire_schedule("s", due=due, next_at=due + 100.0, job=job, skip_if_running=False)
    if result.job_id is not None:
        fired.append(due)
print(json.dumps(fired), flush=True)
"""


@pytest.mark.cross_process("firing processes cannot open the test's store (see the thread version)")
def test_processes_firing_a_schedule_fire_each_occurrence_once(store: Store, database_url: str) -> None:
    """Five processes firing 20 occurrences: each fired exactly once, in all."""
    store.sync_schedule("s", spec="x", next_at=100.0)
    results = run_together(FIRER, [[database_url] for _ in range(5)])
    everything = sorted(due for out in results for due in out)
    assert everything == [100.0 * (n + 1) for n in range(20)]
    assert sorted(r.scheduled_for for r in store.list(limit=100)) == everything  # type: ignore[type-var]


# -- migration ---------------------------------------------------------------------------------
# The jobs layout of schema 4 (bgrunner before queues), as `git show` of that release has it.
V4_DDL = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL,
    status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL, retry_delay REAL NOT NULL, timeout REAL NOT NULL, run_at REAL NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, claimed_at REAL, pid INTEGER, pid_ctime REAL,
    host TEXT, error TEXT, traceback TEXT, result TEXT, progress TEXT, then_jobs TEXT, parent_id INTEGER,
    retry_of INTEGER, unstarted INTEGER NOT NULL DEFAULT 0, lease_at REAL
);
CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, id) WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_target ON jobs (target, id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_ready_at ON jobs (run_at) WHERE status IN ('pending', 'retrying') AND pid IS NULL;
CREATE TABLE attempts (job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,
    started_at REAL, finished_at REAL NOT NULL, pid INTEGER, error TEXT, traceback TEXT,
    PRIMARY KEY (job_id, attempt));
CREATE TABLE hosts (host TEXT PRIMARY KEY, pid INTEGER NOT NULL, started_at REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, job_id INTEGER, detail TEXT, address TEXT);
CREATE INDEX audit_at ON audit (at);
CREATE TABLE revoked_sessions (session_id TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE bgrunner_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO jobs (target, method, params, status, max_attempts, retry_delay, timeout, run_at, created_at)
    VALUES ('m:Old', 'run', '[1]', 'pending', 3, 5.0, 0.0, 1.0, 1.0);
INSERT INTO hosts VALUES ('old-host', 1, 1.0, 1.0);
PRAGMA user_version = 4;
"""


def test_a_version_4_sqlite_store_gains_queues_and_the_new_tables(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V4_DDL)
    store = open_store(f"sqlite:///{path}")
    try:
        (old,) = store.list()
        assert (old.target, old.params, old.queue, old.unique_key, old.schedule, old.worker) == (
            "m:Old", [1], "default", None, None, None)
        assert store.create_unique(job(unique_key="k"))[1] and not store.create_unique(job(unique_key="k"))[1]
        assert store.claim_next(now=time.time(), cap=10, host=HOST, worker="w", queues=["default"],
                                limits=(TargetLimit("m:Old", rate=1, per=60.0),)) is not None
        store.sync_schedule("s", spec="x", next_at=1.0)
        assert store.workers() == []
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"jobs_unique_active", "jobs_active_target", "starts_target_at"} <= indexes
        assert conn.execute("SELECT count(*) FROM hosts").fetchone()[0] == 1  # kept, unused


def test_a_version_3_postgres_schema_gains_queues_and_the_new_tables(pg_url: str) -> None:
    from bgrunner.store.postgres import PostgresStore

    first = open_store(pg_url)
    assert isinstance(first, PostgresStore)
    job_id = first.create(job())
    p = first.prefix
    for column in ("queue", "unique_key", "schedule", "scheduled_for", "worker"):
        first._change(f"ALTER TABLE {p}jobs DROP COLUMN {column}")
    for table in ("workers", "schedules", "starts"):
        first._change(f"DROP TABLE {p}{table}")
    first._change(f"UPDATE {p}bgrunner_meta SET value = '3' WHERE key = 'schema_version'")
    first.close()
    again = open_store(pg_url)
    try:
        record = again.get(job_id)
        assert record is not None and record.queue == "default"
        assert again.create_unique(job(unique_key="k"))[1] and not again.create_unique(job(unique_key="k"))[1]
        assert again.register_worker(WorkerRecord("w", "h", 1, None, 1, 0.0, 0.0), timeout=30) is None
        assert again.sync_schedule("s", spec="x", next_at=1.0).next_at == 1.0
        assert again.claim_next(now=time.time(), cap=10, host=HOST,
                                limits=(TargetLimit(A, rate=1, per=60.0),)) is not None
    finally:
        again.close()
