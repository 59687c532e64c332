"""What runs the jobs and when: the schedules (with run now, pause, resume) and the live workers.

Reads come from the operations layer (``schedules.listing``, ``jobs.live_workers``),
the same rows ``bgrunner schedules --json`` and ``bgrunner workers --json`` print.
The actions are audited here, with the caller's address, under the names the
CLI's audit uses (``schedule_run``, ``schedule_pause``, ``schedule_resume``); a
refused one as ``<action>_refused``. The gate has already refused the read-only
role and a missing CSRF token before any of this runs.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bgrunner import jobs, schedules
from bgrunner.context import Context
from bgrunner.dashboard.auth import Identity
from bgrunner.dashboard.views.common import actor_and_address, audit, dashboard, render
from bgrunner.errors import JobError, JobNotFound

#: What a schedule name may be (the allowlist's rule); anything else is no schedule.
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def schedule_name_of(text: str) -> str:
    """A schedule name from a URL; JobNotFound (404) for anything that cannot be one."""
    if not SCHEDULE_NAME.fullmatch(text):
        raise JobNotFound(f"no schedule {text[:80]!r}")
    return text


def _epoch(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def state_of(row: dict[str, Any]) -> str:
    """active, paused or disabled (disabled in the allowlist wins over a pause in the store)."""
    if not row.get("enabled", True):
        return "disabled"
    return "paused" if row.get("paused") else "active"


# -- reads --------------------------------------------------------------------------------
def schedule_rows(ctx: Context) -> list[dict[str, Any]]:
    """``schedules.listing`` with what the page adds: state, how late, whether a worker serves it."""
    rows = schedules.listing(ctx)
    now = ctx.store.clock()
    workers = jobs.live_workers(ctx)
    for row in rows:
        row["state"] = state_of(row)
        due = _epoch(row.get("next_run"))
        row["late"] = max(0.0, now - due) if due is not None and row["state"] == "active" else 0.0
        row["served"] = any(w["queues"] is None or row["queue"] in w["queues"] for w in workers)
    return rows


def worker_rows(ctx: Context) -> list[dict[str, Any]]:
    return jobs.live_workers(ctx)


async def schedules_page(request: Request) -> Response:
    rows = await dashboard(request).run(schedule_rows)
    return render(request, "schedules.html", schedules=rows)


async def workers_page(request: Request) -> Response:
    rows = await dashboard(request).run(worker_rows)
    return render(request, "workers.html", workers=rows)


# -- actions (shared with the JSON API) ----------------------------------------------------
def run_schedule(ctx: Context, who: Identity, address: str, name: str) -> int:
    """Queue one run of the schedule now; audited (``schedule_run``), a refusal too."""
    try:
        job_id = schedules.run_now(ctx, name)
    except JobNotFound:  # unknown: 404, nothing to audit (as for an unknown job)
        raise
    except JobError as exc:  # its target or params no longer pass the allowlist
        audit(ctx, who, address, "schedule_run_refused", None, f"{name}: {exc}")
        raise
    audit(ctx, who, address, "schedule_run", job_id, name)
    return job_id


def pause_schedule(ctx: Context, who: Identity, address: str, name: str, paused: bool) -> bool:
    """Pause (or resume) on every host; True if that changed it. Audited either way."""
    changed = (schedules.pause if paused else schedules.resume)(ctx, name)
    done = "paused" if paused else "resumed"
    audit(ctx, who, address, "schedule_pause" if paused else "schedule_resume", None,
          name if changed else f"{name} (already {done})")
    return changed


def _back(name: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/schedules?notice={notice}#schedule-{name}", status_code=303)


async def run_action(request: Request) -> Response:
    name = schedule_name_of(request.path_params["name"])
    who, address = actor_and_address(request)
    job_id = await dashboard(request).run(run_schedule, who, address, name)
    return RedirectResponse(f"/jobs/{job_id}?notice=schedule_run", status_code=303)


async def pause_action(request: Request) -> Response:
    name = schedule_name_of(request.path_params["name"])
    who, address = actor_and_address(request)
    changed = await dashboard(request).run(pause_schedule, who, address, name, True)
    return _back(name, "paused" if changed else "not_paused")


async def resume_action(request: Request) -> Response:
    name = schedule_name_of(request.path_params["name"])
    who, address = actor_and_address(request)
    changed = await dashboard(request).run(pause_schedule, who, address, name, False)
    return _back(name, "resumed" if changed else "not_resumed")
