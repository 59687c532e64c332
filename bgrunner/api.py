"""The Python API (CONTRACT §4): ``run_background_job``, ``get_job``, ``cancel_job``, ``wait_for``.

Settings come from the ``BGRUNNER_*`` environment (resolved once per process;
``configure()`` sets them in code). The call checks the allowlist and the
params in the caller and records nothing when they are wrong.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bgrunner import bounds, jobs
from bgrunner.context import Context
from bgrunner.errors import JobNotFound

_context: Context | None = None
_context_pid = -1


def configure(config: str | None = None, log_dir: str | None = None,
              database_url: str | None = None, autostart: bool | None = None) -> Context:
    """Set where the allowlist, logs and store are for this process (instead of the env)."""
    global _context, _context_pid
    ctx = Context.resolve(config, log_dir, database_url)
    if autostart is not None:
        ctx.autostart = autostart
    _context, _context_pid = ctx, os.getpid()
    return ctx


def context() -> Context:
    """This process's context; a forked child resolves its own (no connection crosses fork)."""
    if _context is None or _context_pid != os.getpid():
        return configure()
    return _context


def run_background_job(target: str | type, method: str = "handle",
                       params: Sequence[Any] | dict[str, Any] | None = None, *,
                       priority: int = 0, delay: float = 0, max_attempts: int | None = None,
                       retry_delay: float | None = None, timeout: float | None = None,
                       then: Sequence[Any] | None = None, queue: str | None = None,
                       unique_key: str | None = None) -> str:
    """Record a job durably and return its id at once; with autostart, it starts by itself.

    ``queue``: the queue it waits in (default: its target's). ``unique_key``: while an
    active job holds the key, nothing new is recorded and that job's id is returned.

    Raises a ``bgrunner.JobError`` subclass (nothing recorded) when the target
    or method is not allowed, or the params are not JSON-serialisable or do
    not fit the method.
    """
    ctx = context()
    new = jobs.prepare(ctx, target, method, params, priority=priority, delay=delay,
                       max_attempts=max_attempts, retry_delay=retry_delay, timeout=timeout,
                       then=then, queue=queue, unique_key=unique_key)
    return str(jobs.submit(ctx, new))


def get_job(job_id: str | int) -> dict[str, Any]:
    """The job's record (CONTRACT §4); a job whose process died is never shown as running."""
    return jobs.get(context(), job_id).to_dict()


def cancel_job(job_id: str | int) -> bool:
    """True if the job was pending, retrying or running and is now cancelled."""
    import getpass

    try:
        return jobs.cancel(context(), job_id, actor=f"python:{getpass.getuser()}")
    except JobNotFound:
        return False


def wait_for(job_id: str | int, timeout: float | None = None) -> dict[str, Any]:
    """Block until the job is completed, failed or cancelled; its record."""
    timeout = bounds.check_seconds(timeout, what="timeout", maximum=bounds.MAX_DELAY)
    return jobs.wait_for(context(), job_id, timeout).to_dict()


def list_jobs(status: str | None = None, limit: int = 50, queue: str | None = None) -> list[dict[str, Any]]:
    """Jobs newest first (of one queue, if given)."""
    bounds.check_int(limit, what="limit", minimum=1)
    if queue is not None:
        bounds.check_queue(queue)
    return [j.to_dict() for j in context().store.list(status=status, limit=limit, queue=queue)]
