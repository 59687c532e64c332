"""The ASGI application: routes, middleware, templates and error pages.

``create_app(ctx, token=..., settings=...)`` is all a server (or a test, or the
benchmark) needs. Middleware, outermost first: security headers on every
response; the Host check and the client's address through trusted proxies
(``network``); the body size limit (``limits``); then the gate (login, role,
CSRF) in front of every route but ``/login`` and ``/static/``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bgrunner.context import Context
from bgrunner.dashboard.auth import Auth, Gate, Identity, is_machine
from bgrunner.dashboard.limits import AttemptLimiter, BodyLimit
from bgrunner.dashboard.network import ClientInfo, SecurityHeaders
from bgrunner.dashboard.settings import Settings
from bgrunner.dashboard.state import Dashboard
from bgrunner.dashboard.views import actions, api, events, logs, pages, production
from bgrunner.dashboard.views.actions import WrongState
from bgrunner.dashboard.views.common import audit, render
from bgrunner.errors import (
    ConfigError,
    JobError,
    JobNotFound,
    NotAllowedError,
    StoreError,
    UsageError,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def routes() -> list[Route | Mount]:
    """Every route. All but ``/login`` and ``/static`` sit behind the gate."""
    return [
        Route("/login", pages.login, methods=["GET", "POST"], name="login"),
        Route("/logout", pages.logout, methods=["POST"], name="logout"),
        Route("/", pages.overview, name="overview"),
        Route("/jobs", pages.job_list, name="jobs"),
        Route("/jobs/{job_id}", pages.job_detail, name="job"),
        Route("/jobs/{job_id}/stream", events.job_events, name="job_stream"),
        Route("/jobs/{job_id}/cancel", actions.cancel, methods=["POST"], name="cancel"),
        Route("/jobs/{job_id}/retry", actions.retry, methods=["POST"], name="retry"),
        Route("/bulk-cancel", actions.bulk_cancel, methods=["POST"], name="bulk_cancel"),
        Route("/events", events.list_events, name="events"),
        Route("/logs", logs.logs_page, name="logs"),
        Route("/logs/stream", logs.log_events, name="logs_stream"),
        Route("/allowed", pages.allowed, name="allowed"),
        Route("/dispatch/{target}/{method}", actions.dispatch_page, methods=["GET", "POST"],
              name="dispatch"),
        Route("/audit", pages.audit_page, name="audit"),
        Route("/schedules", production.schedules_page, name="schedules"),
        Route("/schedules/{name}/run", production.run_action, methods=["POST"], name="schedule_run"),
        Route("/schedules/{name}/pause", production.pause_action, methods=["POST"],
              name="schedule_pause"),
        Route("/schedules/{name}/resume", production.resume_action, methods=["POST"],
              name="schedule_resume"),
        Route("/workers", production.workers_page, name="workers"),
        Route("/metrics", api.metrics, name="metrics"),
        Route("/api/openapi.json", api.openapi, name="openapi"),
        Route("/api/jobs", api.jobs_collection, methods=["GET", "POST"], name="api_jobs"),
        Route("/api/jobs/{job_id}", api.get_job, name="api_job"),
        Route("/api/jobs/{job_id}/cancel", api.cancel_job, methods=["POST"], name="api_cancel"),
        Route("/api/jobs/{job_id}/retry", api.retry_job, methods=["POST"], name="api_retry"),
        Route("/api/logs", logs.api_logs, name="api_logs"),
        Route("/api/workers", api.list_workers, name="api_workers"),
        Route("/api/schedules", api.list_schedules, name="api_schedules"),
        Route("/api/schedules/{name}/run", api.run_schedule, methods=["POST"], name="api_schedule_run"),
        Route("/api/schedules/{name}/pause", api.pause_schedule, methods=["POST"],
              name="api_schedule_pause"),
        Route("/api/schedules/{name}/resume", api.resume_schedule, methods=["POST"],
              name="api_schedule_resume"),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]


def create_app(ctx: Context, *, token: str, readonly_token: str | None = None,
               settings: Settings | None = None,
               login_limiter: AttemptLimiter | None = None) -> Starlette:
    """The dashboard over ``ctx``'s store; ``token`` logs in as admin, ``readonly_token`` to look.

    ``settings`` default to the safe ones: loopback Host names only, no trusted proxy.
    """
    settings = settings or Settings()
    auth = Auth(token, readonly_token, login_limiter)
    try:  # loaded once here, shared by every thread's context
        ctx.config  # noqa: B018
        ctx.log  # noqa: B018
    except JobError:
        pass  # a broken allowlist shows on the pages that need it
    dash = Dashboard(ctx)
    dash.templates = templates()

    async def on_denied(actor: str, address: str, action: str, detail: str) -> None:
        await dash.run(audit, actor, address, action, None, detail)

    async def revoked(who: Identity) -> bool:
        return await dash.run(lambda c: auth.revoked(c.store, who))

    app = Starlette(
        routes=routes(),
        middleware=[Middleware(SecurityHeaders), Middleware(ClientInfo, settings=settings),
                    Middleware(BodyLimit), Middleware(Gate, auth=auth, on_denied=on_denied,
                                                      revoked=revoked)],
        exception_handlers={JobError: job_error, HTTPException: http_error,
                            Exception: server_error},
    )
    app.state.dashboard = dash
    app.state.auth = auth
    app.state.settings = settings
    return app


# -- templates ------------------------------------------------------------------------
def when(ts: float | None) -> str:
    """An epoch time as the pages show it (UTC)."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_when(text: str | None) -> str:
    """An ISO 8601 UTC time from a record (``2026-01-02T03:04:05.6Z``) as the pages show times."""
    if not text:
        return "—"
    try:
        return when(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return text


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def pretty(value: Any) -> str:
    """JSON for people (the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, iso_when=iso_when, duration=duration, size=size, pretty=pretty,
                       compact=compact)
    env.globals.update(dispatch_url=actions.dispatch_url)
    return env


# -- errors ------------------------------------------------------------------------------
def _status_of(exc: JobError) -> int:
    if isinstance(exc, JobNotFound):
        return 404
    if isinstance(exc, NotAllowedError):
        return 403
    if isinstance(exc, StoreError | ConfigError):
        return 503
    if isinstance(exc, WrongState):
        return 409
    if isinstance(exc, UsageError):
        return 400
    return 400


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if is_machine(request.url.path):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", status, title=title, message=message)


async def job_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobError)
    status = _status_of(exc)
    titles = {404: "Not found", 403: "Not allowed", 409: "Not now", 503: "Unavailable"}
    return _error_page(request, status, titles.get(status, "Cannot do that"), str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = getattr(exc, "headers", None)
    response = _error_page(request, exc.status_code, exc.detail, exc.detail)
    if headers:
        response.headers.update(headers)
    return response


async def server_error(request: Request, exc: Exception) -> Response:
    import traceback

    traceback.print_exception(exc)
    return _error_page(request, 500, "Internal error", "internal error (see the server's log)")
