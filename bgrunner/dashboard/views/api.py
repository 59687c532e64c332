"""The JSON API under ``/api/`` (schema at ``/api/openapi.json``) and ``/metrics``.

Records are exactly ``JobRecord.to_dict()``, the fields of ``bgrunner status
--json``. Errors are ``{"error": message}``: 400 for bad input, 403 for a
target or method outside the allowlist (or the read-only token acting), 404
for an unknown job. Ids in answers are strings, as everywhere in bgrunner.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bgrunner import jobs
from bgrunner.context import Context
from bgrunner.dashboard import metrics as prometheus
from bgrunner.dashboard.forms import check_policy
from bgrunner.dashboard.openapi import MAX_LIMIT, schema
from bgrunner.dashboard.views.actions import cancel_one, retry_one, submit_checked
from bgrunner.dashboard.views.common import (
    actor_and_address,
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
    raw_limit = params.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    limit = int(raw_limit)

    def fetch(ctx: Context) -> list[Any]:
        return ctx.store.list(status=filters.status, target=filters.target,
                              search=filters.search, before_id=filters.before_id, limit=limit)

    rows = await dashboard(request).run(fetch)
    following = str(rows[-1].id) if len(rows) == limit else None
    return JSONResponse({"jobs": [job.to_dict() for job in rows], "next_before_id": following})


async def get_job(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    job = await dashboard(request).run(jobs.get, job_id)
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


async def dispatch_job(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return error("the body must be a JSON object", 400)
    if not isinstance(body, dict):
        return error("the body must be a JSON object", 400)
    target, method = body.get("target"), body.get("method", "handle")
    params, priority, delay = body.get("params"), body.get("priority", 0), body.get("delay", 0)
    if not isinstance(target, str) or not isinstance(method, str):
        return error("target and method must be strings", 400)
    if isinstance(priority, bool) or not isinstance(priority, int):
        return error("priority must be an integer", 400)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        return error("delay must be a number of seconds >= 0", 400)
    try:
        check_policy("priority", priority)
        check_policy("delay", delay)
    except ValueError as exc:
        return error(str(exc), 400)
    dash = dashboard(request)
    who, address = actor_and_address(request)

    def submit(ctx: Context) -> int:
        info = dash.method(ctx, target, method)  # import the allowed class: params get bound
        return submit_checked(ctx, who, address, info, target, method, params, priority, delay)

    try:
        job_id = await dash.run(submit)
    except NotAllowedError as exc:
        return error(str(exc), 403)
    return JSONResponse({"id": str(job_id)}, status_code=201)


async def metrics(request: Request) -> Response:
    dash = dashboard(request)
    body = await dash.run(lambda ctx: prometheus.render(dash.ctx))
    return Response(body, media_type=prometheus.CONTENT_TYPE_LATEST)
