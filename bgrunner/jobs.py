"""Named job operations over the store: submit, launch, cancel, and keep status truthful.

This is the layer the API, the CLI, the worker and the dashboard call; it
checks the allowlist, writes events to the log and asks the OS (pid *and*
start time) before it believes a job is running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from bgrunner import bounds, procs
from bgrunner.allowlist import JobSpec, target_of
from bgrunner.context import Context, host_id
from bgrunner.errors import ForkServerError, JobNotFound, ParamsError, UsageError
from bgrunner.model import JobRecord, JobStatus, NewJob, WorkerRecord, iso
from bgrunner.settle import Outcome, Retry, policy_of, settle_attempt

if TYPE_CHECKING:
    import subprocess

    from bgrunner.launch.forkserver import ForkedProcess, ForkServer

#: A claimed job whose process has not recorded itself after this long was never started.
LAUNCH_GRACE = 15.0

Params = list[Any] | dict[str, Any]


def normalise_target(target: str | type) -> str:
    return target_of(target) if isinstance(target, type) else target


def check_params(params: object) -> Params:
    """Params must be a list (positional) or dict (keyword) of JSON values; a tuple is a list."""
    if params is None:
        return []
    if isinstance(params, tuple):
        params = list(params)
    if not isinstance(params, list | dict):
        raise ParamsError(f"params must be a list or a dict, not {type(params).__name__}")
    try:
        bounds.check_params(params)  # NaN, infinity, 64-bit ints, depth, size (CONTRACT §14)
    except UsageError as exc:
        raise ParamsError(str(exc)) from exc
    return json.loads(json.dumps(params))  # type: ignore[no-any-return]


def check_binding(target: str | type, spec: JobSpec, method: str, params: Params) -> None:
    """Bind params to the signature when the class is at hand without importing anything new."""
    import sys

    cls = target if isinstance(target, type) else None
    if cls is None and spec.module in sys.modules:
        cls = getattr(sys.modules[spec.module], spec.class_name, None)
    if not isinstance(cls, type):
        return
    from bgrunner.binding.loader import signature_callable
    from bgrunner.binding.params import bind_params
    from bgrunner.errors import TargetLoadError

    try:
        bind_params(signature_callable(cls, method), params)
    except TargetLoadError as exc:
        raise UsageError(str(exc)) from exc


def prepare(ctx: Context, target: str | type, method: str, params: object, *, priority: int = 0,
            delay: float = 0, max_attempts: int | None = None, retry_delay: float | None = None,
            timeout: float | None = None, then: Sequence[Any] | None = None,
            parent_id: int | None = None, retry_of: int | None = None,
            queue: str | None = None, unique_key: str | None = None) -> NewJob:
    """Validate a submission completely (allowlist, params, policy, follow-ups) before any write.

    ``queue`` None: the target's own (``queue`` key, default ``"default"``).
    """
    name = normalise_target(target)
    spec = ctx.config.check(name, method)
    checked = check_params(params)
    check_binding(target, spec, method, checked)
    bounds.check_int(priority, what="priority")
    delay = bounds.check_seconds(delay, what="delay", maximum=bounds.MAX_DELAY) or 0.0
    if max_attempts is not None:
        bounds.check_int(max_attempts, what="max_attempts", minimum=1, maximum=bounds.INT_MAX)
    retry_delay = bounds.check_seconds(retry_delay, what="retry_delay", maximum=bounds.MAX_RETRY_DELAY)
    timeout = bounds.check_seconds(timeout, what="timeout", maximum=bounds.MAX_TIMEOUT)
    policy = spec.policy.with_overrides(max_attempts=max_attempts, retry_delay=retry_delay,
                                        timeout=timeout)
    if queue is not None:
        bounds.check_queue(queue)
    if unique_key is not None:
        bounds.check_key(unique_key)
    followups = [followup(ctx, item) for item in (then or [])]
    return NewJob(target=name, method=method, params=checked, priority=priority,
                  run_at=time.time() + float(delay), max_attempts=policy.max_attempts,
                  retry_delay=policy.retry_delay, timeout=policy.timeout, then=followups,
                  parent_id=parent_id, retry_of=retry_of, queue=queue or policy.queue,
                  unique_key=unique_key)


def followup(ctx: Context, item: Any) -> dict[str, Any]:
    """A chained job ``(target, method, params)`` or dict, allowlist-checked at submit time."""
    if isinstance(item, dict):
        target, method, params = item.get("target"), item.get("method", "handle"), item.get("params")
    elif isinstance(item, list | tuple) and 1 <= len(item) <= 3:
        target, method, params = (list(item) + ["handle", None])[:3]
    else:
        raise UsageError(f"a follow-up must be (target, method, params), not {item!r}")
    if not isinstance(target, str | type) or not isinstance(method, str):
        raise UsageError(f"a follow-up must be (target, method, params), not {item!r}")
    name = normalise_target(target)
    ctx.config.check(name, method)
    return {"target": name, "method": method, "params": check_params(params)}


def submit(ctx: Context, new: NewJob) -> int:
    """Record a validated job durably, log it, and (autostart) get it started.

    With a ``unique_key`` held by an active job, nothing is recorded: that job's id.
    """
    if new.unique_key is not None:
        job_id, created = ctx.store.create_unique(new)
        if not created:
            ctx.log.emit("job_deduplicated", job_id=str(job_id), target=new.target, method=new.method,
                         unique_key=new.unique_key)
            return job_id
    else:
        job_id = ctx.store.create(new)
    queued(ctx, job_id, new)
    return job_id


def queued(ctx: Context, job_id: int, new: NewJob) -> None:
    """A job was just recorded: log it and get it started (autostart) or wake the workers."""
    ctx.log.emit("job_queued", job_id=str(job_id), target=new.target, method=new.method,
                 attempt=0, priority=new.priority, run_at=new.run_at, queue=new.queue)
    if ctx.autostart:
        start_soon(ctx, job_id, due=new.run_at <= time.time(), queue=new.queue)
    else:
        from bgrunner.launch.wakeup import notify

        notify(ctx)  # a running worker picks it up now rather than at its next poll


def start_soon(ctx: Context, job_id: int, *, due: bool, queue: str | None = None) -> None:
    """Launch the job now if its slot (and its target's limits) allow; otherwise make sure a worker will.

    A worker is started only when no live worker serves the job's queue.
    """
    if due:
        job = ctx.store.claim(job_id, now=time.time(), cap=ctx.config.runner.cap, host=host_id(),
                              limits=ctx.config.limits())
        if job is not None:
            launch(ctx, job)
            return
    from bgrunner.launch.wakeup import ensure_worker

    ensure_worker(ctx, queue)


def launch(ctx: Context, job: JobRecord, *, watch: bool = True) -> subprocess.Popen[bytes]:
    """Start the process of a job this process has claimed; give it back if that fails."""
    from bgrunner.job.command import job_command
    from bgrunner.launch import spawn as launcher

    try:
        proc = launcher.spawn(job_command(job.target, job.method, job.id),
                              env=ctx.child_env(), output_dir=ctx.output_dir, job_id=job.id)
    except OSError as exc:
        ctx.store.unclaim(job.id, job.attempts)
        raise UsageError(f"cannot start job {job.id}: {exc}") from exc
    started = procs.start_time(proc.pid)
    if started is not None:
        ctx.store.set_process(job.id, job.attempts, pid=proc.pid, pid_ctime=started)
    if watch:
        launcher.reaper().watch(proc, functools.partial(_on_exit, ctx, job.id, job.attempts))
    return proc


def launch_forked(ctx: Context, server: ForkServer, job: JobRecord) -> ForkedProcess | None:
    """:func:`launch` for fork mode: hand the job to a forked process, record it on the job, start it.

    The pid is on the job before the job starts, so the job process writes
    nothing before its method runs. None when the job was cancelled since its
    claim (nothing started). Raises ForkServerError when no process could be
    started: unclaimed if none was handed the job, else a failed attempt.
    """
    from bgrunner.launch.forkserver import ForkedProcess

    try:
        pid = server.hand(job.id, job.target, job.method, job.attempts)
    except ForkServerError as exc:
        ctx.store.unclaim(job.id, job.attempts)
        raise ForkServerError(f"cannot start job {job.id}: {exc}") from exc
    started = procs.start_time(pid)
    if started is not None and not ctx.store.set_process(job.id, job.attempts, pid=pid,
                                                         pid_ctime=started):
        server.release(pid)
        return None  # cancelled (or taken back) since the claim: nothing to start
    try:
        if started is None:
            raise ForkServerError(f"process {pid} is gone")
        server.go(pid)
    except ForkServerError as exc:
        # Its process died while preparing the job (or the template did): a failed attempt,
        # retried per policy. Unclaiming instead could claim and fail it again forever.
        # Recorded first: a process still waiting checks the store when its pipe closes.
        record_death(ctx, dataclasses.replace(job, pid=pid), f"it died before its start ({exc})",
                     relaunch=False)
        server.release(pid)
        raise ForkServerError(f"cannot start job {job.id}: {exc}") from exc
    return ForkedProcess(pid)


def _on_exit(launching_ctx: Context, job_id: int, attempt: int, proc: subprocess.Popen[bytes]) -> None:
    """In the reaper thread: a launched job's process ended; record its death if it did not."""
    ctx = dataclasses.replace(launching_ctx)  # this thread's own store connection
    try:
        job = ctx.store.get(job_id)
        if job is not None and job.owned and job.attempts == attempt and job.pid == proc.pid:
            record_death(ctx, job, procs.describe_exit(proc.returncode))
    finally:
        ctx.store.close()


def record_death(ctx: Context, job: JobRecord, how: str, *, relaunch: bool = True) -> bool:
    """The job's process is gone without recording an end: a failed attempt, retried per policy.

    A job that was waiting between attempts in that process (``retrying``, its
    last attempt already recorded) is only released to the workers. True if
    this call changed the job.
    """
    if job.status == JobStatus.RETRYING:
        released = ctx.store.release(job.id, job.attempts)
        if released and relaunch and ctx.autostart:
            start_soon(ctx, job.id, due=job.run_at <= time.time(), queue=job.queue)
        return released
    log = ctx.log.bind(job_id=str(job.id), target=job.target, method=job.method)
    decision = settle_attempt(ctx.store, log, job, job.attempts, Outcome.crashed(how),
                              policy_of(lambda: ctx.config, job), release=True, pid=job.pid)
    if isinstance(decision, Retry) and relaunch and ctx.autostart:
        start_soon(ctx, job.id, due=decision.delay <= 0, queue=job.queue)
    return decision is not None


def recover_expired_leases(ctx: Context, me: str, *, timeout: float) -> list[int]:
    """Give up the jobs no process has renewed the lease of for ``timeout`` s; their ids.

    A lease is renewed by the job's own process (whatever started it: a worker,
    an auto-starting caller, a foreground ``run_job.py``) on the store's clock, so
    a dead host is noticed whether or not a worker ran there, and a host whose
    clock is off is not. A claim never launched goes back to the queue; a job
    whose process stopped renewing is a failed attempt, retried per its policy.
    Jobs of this host whose process is still alive are left to `reconcile`
    (pid + start time are checked here, not guessed).
    """
    given_up = []
    now = ctx.store.clock()
    for job in ctx.store.expired_leases(timeout=timeout, now=now):
        if job.host == me and job.pid is not None and procs.is_alive(job.pid, job.pid_ctime):
            continue
        if job.pid is None:
            if ctx.store.unclaim(job.id, job.attempts):
                given_up.append(job.id)
            continue
        silent = now - (job.lease_at or job.claimed_at or 0.0)
        if record_death(ctx, job, f"lease expired: no sign of life from its process on {job.host}"
                        f" for {silent:.0f} s", relaunch=False):
            given_up.append(job.id)
    return given_up


def remove_stale_workers(ctx: Context, me: str, *, timeout: float) -> list[WorkerRecord]:
    """Drop the rows of workers not seen for ``timeout`` s (on the store's clock); those rows.

    Their jobs need nothing here: each job's own lease says whether it still runs.
    """
    now = ctx.store.clock()
    stale = [w for w in ctx.store.workers() if w.id != me and now - w.last_seen > timeout]
    for worker in stale:
        ctx.store.remove_worker(worker.id)
    return stale


def live_workers(ctx: Context) -> list[dict[str, Any]]:
    """The workers seen within ``host_timeout`` (store clock), each with its running job ids."""
    timeout = ctx.config.runner.host_timeout
    now = ctx.store.clock()
    running: dict[str, list[str]] = {}
    for job in ctx.store.active():
        if job.worker is not None:
            running.setdefault(job.worker, []).append(str(job.id))
    return [{"id": w.id, "host": w.host, "pid": w.pid,
             "queues": list(w.queues) if w.queues is not None else None,
             "concurrency": w.concurrency, "running": sorted(running.get(w.id, []), key=int),
             "started_at": iso(w.started_at), "last_heartbeat": iso(w.last_seen),
             "seen_ago": round(max(0.0, now - w.last_seen), 3)}
            for w in ctx.store.workers() if now - w.last_seen <= timeout]


def worker_id(host: str, pid: int) -> str:
    """A worker's id in the store: its host id and pid (unique among the live workers of a host)."""
    return f"{host}:{pid}"


def _claimer_alive(job: JobRecord, host: str) -> bool:
    """True if the job was claimed by a worker of this host that still runs (it is about to launch it)."""
    if job.worker is None:
        return False
    claimer_host, _, pid = job.worker.rpartition(":")
    return (claimer_host == host and pid.isdigit() and int(pid) != os.getpid()
            and procs.is_alive(int(pid), None))


def reconcile(ctx: Context, jobs: Iterable[JobRecord] | None = None) -> int:
    """Make the store agree with the OS: dead processes are failed attempts, stale claims go back.

    Only processes on this host can be checked. A zombie counts as dead.
    """
    me = host_id()
    changed = 0
    now = time.time()
    for job in (ctx.store.active() if jobs is None else jobs):
        if not job.owned or (job.host is not None and job.host != me):
            continue
        if job.pid is None:
            if (job.claimed_at is not None and now - job.claimed_at > LAUNCH_GRACE
                    and not _claimer_alive(job, me)):
                changed += ctx.store.unclaim(job.id, job.attempts)
            continue
        if procs.is_alive(job.pid, job.pid_ctime):
            continue
        current = ctx.store.get(job.id)
        if current is not None and current.owned and current.attempts == job.attempts:
            changed += record_death(ctx, current, f"process {job.pid} is gone")
    return changed


def find(ctx: Context, job_id: int | str) -> JobRecord:
    """The job as the store has it; reading never acts (no reconcile, no relaunch)."""
    jid = parse_id(job_id)
    job = ctx.store.get(jid)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    return job


def get(ctx: Context, job_id: int | str) -> JobRecord:
    """The job, after checking that a running one really is running (may record its death)."""
    jid = parse_id(job_id)
    job = ctx.store.get(jid)
    if job is None:
        raise JobNotFound(f"no job {job_id}")
    if job.owned and reconcile(ctx, [job]):
        job = ctx.store.get(jid) or job
    return job


def parse_id(job_id: int | str) -> int:
    try:
        value = int(job_id)
    except (TypeError, ValueError):
        raise JobNotFound(f"no job {job_id!r}: ids are whole numbers") from None
    if value <= 0 or value > bounds.INT_MAX:
        raise JobNotFound(f"no job {job_id!r}")
    return value


def cancel(ctx: Context, job_id: int | str, *, reason: str = "cancelled by request",
           wait: bool = True, actor: str | None = None) -> bool:
    """Cancel a pending, retrying or running job. True if this call cancelled it.

    The status becomes ``cancelled`` first (final: the dying job cannot
    overwrite it), then the job's process tree gets SIGTERM and, after
    ``cancel_grace``, SIGKILL. A pid whose start time differs from the
    recorded one is never signalled.
    """
    jid = parse_id(job_id)
    before = ctx.store.cancel(jid, now=time.time())
    if before is None:
        return False
    ctx.log.emit("job_cancelled", job_id=str(jid), target=before.target, method=before.method,
                 attempt=before.tries, reason=reason, was=before.status)
    if actor is not None:
        ctx.store.add_audit(actor=actor, action="cancel", job_id=jid, detail=reason, address=None,
                            now=time.time())
    if before.pid is not None and (before.host is None or before.host == host_id()):
        stop_process(ctx, before, wait=wait)
    return True


def stop_process(ctx: Context, job: JobRecord, *, wait: bool = True) -> bool:
    """SIGTERM the job's tree, SIGKILL what is left after the grace (in a thread if not waiting).

    Only a process that proves it is this job's (`procs.is_job_process`) is
    signalled; False when there was none to signal.
    """
    if not procs.is_job_process(job.pid, job.pid_ctime, job.id):
        return False
    args = (job.pid, job.pid_ctime, job.id)
    kwargs: dict[str, Any] = {"grace": ctx.config.runner.cancel_grace,
                              "root_extra": procs.SUPERVISOR_EXTRA_GRACE}
    if wait:
        procs.stop_job_tree(*args, **kwargs)
        return True
    import threading

    threading.Thread(target=procs.stop_job_tree, args=args, kwargs=kwargs, daemon=True).start()
    return True


def wait_for(ctx: Context, job_id: int | str, timeout: float | None = None,
             poll: float = 0.05) -> JobRecord:
    """Block until the job is completed, failed or cancelled."""
    from bgrunner.errors import WaitTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    checked = 0.0
    while True:
        job = ctx.store.get(parse_id(job_id))
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        if job.is_final:
            return job
        if time.monotonic() - checked > 1.0:  # dead processes are noticed while waiting
            checked = time.monotonic()
            get(ctx, job_id)
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s")
        time.sleep(poll)


def submit_followups(ctx: Context, job: JobRecord) -> list[int]:
    """Queue the jobs chained after a completed one."""
    ids = []
    for item in job.then:
        try:
            new = prepare(ctx, item["target"], item.get("method", "handle"), item.get("params"),
                          parent_id=job.id)
            ids.append(submit(ctx, new))
        except Exception as exc:  # the parent completed; a follow-up that cannot start is logged
            ctx.log.emit("job_rejected", level="error", job_id=None, target=item.get("target"),
                         method=item.get("method"), reason=f"follow-up of job {job.id}: {exc}")
    return ids


#: Audit entries are kept this long (the dashboard's and the API's record of who did what).
AUDIT_RETENTION = 90 * 86400.0


def prune(ctx: Context, *, finished_before: float, audit_before: float | None = None) -> int:
    """Delete final jobs finished before a time, their output files, and audit entries past retention."""
    from bgrunner.output import output_path

    gone = ctx.store.prune(finished_before=finished_before)
    for job_id in gone:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(output_path(ctx.output_dir, job_id))
    ctx.store.prune_audit(before=time.time() - AUDIT_RETENTION if audit_before is None else audit_before)
    return len(gone)


def retry(ctx: Context, job_id: int | str) -> int:
    """A new job with the same target and params as a failed or cancelled one, linked to it."""
    old = get(ctx, job_id)
    if old.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise UsageError(f"job {old.id} is {old.status}; only failed or cancelled jobs are retried")
    new = prepare(ctx, old.target, old.method, old.params, priority=old.priority,
                  max_attempts=old.max_attempts, retry_delay=old.retry_delay,
                  timeout=old.timeout, then=old.then, retry_of=old.id, queue=old.queue)
    return submit(ctx, new)

