"""The pages: login, overview, job list, job detail, allowed jobs, audit."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from bgrunner import jobs
from bgrunner.context import Context
from bgrunner.dashboard import charts
from bgrunner.dashboard.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Auth,
    client_address,
    cookie_options,
    identity,
    same,
)
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.dashboard.jobview import EVENT_MARGIN, ProcessWatch, job_events, read_output
from bgrunner.dashboard.openapi import MAX_ID
from bgrunner.dashboard.state import Dashboard, known_queues
from bgrunner.dashboard.views.common import (
    NOTICES,
    PAGE_SIZE,
    audit,
    dashboard,
    job_id_of,
    parse_filters,
    render,
)
from bgrunner.errors import JobError, UsageError
from bgrunner.model import CANCELLABLE, FINAL_STATUSES, STATUSES

#: The login form is a token and two hidden fields; anything bigger is refused.
LOGIN_FORM_BYTES = 16 * 1024
#: The longest ``next`` path a login redirects to (longer: the overview).
MAX_NEXT = 2000


def safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or ``/\\host``) may be redirected to."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or len(value) > MAX_NEXT:
        return "/"
    return value


# -- login -------------------------------------------------------------------------
def _login_page(request: Request, status: int = 200, error: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
    """The login form, with a fresh double-submit CSRF token (cookie + hidden field)."""
    dash = dashboard(request)
    token = secrets.token_urlsafe(24)
    html = dash.templates.get_template("login.html").render(
        request=request, who=None, csrf=token, error=error,
        next=safe_next(request.query_params.get("next")), path="/login",
        notice=NOTICES.get(request.query_params.get("notice", "")))
    response = HTMLResponse(html, status_code=status, headers=headers)
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/login", **cookie_options(request))
    return response


async def _small_form(request: Request, limit: int = LOGIN_FORM_BYTES) -> dict[str, str] | None:
    """The url-encoded login form, read with a size limit (anyone may post to /login)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def login(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    dash = dashboard(request)
    if request.method == "GET":
        cookie = request.cookies.get(SESSION_COOKIE)
        live = auth.session(cookie) if cookie else None
        if live is not None and not await dash.run(lambda ctx: auth.revoked(ctx.store, live)):
            return RedirectResponse(safe_next(request.query_params.get("next")), status_code=302)
        return _login_page(request)
    address = client_address(request)
    # Counted now, before anything is awaited: concurrent slow posts cannot all pass the check.
    wait = auth.limiter.attempt(address)
    if wait:
        return _login_page(request, 429, f"Too many login attempts. Try again in {max(1, round(wait))} s.",
                           {"Retry-After": str(max(1, round(wait)))})
    form = await _small_form(request)
    if form is None:
        return HTMLResponse("request body too large", status_code=413)
    given, expected = form.get("csrf_token", ""), request.cookies.get(LOGIN_COOKIE, "")
    if not given or not expected or not same(given, expected):
        await dash.run(audit, "anonymous", address, "denied", None,
                       "POST /login: missing or wrong CSRF token")
        return HTMLResponse("missing or wrong CSRF token: reload the login page", status_code=403)
    role = auth.role_of(form.get("token", ""))
    if role is None:
        await dash.run(audit, "anonymous", address, "login_failed")
        return _login_page(request, 401, "Wrong token.")
    auth.limiter.forgive(address)
    cookie_value, who = auth.new_session(role)
    await dash.run(audit, role, address, "login", None, who.actor)
    response = RedirectResponse(safe_next(form.get("next", "/")), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie_value, max_age=12 * 3600, path="/",
                        **cookie_options(request))
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    who = identity(request)
    await dashboard(request).run(lambda ctx: auth.revoke(ctx.store, who))
    await dashboard(request).run(audit, who.role, client_address(request), "logout", None,
                                 who.actor)
    response = RedirectResponse("/login?notice=logged_out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- overview ------------------------------------------------------------------------
def _overview(ctx: Context, dash: Dashboard) -> dict[str, Any]:
    now = time.time()
    finished = ctx.store.finished_since(now - 3600)
    seconds = [s for _t, s, st in finished if s is not None and st == "completed"]
    by_status = {status: 0 for status in ("completed", "failed", "cancelled")}
    for _t, _s, status in finished:
        by_status[status] = by_status.get(status, 0) + 1
    return {
        "counts": dash.counts(ctx),
        "hour": by_status,
        "p50": charts.percentile(seconds, 50),
        "p95": charts.percentile(seconds, 95),
        "throughput": charts.throughput(finished, now),
        "durations": charts.durations(finished, now),
        "running": ctx.store.list(status="running", limit=10),
        "failures": ctx.store.list(status="failed", limit=5),
    }


async def overview(request: Request) -> Response:
    dash = dashboard(request)
    data = await dash.run(_overview, dash)
    return render(request, "overview.html", statuses=STATUSES, **data)


# -- job list ----------------------------------------------------------------------------
async def job_list(request: Request) -> Response:
    dash = dashboard(request)
    try:
        filters = parse_filters(request.query_params)
    except UsageError as exc:
        return render(request, "error.html", 400, title="Bad filter", message=str(exc))

    def fetch(ctx: Context) -> tuple[list[Any], list[str], list[str]]:
        rows = ctx.store.list(status=filters.status, target=filters.target,
                              search=filters.search, before_id=filters.before_id,
                              queue=filters.queue, limit=PAGE_SIZE + 1)
        return rows, sorted(ctx.config.jobs), known_queues(ctx.config)

    rows, targets, queues = await dash.run(fetch)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(request, "jobs.html", jobs=rows, filters=filters, targets=targets,
                  queues=queues, statuses=STATUSES, next_before_id=rows[-1].id if more else None,
                  live=filters.before_id is None, cancellable=CANCELLABLE)


# -- job detail ----------------------------------------------------------------------------
def _limits(ctx: Context, target: str) -> dict[str, Any] | None:
    """The target's limits as the allowlist holds them now; None: it is no longer listed.

    A job keeps running under the limits of the allowlist the workers loaded, so
    this is what applies to its next claim, not necessarily to its past ones.
    """
    try:
        spec = ctx.config.jobs.get(target)
    except JobError:  # a broken allowlist: the page still shows the job
        return None
    if spec is None:
        return None
    policy = spec.policy
    return {"max_running": policy.max_running,
            "rate_limit": policy.rate_limit.text if policy.rate_limit else None,
            "memory_limit_mb": policy.memory_limit_mb, "cpu_limit_s": policy.cpu_limit_s}


def _detail(ctx: Context, job_id: int) -> dict[str, Any]:
    job = jobs.find(ctx, job_id)  # reading never acts: no reconcile, no relaunch
    output, offset, truncated = read_output(ctx.output_dir, job.id)
    process = ProcessWatch().sample(job.pid, job.pid_ctime) if job.owned else None
    return {
        "job": job,
        "limits": _limits(ctx, job.target),
        "attempts": ctx.store.attempts(job.id),
        "events": job_events(ctx.log_dir, job.id, since=job.created_at - EVENT_MARGIN,
                             until=(job.finished_at or time.time()) + EVENT_MARGIN),
        "output": output,
        "output_offset": offset,
        "output_truncated": truncated,
        "process": process,
    }


async def job_detail(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    data = await dashboard(request).run(_detail, job_id)
    return render(request, "job.html", cancellable=CANCELLABLE, final=FINAL_STATUSES, **data)


# -- allowed jobs ------------------------------------------------------------------------------
def _allowed(ctx: Context, dash: Dashboard) -> list[dict[str, Any]]:
    out = []
    for spec in dash.specs(ctx):
        methods = [dash.method(ctx, spec.target, m) for m in spec.methods]
        class_doc = next((m.class_doc for m in methods if m.class_doc), "")
        out.append({"spec": spec, "methods": methods, "class_doc": class_doc})
    return out


async def allowed(request: Request) -> Response:
    dash = dashboard(request)
    return render(request, "allowed.html", specs=await dash.run(_allowed, dash))


# -- audit ------------------------------------------------------------------------------------
async def audit_page(request: Request) -> Response:
    before_id = ascii_int(request.query_params.get("before_id"), lo=1, hi=MAX_ID)
    entries = await dashboard(request).run(
        lambda ctx: ctx.store.audit(limit=PAGE_SIZE + 1, before_id=before_id))
    more = len(entries) > PAGE_SIZE
    entries = entries[:PAGE_SIZE]
    return render(request, "audit.html", entries=entries,
                  next_before_id=entries[-1].id if more else None, paged=before_id is not None)
