"""The JSON API under ``/api/`` (schema at ``/api/openapi.json``) and ``/metrics``.

Records are exactly ``JobRecord.to_dict()``, the fields of ``bgrunner status
--json``. Errors are ``{"error": message}``: 400 for bad input, 403 for a
target or method outside the allowlist (or the read-only token acting), 404
for an unknown job. Ids in answers are strings, as everywhere in bgrunner.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bgrunner import jobs, schedules
from bgrunner.bounds import loads
from bgrunner.context import Context
from bgrunner.dashboard import metrics as prometheus
from bgrunner.dashboard.forms import check_policy
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.dashboard.openapi import MAX_LIMIT, schema
from bgrunner.dashboard.views import production
from bgrunner.dashboard.views.actions import cancel_one, refused, retry_one, submit_checked
from bgrunner.dashboard.views.common import (
    actor_and_address,
    audit,
    dashboard,
    job_id_of,
    parse_filters,
)
from bgrunner.errors import NotAllowedError, UsageError


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def openapi(request: Request) -> Response:
    return JSONResponse(schema())


async def jobs_collection(request: Request) -> Response:
    """GET lists, POST dispatches."""
    if request.method == "POST":
        return await dispatch_job(request)
    return await list_jobs(request)


async def list_jobs(request: Request) -> Response:
    params = request.query_params
    filters = parse_filters(params, search_key="search")
    limit = ascii_int(params.get("limit", "50"), lo=1, hi=MAX_LIMIT)
    if limit is None:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT}")

    def fetch(ctx: Context) -> list[Any]:
        return ctx.store.list(status=filters.status, target=filters.target,
                              search=filters.search, before_id=filters.before_id,
                              queue=filters.queue, limit=limit)

    rows = await dashboard(request).run(fetch)
    following = str(rows[-1].id) if rows and len(rows) == limit else None
    return JSONResponse({"jobs": [job.to_dict() for job in rows], "next_before_id": following})


async def get_job(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    job = await dashboard(request).run(jobs.find, job_id)  # reading never acts
    return JSONResponse(job.to_dict())


async def cancel_job(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    who, address = actor_and_address(request)
    done = await dashboard(request).run(cancel_one, who, address, job_id)
    return JSONResponse({"cancelled": done})


async def retry_job(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    who, address = actor_and_address(request)
    new_id = await dashboard(request).run(retry_one, who, address, job_id)
    return JSONResponse({"id": str(new_id)}, status_code=201)


def _problem(body: Any) -> str | None:
    """What is wrong with a dispatch body's shape and policy, before the allowlist is asked."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    target, method = body.get("target"), body.get("method", "handle")
    priority, delay = body.get("priority", 0), body.get("delay", 0)
    if not isinstance(target, str) or not isinstance(method, str):
        return "target and method must be strings"
    if isinstance(priority, bool) or not isinstance(priority, int):
        return "priority must be an integer"
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        return "delay must be a number of seconds >= 0"
    for key in ("queue", "unique_key"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    try:
        check_policy("priority", priority)
        check_policy("delay", delay)
    except ValueError as exc:
        return str(exc)
    return None


async def dispatch_job(request: Request) -> Response:
    dash = dashboard(request)
    who, address = actor_and_address(request)
    try:
        body = loads(await request.body(), what="the body")
        problem = _problem(body)
    except UsageError as exc:
        body, problem = None, str(exc)
    if problem is not None:
        await dash.run(audit, who, address, "dispatch_refused", None, problem)
        return error(problem, 400)
    target, method = body["target"], body.get("method", "handle")
    params, priority, delay = body.get("params"), body.get("priority", 0), body.get("delay", 0)

    def submit(ctx: Context) -> int:
        try:
            info = dash.method(ctx, target, method)  # import the allowed class: params get bound
        except NotAllowedError as exc:
            refused(ctx, who, address, "dispatch", None, f"{target}.{method}: {exc}")
            raise
        return submit_checked(ctx, who, address, info, target, method, params, priority, delay,
                              queue=body.get("queue"), unique_key=body.get("unique_key"))

    try:
        job_id = await dash.run(submit)
    except NotAllowedError as exc:
        return error(str(exc), 403)
    return JSONResponse({"id": str(job_id)}, status_code=201)


# -- workers and schedules ----------------------------------------------------------------
async def list_workers(request: Request) -> Response:
    """The live workers, as ``bgrunner workers --json`` prints them."""
    return JSONResponse({"workers": await dashboard(request).run(production.worker_rows)})


async def list_schedules(request: Request) -> Response:
    """The configured schedules, as ``bgrunner schedules --json`` prints them."""
    rows = await dashboard(request).run(schedules.listing)
    for row in rows:  # ids are strings in every answer
        if row.get("last_run") and row["last_run"].get("job_id") is not None:
            row["last_run"] = {**row["last_run"], "job_id": str(row["last_run"]["job_id"])}
    return JSONResponse({"schedules": rows})


async def run_schedule(request: Request) -> Response:
    name = production.schedule_name_of(request.path_params["name"])
    who, address = actor_and_address(request)
    job_id = await dashboard(request).run(production.run_schedule, who, address, name)
    return JSONResponse({"id": str(job_id)}, status_code=201)


async def _pause(request: Request, paused: bool) -> Response:
    name = production.schedule_name_of(request.path_params["name"])
    who, address = actor_and_address(request)
    changed = await dashboard(request).run(production.pause_schedule, who, address, name, paused)
    return JSONResponse({"name": name, "paused": paused, "changed": changed})


async def pause_schedule(request: Request) -> Response:
    return await _pause(request, True)


async def resume_schedule(request: Request) -> Response:
    return await _pause(request, False)


async def metrics(request: Request) -> Response:
    dash = dashboard(request)
    body = await dash.run(lambda ctx: prometheus.render(dash.ctx))
    return Response(body, media_type=prometheus.CONTENT_TYPE_LATEST)
