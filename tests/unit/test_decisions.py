"""The decisions of the worker and the operations layer, without a job process: claims, deaths, lost hosts, chains, cancel races."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bgrunner import jobs, procs
from bgrunner.allowlist import Policy
from bgrunner.context import Context
from bgrunner.eventlog import EventLog
from bgrunner.model import JobRecord, JobStatus, WorkerRecord
from bgrunner.settle import Complete, Outcome, Retry, policy_of, settle_attempt
from bgrunner.store.memory import MemoryStore
from tests.unit.conftest import HOST, PROBE, current, events, job_log, make_ctx, new_job, start

T = 1_700_000_000.0
OTHER = "other-host"


def store_of(ctx: Context) -> MemoryStore:
    assert isinstance(ctx.store, MemoryStore)
    return ctx.store


def log_dir(ctx: Context) -> Path:
    return Path(ctx.log_dir)


# -- claim order, delays and the cap -------------------------------------------------------------


def test_claim_next_takes_priority_then_run_at_then_id(store: MemoryStore) -> None:
    """claim_next order: priority DESC, then run_at ASC, then id ASC."""
    low = store.create(new_job(priority=0, run_at=T - 50))
    late = store.create(new_job(priority=5, run_at=T - 10))
    early_b = store.create(new_job(priority=5, run_at=T - 20))
    early_a_later_id = store.create(new_job(priority=5, run_at=T - 20))
    urgent = store.create(new_job(priority=9, run_at=T - 1))
    order = []
    while (job := store.claim_next(now=T, cap=100, host=HOST)) is not None:
        order.append(job.id)
    assert order == [urgent, early_b, early_a_later_id, late, low]


def test_claim_next_sets_running_attempt_host_and_no_pid(store: MemoryStore) -> None:
    """A claimed job is running, attempt + 1, claimed_at = now, on the claiming host, with no pid yet."""
    job_id = store.create(new_job(run_at=T - 5))
    job = store.claim_next(now=T, cap=1, host=HOST)
    assert job is not None and job.id == job_id
    assert (job.status, job.attempts, job.claimed_at, job.started_at, job.host, job.pid) == (
        JobStatus.RUNNING, 1, T, T, HOST, None)


def test_a_delayed_job_is_not_claimed_before_its_run_at(store: MemoryStore) -> None:
    """A job due at T + 30 is not claimed at T (by claim_next or claim) and is claimed at T + 30."""
    job_id = store.create(new_job(run_at=T + 30))
    assert store.claim_next(now=T, cap=10, host=HOST) is None
    assert store.claim(job_id, now=T + 29.9, cap=10, host=HOST) is None
    assert current(store, job_id).status == JobStatus.PENDING
    claimed = store.claim_next(now=T + 30, cap=10, host=HOST)
    assert claimed is not None and claimed.id == job_id


def test_a_retry_waits_for_its_run_at(store: MemoryStore, tmp_path: Path) -> None:
    """A released retry due at now + delay is claimed only once that time has come, as attempt 2."""
    job = start(store, store.create(new_job(run_at=T - 1)), now=T)
    log = job_log(EventLog(tmp_path / "logs"), job)
    outcome = Outcome.raised("KeyError: 'k'", None, ["KeyError"])
    assert settle_attempt(store, log, job, 1, outcome, Policy(retry_delay=20.0), now=T + 1) == Retry(20.0)
    assert store.claim_next(now=T + 20.9, cap=10, host=HOST) is None
    again = store.claim_next(now=T + 21, cap=10, host=HOST)
    assert again is not None and (again.id, again.attempts) == (job.id, 2)


def test_the_cap_counts_running_jobs(store: MemoryStore) -> None:
    """With cap 2 and two running jobs nothing more is claimed; a finished one frees its slot."""
    ids = [store.create(new_job(run_at=T - 3 + i)) for i in range(3)]
    first = start(store, ids[0], now=T)
    start(store, ids[1], now=T)
    assert store.claim_next(now=T, cap=2, host=HOST) is None
    assert store.claim(ids[2], now=T, cap=2, host=HOST) is None
    assert store.finish(first.id, 1, status=JobStatus.COMPLETED, now=T)
    claimed = store.claim_next(now=T, cap=2, host=HOST)
    assert claimed is not None and claimed.id == ids[2]


def test_the_cap_counts_a_retry_kept_with_its_pid_but_not_a_released_one(store: MemoryStore) -> None:
    """Retrying with a pid is active (holds a slot); released (no pid) it does not."""
    kept_id, waiting_id = store.create(new_job(run_at=T - 2)), store.create(new_job(run_at=T - 1))
    kept = start(store, kept_id, now=T, pid=111, pid_ctime=T)
    assert store.retry_later(kept.id, 1, outcome="error", error="e", traceback=None, run_at=T + 60,
                             release=False, now=T)
    assert [j.id for j in store.active()] == [kept_id]
    assert store.claim_next(now=T, cap=1, host=HOST) is None
    assert store.release(kept_id, 1)
    assert store.active() == []
    claimed = store.claim_next(now=T, cap=1, host=HOST)
    assert claimed is not None and claimed.id == waiting_id


# -- reconcile -------------------------------------------------------------------------------------


def test_reconcile_a_dead_process_is_a_failed_attempt_retried(
        ctx: Context, dead_pid: tuple[int, float]) -> None:
    """A running job whose pid is dead: attempt 1 recorded as crashed, the job retrying and released; job_retrying logged."""
    store = store_of(ctx)
    pid, ctime = dead_pid
    job = start(store, store.create(new_job(max_attempts=3, retry_delay=7.0, run_at=T)), now=T,
                pid=pid, pid_ctime=ctime)
    before = time.time()
    assert jobs.reconcile(ctx) == 1
    after = current(store, job.id)
    assert (after.status, after.attempts, after.pid) == (JobStatus.RETRYING, 1, None)
    assert before + 7.0 <= after.run_at <= time.time() + 7.0
    assert after.error == f"the job's process died without reporting: process {pid} is gone"
    [row] = store.attempts(job.id)
    assert (row.attempt, row.outcome, row.pid) == (1, "crashed", pid)
    [event] = events(log_dir(ctx), "job_retrying", "job_failed")
    assert (event["event"], event["job_id"], event["attempt"], event["pid"]) == (
        "job_retrying", str(job.id), 1, pid)
    assert (event["outcome"], event["retry_in_s"]) == ("crashed", 7.0)


def test_reconcile_a_dead_process_on_its_last_attempt_fails_the_job(
        ctx: Context, dead_pid: tuple[int, float]) -> None:
    """The same death on the last attempt: the job is failed (job_failed), not retried."""
    store = store_of(ctx)
    pid, ctime = dead_pid
    job = start(store, store.create(new_job(max_attempts=1, run_at=T)), now=T, pid=pid, pid_ctime=ctime)
    assert jobs.reconcile(ctx) == 1
    after = current(store, job.id)
    assert after.status == JobStatus.FAILED and after.finished_at is not None
    assert [r.outcome for r in store.attempts(job.id)] == ["crashed"]
    assert [e["event"] for e in events(log_dir(ctx), "job_retrying", "job_failed")] == ["job_failed"]


def test_reconcile_a_reused_pid_with_another_start_time_counts_as_dead(
        ctx: Context, live_pid: tuple[int, float]) -> None:
    """A live pid whose start time is not the recorded one is another process: the attempt is settled."""
    store = store_of(ctx)
    pid, ctime = live_pid
    job = start(store, store.create(new_job(max_attempts=2, run_at=T)), now=T, pid=pid,
                pid_ctime=ctime - 1000)
    assert jobs.reconcile(ctx) == 1
    assert current(store, job.id).status == JobStatus.RETRYING
    assert [r.outcome for r in store.attempts(job.id)] == ["crashed"]


def test_reconcile_leaves_a_live_process_alone(ctx: Context, live_pid: tuple[int, float]) -> None:
    """A running job whose pid and start time are this live process is not changed."""
    store = store_of(ctx)
    pid, ctime = live_pid
    job = start(store, store.create(new_job(run_at=T)), now=T, pid=pid, pid_ctime=ctime)
    assert jobs.reconcile(ctx) == 0
    assert current(store, job.id) == job
    assert store.attempts(job.id) == []
    assert events(log_dir(ctx)) == []


def test_reconcile_releases_a_kept_retry_whose_process_died(
        ctx: Context, dead_pid: tuple[int, float]) -> None:
    """A retrying job kept by a process that is now dead is handed to the workers (pid cleared), its history unchanged."""
    store = store_of(ctx)
    pid, ctime = dead_pid
    job = start(store, store.create(new_job(run_at=T)), now=T, pid=pid, pid_ctime=ctime)
    assert store.retry_later(job.id, 1, outcome="error", error="e", traceback=None, run_at=T + 5,
                             release=False, now=T + 1)
    history = store.attempts(job.id)
    assert jobs.reconcile(ctx) == 1
    after = current(store, job.id)
    assert (after.status, after.attempts, after.pid, after.run_at) == (JobStatus.RETRYING, 1, None, T + 5)
    assert store.attempts(job.id) == history


def test_reconcile_gives_back_a_claim_never_started_only_after_the_launch_grace(ctx: Context) -> None:
    """A claim with no pid is unclaimed (pending, attempt not counted) past LAUNCH_GRACE, and kept within it."""
    store = store_of(ctx)
    now = time.time()
    stale = start(store, store.create(new_job(run_at=T)), now=now - jobs.LAUNCH_GRACE - 2)
    fresh = start(store, store.create(new_job(run_at=T)), now=now - jobs.LAUNCH_GRACE + 5)
    assert jobs.reconcile(ctx) == 1
    given_back = current(store, stale.id)
    assert (given_back.status, given_back.tries, given_back.claimed_at, given_back.started_at) == (
        JobStatus.PENDING, 0, None, None)
    assert current(store, fresh.id) == fresh
    assert store.attempts(stale.id) == [] and store.attempts(fresh.id) == []


def test_reconcile_keeps_a_claim_whose_process_recorded_itself_after_the_snapshot(
        ctx: Context, live_pid: tuple[int, float]) -> None:
    """A stale-looking claim (no pid in the snapshot) whose process has since recorded its live pid is not given back."""
    store = store_of(ctx)
    snapshot = start(store, store.create(new_job(run_at=T)), now=time.time() - jobs.LAUNCH_GRACE - 2)
    assert snapshot.pid is None
    pid, ctime = live_pid
    assert store.set_process(snapshot.id, 1, pid=pid, pid_ctime=ctime)  # the process starts, late
    recorded = current(store, snapshot.id)
    assert jobs.reconcile(ctx, [snapshot]) == 0
    assert current(store, snapshot.id) == recorded  # still running, attempt 1, this pid


def test_reconcile_gives_back_a_later_attempt_never_started_as_retrying(ctx: Context) -> None:
    """An unstarted claim of attempt 2 goes back to retrying at attempt 1, its first attempt's history kept."""
    store = store_of(ctx)
    now = time.time()
    job = start(store, store.create(new_job(run_at=T)), now=T)
    assert store.retry_later(job.id, 1, outcome="error", error="e", traceback=None, run_at=T,
                             release=True, now=T)
    second = start(store, job.id, now=now - jobs.LAUNCH_GRACE - 1)
    assert second.attempts == 2
    assert jobs.reconcile(ctx) == 1
    after = current(store, job.id)
    assert (after.status, after.tries, after.pid) == (JobStatus.RETRYING, 1, None)
    assert [r.attempt for r in store.attempts(job.id)] == [1]


def test_reconcile_does_not_touch_another_hosts_jobs(ctx: Context, dead_pid: tuple[int, float]) -> None:
    """Jobs claimed by another host (dead-looking pid, or a stale claim without pid) are left as they are."""
    store = store_of(ctx)
    pid, ctime = dead_pid
    with_pid = start(store, store.create(new_job(run_at=T)), now=T, host=OTHER, pid=pid, pid_ctime=ctime)
    no_pid = start(store, store.create(new_job(run_at=T)), now=T, host=OTHER)
    assert jobs.reconcile(ctx) == 0
    assert current(store, with_pid.id) == with_pid
    assert current(store, no_pid.id) == no_pid
    assert events(log_dir(ctx)) == []


def test_reconcile_of_given_jobs_checks_only_those(ctx: Context, dead_pid: tuple[int, float]) -> None:
    """reconcile(ctx, [job]) settles that job only; another dead job is left for later."""
    store = store_of(ctx)
    pid, ctime = dead_pid
    one = start(store, store.create(new_job(run_at=T)), now=T, pid=pid, pid_ctime=ctime)
    other = start(store, store.create(new_job(run_at=T)), now=T, pid=pid, pid_ctime=ctime)
    assert jobs.reconcile(ctx, [one]) == 1
    assert current(store, one.id).status == JobStatus.RETRYING
    assert current(store, other.id) == other


# -- record_death ------------------------------------------------------------------------------------


def test_record_death_retries_a_crash_then_fails_it_at_the_last_attempt(ctx: Context) -> None:
    """Two deaths of a 2-attempt job: retrying (released) after the first, failed after the second; both crashed."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(max_attempts=2, retry_delay=0.0, run_at=T)), now=T,
                pid=501, pid_ctime=T)
    assert jobs.record_death(ctx, job, "killed by signal 9 (SIGKILL)") is True
    first = current(store, job.id)
    assert (first.status, first.pid, first.attempts) == (JobStatus.RETRYING, None, 1)
    assert first.error == "the job's process died without reporting: killed by signal 9 (SIGKILL)"
    second = start(store, job.id, now=time.time() + 1, pid=502, pid_ctime=T + 1)  # record_death settles at the real time
    assert second.attempts == 2
    assert jobs.record_death(ctx, second, "exit code 1") is True
    last = current(store, job.id)
    assert (last.status, last.error) == (JobStatus.FAILED, "the job's process died without reporting: exit code 1")
    assert [(r.attempt, r.outcome, r.pid) for r in store.attempts(job.id)] == [
        (1, "crashed", 501), (2, "crashed", 502)]
    logged = events(log_dir(ctx), "job_retrying", "job_failed")
    assert [(e["event"], e["attempt"], e["pid"], e["outcome"]) for e in logged] == [
        ("job_retrying", 1, 501, "crashed"), ("job_failed", 2, 502, "crashed")]


def test_record_death_follows_retry_on_job_crashed(tmp_path: Path, memory_url: str, host: str) -> None:
    """`JobCrashed = 1` in retry_on fails a crash at once, although max_attempts allows 3."""
    ctx = make_ctx(tmp_path, memory_url, """
        [defaults]
        max_attempts = 3
        [defaults.retry_on]
        JobCrashed = 1
        [jobs."tests.fixtures:Probe"]
        methods = ["noop"]
    """)
    store = store_of(ctx)
    job = start(store, store.create(new_job(max_attempts=3, run_at=T)), now=T, pid=503, pid_ctime=T)
    assert jobs.record_death(ctx, job, "exit code 1") is True
    assert current(store, job.id).status == JobStatus.FAILED


def test_record_death_of_a_kept_retry_only_releases_it(ctx: Context) -> None:
    """A retrying job whose process died between attempts: pid cleared, still retrying, history and log unchanged."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(run_at=T)), now=T, pid=504, pid_ctime=T)
    assert store.retry_later(job.id, 1, outcome="error", error="KeyError: 'k'", traceback=None,
                             run_at=T + 9, release=False, now=T + 1)
    kept = current(store, job.id)
    history = store.attempts(job.id)
    assert jobs.record_death(ctx, kept, "exit code 1") is True
    after = current(store, job.id)
    assert (after.status, after.attempts, after.pid, after.pid_ctime) == (JobStatus.RETRYING, 1, None, None)
    assert (after.error, after.run_at) == ("KeyError: 'k'", T + 9)
    assert store.attempts(job.id) == history
    assert events(log_dir(ctx)) == []


def test_record_death_of_a_job_no_longer_allowed_fails_it(tmp_path: Path, memory_url: str, host: str) -> None:
    """A job whose method was removed from the allowlist since its submit is failed at attempt 1 of 5, not retried."""
    store = store_of(make_ctx(tmp_path, memory_url))
    job = start(store, store.create(new_job(method="mark", max_attempts=5, run_at=T)), now=T,
                pid=505, pid_ctime=T)
    narrowed = make_ctx(tmp_path, memory_url, """
        [jobs."tests.fixtures:Probe"]
        methods = ["noop"]
        max_attempts = 5
    """, name="narrowed.toml")
    assert jobs.record_death(narrowed, job, "exit code 1") is True
    after = current(store, job.id)
    assert (after.status, after.attempts) == (JobStatus.FAILED, 1)
    assert [r.outcome for r in store.attempts(job.id)] == ["crashed"]
    assert [e["event"] for e in events(tmp_path / "logs", "job_failed", "job_retrying")] == ["job_failed"]


def test_record_death_with_a_stale_record_changes_nothing(ctx: Context) -> None:
    """A death reported for an attempt already settled (the job completed) returns False and writes nothing."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(run_at=T)), now=T, pid=506, pid_ctime=T)
    assert store.finish(job.id, 1, status=JobStatus.COMPLETED, now=T + 1, result='"ok"')
    done = current(store, job.id)
    assert jobs.record_death(ctx, job, "exit code 0") is False
    assert current(store, job.id) == done
    assert [r.outcome for r in store.attempts(job.id)] == ["completed"]
    assert events(log_dir(ctx)) == []


# -- recover_expired_leases (a dead host, whatever ran its jobs) -------------------------------------


def age_lease(store: MemoryStore, job: JobRecord, seconds: float) -> None:
    """Make the job's lease ``seconds`` old on the store's clock (its process stopped renewing)."""
    assert job.pid is not None
    assert store.renew_lease(job.id, pid=job.pid, now=store.clock() - seconds)


def test_expired_leases_of_another_host_are_settled_as_dead(ctx: Context) -> None:
    """Jobs on a host whose processes stopped renewing: retried or failed per policy, a kept retry released."""
    store = store_of(ctx)
    retried = start(store, store.create(new_job(max_attempts=2, retry_delay=0.0, run_at=T)), now=T,
                    host="lost", pid=21, pid_ctime=T)
    failed = start(store, store.create(new_job(max_attempts=1, run_at=T)), now=T, host="lost",
                   pid=22, pid_ctime=T)
    kept = start(store, store.create(new_job(run_at=T)), now=T, host="lost", pid=23, pid_ctime=T)
    assert store.retry_later(kept.id, 1, outcome="error", error="e", traceback=None, run_at=T,
                             release=False, now=T)
    fresh = start(store, store.create(new_job(run_at=T)), now=T, host="busy", pid=24, pid_ctime=T)
    for job in (retried, failed, kept):
        age_lease(store, current(store, job.id), 100)

    assert sorted(jobs.recover_expired_leases(ctx, HOST, timeout=30)) == sorted(
        [retried.id, failed.id, kept.id])

    after = current(store, retried.id)
    assert (after.status, after.pid, after.tries) == (JobStatus.RETRYING, None, 1)
    assert after.error is not None and after.error.startswith(
        "the job's process died without reporting: lease expired: no sign of life from its process on lost for 10")
    assert current(store, failed.id).status == JobStatus.FAILED
    released = current(store, kept.id)
    assert (released.status, released.pid) == (JobStatus.RETRYING, None)
    assert current(store, fresh.id) == fresh
    logged = events(log_dir(ctx), "job_retrying", "job_failed")
    assert sorted((e["event"], e["job_id"], e["pid"]) for e in logged) == sorted([
        ("job_retrying", str(retried.id), 21), ("job_failed", str(failed.id), 22)])


def test_a_claim_whose_claimer_died_before_launching_goes_back(ctx: Context) -> None:
    """A claim never launched (no pid) with an expired lease is unclaimed: not an attempt."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(run_at=T)), now=T, host="lost")
    assert jobs.recover_expired_leases(ctx, HOST, timeout=30) == []  # its claim lease is fresh
    assert jobs.recover_expired_leases(ctx, HOST, timeout=-1) == [job.id]
    after = current(store, job.id)
    assert (after.status, after.tries, after.pid) == (JobStatus.PENDING, 0, None)


def test_a_live_local_process_keeps_its_job_whatever_its_lease(ctx: Context) -> None:
    """This host can check the pid: a live job process with a stale lease (a stuck renewal) is left alone."""
    store = store_of(ctx)
    me = os.getpid()
    job = start(store, store.create(new_job(run_at=T)), now=T, host=HOST, pid=me,
                pid_ctime=procs.start_time(me))
    age_lease(store, job, 100)
    assert jobs.recover_expired_leases(ctx, HOST, timeout=30) == []
    assert current(store, job.id).status == JobStatus.RUNNING


def test_remove_stale_workers_drops_silent_worker_rows(ctx: Context) -> None:
    store = store_of(ctx)
    now = store.clock()
    me = jobs.worker_id(HOST, 4)
    for worker_id, age in (("gone-a:1", 61), ("gone-b:2", 500), ("fresh:3", 5), (me, 1000)):
        host = worker_id.split(":")[0]
        store.register_worker(WorkerRecord(worker_id, host, 1, None, 1, 0.0, 0.0), timeout=60, now=now - age)
    # the caller's own row is never stale to itself
    assert sorted(w.id for w in jobs.remove_stale_workers(ctx, me, timeout=60)) == ["gone-a:1", "gone-b:2"]
    assert sorted(w.id for w in store.workers()) == sorted(["fresh:3", me])


# -- chains --------------------------------------------------------------------------------------------


def completed_parent(ctx: Context, then: list[tuple[str, str, list[object]]]) -> JobRecord:
    """A job submitted with follow-ups ``then``, run and completed."""
    store = store_of(ctx)
    parent_id = jobs.submit(ctx, jobs.prepare(ctx, PROBE, "noop", [], then=then))
    job = start(store, parent_id, now=time.time() + 1)
    assert settle_attempt(store, job_log(ctx.log, job), job, 1, Outcome.completed(), None) == Complete()
    return current(store, parent_id)


def test_submit_followups_queues_each_with_its_parent(ctx: Context) -> None:
    """Each follow-up is queued pending, with parent_id, its own target, method and params, in order; job_queued each."""
    parent = completed_parent(ctx, [(PROBE, "mark", ["/tmp/a", "one"]), (PROBE, "noop", [])])
    ids = jobs.submit_followups(ctx, parent)
    assert len(ids) == 2 and parent.id not in ids
    made = [current(store_of(ctx), i) for i in ids]
    assert [(j.target, j.method, j.params, j.status, j.parent_id) for j in made] == [
        (PROBE, "mark", ["/tmp/a", "one"], JobStatus.PENDING, parent.id),
        (PROBE, "noop", [], JobStatus.PENDING, parent.id)]
    queued = [e["job_id"] for e in events(log_dir(ctx), "job_queued")]
    assert queued == [str(parent.id), *map(str, ids)]


def test_a_followup_no_longer_allowed_is_rejected_without_stopping_the_others(
        ctx: Context, tmp_path: Path) -> None:
    """A follow-up removed from the allowlist since the submit is logged job_rejected; the ones around it are queued."""
    parent = completed_parent(ctx, [(PROBE, "noop", []), (PROBE, "mark", ["/tmp/b"]),
                                    ("examples.jobs:SampleJob", "handle", [])])
    narrowed = make_ctx(tmp_path, ctx.database_url, """
        [jobs."tests.fixtures:Probe"]
        methods = ["noop"]
        [jobs."examples.jobs:SampleJob"]
        methods = ["handle"]
    """, name="narrowed.toml")
    ids = jobs.submit_followups(narrowed, parent)
    made = [current(store_of(narrowed), i) for i in ids]
    assert [(j.target, j.method, j.parent_id) for j in made] == [
        (PROBE, "noop", parent.id), ("examples.jobs:SampleJob", "handle", parent.id)]
    [rejected] = events(log_dir(ctx), "job_rejected")
    assert (rejected["level"], rejected["job_id"], rejected["target"], rejected["method"]) == (
        "error", None, PROBE, "mark")
    assert rejected["reason"].startswith(f"follow-up of job {parent.id}: ")
    assert "'mark'" in rejected["reason"]
    assert len(store_of(ctx).list(limit=-1)) == 3  # the parent and the two follow-ups, nothing for "mark"


def test_a_job_without_followups_queues_nothing(ctx: Context) -> None:
    """A completed job with no `then` queues no job and logs nothing."""
    parent = completed_parent(ctx, [])
    before = events(log_dir(ctx))
    assert jobs.submit_followups(ctx, parent) == []
    assert events(log_dir(ctx)) == before
    assert [j.id for j in store_of(ctx).list(limit=-1)] == [parent.id]


# -- cancel races -----------------------------------------------------------------------------------------


@pytest.fixture
def cancelled_running(ctx: Context) -> JobRecord:
    """A running job (attempt 1, pid recorded) as it was just before a cancel that has since happened."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(max_attempts=3, run_at=T)), now=T, pid=601, pid_ctime=T)
    assert store.cancel(job.id, now=T + 5) is not None
    return job


def test_a_late_settle_after_a_cancel_leaves_the_job_cancelled(ctx: Context, cancelled_running: JobRecord) -> None:
    """The old attempt's settle (completed, or failed with retries left) after a cancel returns None; cancelled stays."""
    store = store_of(ctx)
    before = current(store, cancelled_running.id)
    log = job_log(ctx.log, cancelled_running)
    policy = policy_of(lambda: ctx.config, cancelled_running)
    for outcome in (Outcome.completed('"late"'), Outcome.raised("KeyError: 'k'", None, ["KeyError"])):
        assert settle_attempt(store, log, cancelled_running, 1, outcome, policy, now=T + 6) is None
    after = current(store, cancelled_running.id)
    assert after == before
    assert (after.status, after.result, after.finished_at) == (JobStatus.CANCELLED, None, T + 5)
    assert [r.outcome for r in store.attempts(cancelled_running.id)] == ["cancelled"]
    assert events(log_dir(ctx)) == []


def test_a_late_progress_report_after_a_cancel_is_rejected(ctx: Context, cancelled_running: JobRecord) -> None:
    """set_progress from the cancelled attempt returns False and stores nothing."""
    store = store_of(ctx)
    assert store.set_progress(cancelled_running.id, 1, {"done": 5}) is False
    after = current(store, cancelled_running.id)
    assert (after.status, after.progress) == (JobStatus.CANCELLED, None)


def test_a_late_death_report_after_a_cancel_is_rejected(ctx: Context, cancelled_running: JobRecord) -> None:
    """record_death of the cancelled attempt's process returns False; the job is not retried."""
    store = store_of(ctx)
    assert jobs.record_death(ctx, cancelled_running, "killed by signal 15 (SIGTERM)") is False
    assert current(store, cancelled_running.id).status == JobStatus.CANCELLED
    assert [r.outcome for r in store.attempts(cancelled_running.id)] == ["cancelled"]


def test_begin_attempt_after_a_cancel_does_not_start_another(ctx: Context) -> None:
    """A process waiting between attempts that calls begin_attempt after a cancel gets False; attempts stay 1."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(run_at=T)), now=T, pid=602, pid_ctime=T)
    assert store.retry_later(job.id, 1, outcome="error", error="e", traceback=None, run_at=T + 1,
                             release=False, now=T)
    assert store.cancel(job.id, now=T + 0.5) is not None
    assert store.begin_attempt(job.id, 1, now=T + 1) is False
    after = current(store, job.id)
    assert (after.status, after.attempts, after.error) == (JobStatus.CANCELLED, 1, "cancelled")
    assert [r.outcome for r in store.attempts(job.id)] == ["error"]  # a kept retry has no running attempt to end


def test_writes_fenced_on_an_attempt_given_up_on_are_rejected_after_a_reclaim(ctx: Context) -> None:
    """Once attempt 1 was settled and the job re-claimed as attempt 2, every write fenced on 1 is refused."""
    store = store_of(ctx)
    job = start(store, store.create(new_job(max_attempts=3, run_at=T)), now=T, pid=603, pid_ctime=T)
    assert jobs.record_death(ctx, job, "exit code 1") is True  # attempt 1 given up on
    second = start(store, job.id, now=time.time() + 10, pid=604, pid_ctime=T + 10)
    assert second.attempts == 2
    log = job_log(ctx.log, job)
    assert settle_attempt(store, log, job, 1, Outcome.completed('"stale"'), None, now=T + 20) is None
    assert store.finish(job.id, 1, status=JobStatus.FAILED, now=T + 20, error="stale") is False
    assert store.retry_later(job.id, 1, outcome="error", error="stale", traceback=None, run_at=T,
                             release=True, now=T + 20) is False
    assert store.set_progress(job.id, 1, {"stale": True}) is False
    assert store.set_process(job.id, 1, pid=603, pid_ctime=T) is False
    assert store.unclaim(job.id, 1) is False
    assert current(store, job.id) == second
    assert [(r.attempt, r.outcome) for r in store.attempts(job.id)] == [(1, "crashed")]
    assert [e["event"] for e in events(log_dir(ctx), "job_completed", "job_failed")] == []


def test_cancel_of_a_finished_job_returns_false(ctx: Context) -> None:
    """jobs.cancel of a completed (or failed) job is False, logs nothing and leaves it as it was."""
    store = store_of(ctx)
    done = start(store, store.create(new_job(run_at=T)), now=T)
    assert store.finish(done.id, 1, status=JobStatus.COMPLETED, now=T + 1, result='"ok"')
    failed = start(store, store.create(new_job(run_at=T)), now=T)
    assert store.finish(failed.id, 1, status=JobStatus.FAILED, now=T + 1, error="boom")
    snapshot = [current(store, done.id), current(store, failed.id)]
    assert jobs.cancel(ctx, done.id) is False
    assert jobs.cancel(ctx, str(failed.id)) is False
    assert [current(store, done.id), current(store, failed.id)] == snapshot
    assert events(log_dir(ctx), "job_cancelled") == []


def test_cancel_of_a_pending_job_returns_true_once(ctx: Context) -> None:
    """jobs.cancel of a pending job cancels it and logs job_cancelled; a second cancel is False."""
    store = store_of(ctx)
    job_id = store.create(new_job(run_at=T))
    assert jobs.cancel(ctx, job_id, reason="test") is True
    assert current(store, job_id).status == JobStatus.CANCELLED
    assert jobs.cancel(ctx, job_id) is False
    [event] = events(log_dir(ctx), "job_cancelled")
    assert (event["job_id"], event["reason"], event["was"], event["attempt"]) == (str(job_id), "test", "pending", 0)
