"""Named operations on schedules (CONTRACT §11): fire what is due, list, run now, pause, resume.

The operations layer beside ``jobs.py``: the worker calls :func:`tick`, the CLI
and the dashboard the rest. *When* occurrences fall is :mod:`bgrunner.cron`'s
business (pure); *that each fires once* is the store's: ``fire_schedule`` moves a
schedule's ``next_at`` from the occurrence it saw to the next one in one
compare-and-set, so however many workers on however many hosts tick at once, one
of them records the run and the others see they lost. Times are the store's
clock, never a host's, so hosts whose clocks disagree still agree on what is due.

Catch-up: a schedule whose ``next_at`` is long past (no worker ran) fires once,
for the latest occurrence at or before now, and goes on from the next one. A
changed ``cron``/``every``/``timezone`` restarts the sequence (``cron.spec_key``),
a resume starts from the next occurrence: neither fires what was missed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bgrunner import cron
from bgrunner.errors import JobNotFound
from bgrunner.model import NewJob, ScheduleState, iso

if TYPE_CHECKING:
    from bgrunner.allowlist import ScheduleSpec
    from bgrunner.context import Context
    from bgrunner.eventlog import EventLog


def when(spec: ScheduleSpec) -> dict[str, Any]:
    """The keyword arguments that say when ``spec`` fires, for the functions of :mod:`bgrunner.cron`."""
    return {"cron": spec.cron, "every": spec.every, "timezone": spec.timezone}


def tick(ctx: Context, *, queues: Sequence[str] | None, log: EventLog) -> float | None:
    """Fire the due occurrences of the schedules whose queue this worker serves (None: every queue).

    Returns the seconds until the next occurrence of an enabled, unpaused one
    (what the worker may sleep), or None when there is none. A schedule whose
    run cannot be built (its target refuses the params, say) is skipped for that
    occurrence and logged; store errors are the caller's to handle.
    """
    config = ctx.config
    earliest: float | None = None
    now = ctx.store.clock()
    for spec in config.schedules.values():
        if queues is not None and spec.policy.queue not in queues:
            continue
        timing = when(spec)
        upcoming = cron.next_after(now, **timing)
        state = ctx.store.sync_schedule(spec.name, spec=cron.spec_key(**timing), next_at=upcoming)
        if state.paused or state.next_at is None:
            continue
        if state.next_at > now:
            if spec.enabled:
                earliest = state.next_at if earliest is None else min(earliest, state.next_at)
            continue
        _fire(ctx, log, spec, state.next_at, now, upcoming)
        if spec.enabled:
            earliest = upcoming if earliest is None else min(earliest, upcoming)
    return None if earliest is None else max(0.0, earliest - now)


def _fire(ctx: Context, log: EventLog, spec: ScheduleSpec, due: float, now: float, upcoming: float) -> None:
    """Fire one due schedule (or, disabled, only move it on): the occurrence is the latest <= now."""
    occurrence = cron.latest_at_or_before(now, **when(spec))
    if occurrence is None or occurrence < due:
        occurrence = due
    job: NewJob | None = None
    problem: str | None = None
    if spec.enabled:
        try:
            job = build(ctx, spec, scheduled_for=occurrence)
        except Exception as exc:  # the occurrence is used up all the same, not retried each tick
            problem = f"cannot queue a run: {exc}"
    result = ctx.store.fire_schedule(spec.name, due=due, next_at=upcoming, job=job,
                                     skip_if_running=spec.overlap == "skip")
    if result.job_id is not None and job is not None:
        log.emit("job_queued", job_id=str(result.job_id), target=job.target, method=job.method,
                 attempt=0, priority=job.priority, run_at=job.run_at, queue=job.queue,
                 schedule=spec.name)
        log.emit("schedule_fired", job_id=str(result.job_id), target=job.target, method=job.method,
                 schedule=spec.name, scheduled_for=iso(occurrence))
        from bgrunner.launch.wakeup import notify

        notify(ctx)  # every worker of the queue, not only this one, may claim it now
    elif result.skipped is not None:
        if problem is not None:
            log.emit("schedule_skipped", level="error", target=spec.target, method=spec.method,
                     schedule=spec.name, reason=problem, scheduled_for=iso(occurrence))
        elif job is not None:  # overlap = "skip": the previous run is still going
            log.emit("schedule_skipped", target=spec.target, method=spec.method, schedule=spec.name,
                     reason=result.skipped, scheduled_for=iso(occurrence))
        else:  # disabled: moved on quietly (a line per occurrence would only be noise)
            log.emit("schedule_skipped", level="debug", target=spec.target, method=spec.method,
                     schedule=spec.name, reason="disabled", scheduled_for=iso(occurrence))
    # else: another worker fired this occurrence first (or it was paused meanwhile): nothing to do


def build(ctx: Context, spec: ScheduleSpec, *, scheduled_for: float) -> NewJob:
    """The run of ``spec`` for one occurrence: an ordinary job, checked like any submit."""
    from bgrunner import jobs

    policy = spec.policy
    new = jobs.prepare(ctx, spec.target, spec.method, spec.params, priority=spec.priority,
                       max_attempts=policy.max_attempts, retry_delay=policy.retry_delay,
                       timeout=policy.timeout, queue=policy.queue)
    return dataclasses.replace(new, schedule=spec.name, scheduled_for=scheduled_for)


# -- for the CLI and the dashboard ---------------------------------------------------------


def find(ctx: Context, name: str) -> ScheduleSpec:
    """The configured schedule ``name``, else JobNotFound (exit 1)."""
    spec = ctx.config.schedules.get(name) if isinstance(name, str) else None
    if spec is None:
        raise JobNotFound(f"no schedule {str(name)[:80]!r}")
    return spec


def listing(ctx: Context) -> list[dict[str, Any]]:
    """Every configured schedule with what the store knows of it, by name.

    ``next_run`` is None while paused or disabled; for a schedule no worker has
    synced yet (or whose timing changed since) it is the next occurrence from now.
    ``last_run`` is ``{"job_id", "status", "scheduled_for"}`` (status None once pruned) or None.
    """
    states = {state.name: state for state in ctx.store.schedules()}
    now = ctx.store.clock()
    rows = []
    for name in sorted(ctx.config.schedules):
        spec = ctx.config.schedules[name]
        state = states.get(name)
        rows.append({
            "name": name, "target": spec.target, "method": spec.method,
            "cron": spec.cron, "every": spec.every, "timezone": spec.timezone,
            "when": cron.describe(**when(spec)), "queue": spec.policy.queue,
            "overlap": spec.overlap, "priority": spec.priority,
            "next_run": iso(_next_run(spec, state, now)),
            "last_run": _last_run(ctx, state),
            "paused": bool(state is not None and state.paused), "enabled": spec.enabled,
        })
    return rows


def _next_run(spec: ScheduleSpec, state: ScheduleState | None, now: float) -> float | None:
    if not spec.enabled or (state is not None and state.paused):
        return None
    timing = when(spec)
    if state is not None and state.next_at is not None and state.spec == cron.spec_key(**timing):
        return state.next_at  # may be past: it fires when a worker of its queue next looks
    return cron.next_after(now, **timing)


def _last_run(ctx: Context, state: ScheduleState | None) -> dict[str, Any] | None:
    if state is None or state.last_job_id is None:
        return None
    job = ctx.store.get(state.last_job_id)
    return {"job_id": str(state.last_job_id), "status": None if job is None else str(job.status),
            "scheduled_for": iso(state.last_at)}


def run_now(ctx: Context, name: str, *, actor: str | None = None) -> int:
    """Queue one run of the schedule now, whatever its timing, pause or overlap; its job id.

    The schedule's sequence goes on unchanged; the run becomes its last run (so
    ``overlap = "skip"`` waits for it too).
    """
    spec = find(ctx, name)
    from bgrunner import jobs

    new = build(ctx, spec, scheduled_for=ctx.store.clock())
    job_id = ctx.store.run_schedule_now(spec.name, new)
    ctx.log.emit("schedule_fired", job_id=str(job_id), target=new.target, method=new.method,
                 schedule=spec.name, scheduled_for=iso(new.scheduled_for), manual=True)
    if actor is not None:
        ctx.store.add_audit(actor=actor, action="schedule_run", job_id=job_id, detail=spec.name,
                            address=None, now=time.time())
    jobs.queued(ctx, job_id, new)  # logged as queued, then started or a worker woken, like a submit
    return job_id


def pause(ctx: Context, name: str, *, actor: str | None = None) -> bool:
    """Stop firing the schedule, on every host (kept in the store). True if it was running."""
    spec = find(ctx, name)
    changed = ctx.store.pause_schedule(spec.name, paused=True)
    _note(ctx, spec, "paused", changed, actor)
    return changed


def resume(ctx: Context, name: str, *, actor: str | None = None) -> bool:
    """Fire the schedule again, from its next occurrence (what was missed while paused is not fired)."""
    spec = find(ctx, name)
    upcoming = cron.next_after(ctx.store.clock(), **when(spec))
    changed = ctx.store.pause_schedule(spec.name, paused=False, next_at=upcoming)
    _note(ctx, spec, "resumed", changed, actor)
    return changed


def _note(ctx: Context, spec: ScheduleSpec, done: str, changed: bool, actor: str | None) -> None:
    """Log (``schedule_paused`` / ``schedule_resumed``) and audit (``schedule_pause`` / ``schedule_resume``)."""
    ctx.log.emit(f"schedule_{done}", target=spec.target, method=spec.method, schedule=spec.name,
                 changed=changed)
    if actor is not None:
        ctx.store.add_audit(actor=actor, action=f"schedule_{done.removesuffix('d')}", job_id=None,
                            detail=spec.name if changed else f"{spec.name} (already {done})",
                            address=None, now=time.time())
