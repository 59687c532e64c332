"""Progress reports from inside a job: ``bgrunner.progress(done, total=None, message=None)``.

Inside an attempt the report goes over the pipe to the supervising process,
which stores it (throttled); in an inline job (no attempt process) it goes to
the job's own supervisor object. Outside a job it does nothing, so job code can
be called directly in tests.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgrunner.store.base import Store

#: Set by the attempt process to the pipe of its supervisor.
_channel_fd: int | None = None
#: Set by an inline job's supervisor: takes the report itself.
_sink: Callable[[dict[str, Any]], None] | None = None
_cancel_checked_at = 0.0
_cancel_seen = False


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report how far the job is. Cheap: one small write to a pipe."""
    if _sink is None and _channel_fd is None:
        return
    report = clean_report(done, total, message)
    if _sink is not None:
        _sink(report)
        return
    assert _channel_fd is not None
    try:
        os.write(_channel_fd, (json.dumps({"type": "progress", **report}, allow_nan=False)
                               + "\n").encode())
    except OSError:
        pass


def clean_report(done: Any, total: Any, message: Any) -> dict[str, Any]:
    """A progress report as it may be stored: NaN and infinity as null, the message clipped
    to ``bounds.MAX_PROGRESS_MESSAGE_CHARS`` (CONTRACT §14). Applied where it is made and again
    where the supervisor reads it from the pipe (the job's process writes that pipe)."""
    from bgrunner import bounds  # here, not above: ``import bgrunner`` binds progress() eagerly

    text = None if message is None else bounds.clip(bounds.sanitize(str(message)),
                                                     bounds.MAX_PROGRESS_MESSAGE_CHARS)
    return {"done": bounds.sanitize(done), "total": bounds.sanitize(total), "message": text}


def cancel_requested() -> bool:
    """True once the running job has been cancelled: a job may poll it to stop cleanly.

    Reads the job store at most twice a second, over one connection kept for the
    process; outside a job it is always False.
    """
    global _cancel_checked_at, _cancel_seen
    job_id = os.environ.get("BGRUNNER_JOB_ID")
    if _cancel_seen or not job_id or (_channel_fd is None and _sink is None):
        return _cancel_seen
    now = time.monotonic()
    if now - _cancel_checked_at < 0.5:
        return False
    _cancel_checked_at = now
    job = _store().get(int(job_id))
    _cancel_seen = job is not None and job.status == "cancelled"
    return _cancel_seen


_opened: tuple[int, Store] | None = None  # (owner pid, store): a forked child opens its own


def _store() -> Store:
    """This process's store for cancel checks, opened on first use from ``BGRUNNER_DATABASE_URL``."""
    global _opened
    if _opened is None or _opened[0] != os.getpid():
        from bgrunner.store.factory import open_store

        _opened = (os.getpid(), open_store())
    return _opened[1]
