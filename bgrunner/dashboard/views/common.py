"""Helpers every view uses: rendering, the shared state, ids and filters, the audit trail."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from bgrunner.bounds import check_queue
from bgrunner.context import Context
from bgrunner.dashboard.auth import Identity, client_address, identity
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.dashboard.openapi import MAX_ID
from bgrunner.dashboard.state import Dashboard
from bgrunner.errors import JobNotFound, UsageError
from bgrunner.model import STATUSES

PAGE_SIZE = 50
#: Longest filter text accepted (a search is a LIKE over params and errors).
MAX_FILTER = 200

#: Messages shown after an action, chosen by key: no text from the URL reaches the page.
NOTICES = {
    "cancelled": "Job cancelled.",
    "not_cancelled": "The job had already ended; nothing to cancel.",
    "retried": "Retry submitted: this is the new job.",
    "dispatched": "Job submitted.",
    "bulk": "Cancelled {n} job(s).",
    "logged_out": "Logged out.",
    "schedule_run": "Schedule run queued: this is its job.",
    "paused": "Schedule paused: no occurrence fires until it is resumed.",
    "not_paused": "The schedule was already paused.",
    "resumed": "Schedule resumed: it fires from its next occurrence on.",
    "not_resumed": "The schedule was not paused.",
}


def dashboard(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page from its template, with who is looking and their CSRF token at hand."""
    dash = dashboard(request)
    who: Identity | None = request.scope.get("state", {}).get("identity")
    notice = NOTICES.get(request.query_params.get("notice", ""))
    if notice and "{n}" in notice:
        notice = notice.format(n=ascii_int(request.query_params.get("n"), lo=0) or 0)
    html = dash.templates.get_template(name).render(
        request=request, who=who, csrf=(who.csrf if who else None) or "", path=request.url.path, notice=notice,
        **values)
    return HTMLResponse(html, status_code=status)


def job_id_of(text: str) -> int:
    """A job id from a URL (ASCII digits, 64-bit); JobNotFound for anything that cannot be one."""
    value = ascii_int(text, lo=1, hi=MAX_ID)
    if value is None:
        raise JobNotFound(f"no job {text[:40]!r}")
    return value


def clean(text: str | None, limit: int = 1000) -> str | None:
    """Text safe to store: lone surrogates replaced, length bounded."""
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8")[:limit]


def audit(ctx: Context, who: Identity | str, address: str, action: str,
          job_id: int | None = None, detail: str | None = None) -> None:
    """One line of the audit trail (runs in a worker thread)."""
    actor = who if isinstance(who, str) else who.actor
    ctx.store.add_audit(actor=actor, action=action, job_id=job_id, detail=clean(detail),
                        address=clean(address, 100), now=time.time())


def actor_and_address(request: Request) -> tuple[Identity, str]:
    return identity(request), client_address(request)


@dataclass(frozen=True)
class Filters:
    """The job list's filters, as the list page and the API take them."""

    status: str | None = None
    target: str | None = None
    search: str | None = None
    before_id: int | None = None
    queue: str | None = None

    def query(self, **changes: Any) -> str:
        """This filter set as a query string, with some values changed (None drops a key)."""
        values = {"status": self.status, "target": self.target, "queue": self.queue,
                  "q": self.search, "before_id": self.before_id, **changes}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    @property
    def any(self) -> bool:
        return bool(self.status or self.target or self.search or self.queue)


def parse_filters(params: Any, search_key: str = "q") -> Filters:
    """Validate list filters; UsageError names the bad one."""
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise UsageError(f"status must be one of {', '.join(STATUSES)}")
    target = params.get("target") or None
    queue = params.get("queue") or None
    if queue is not None:
        check_queue(queue)  # UsageError: the page's 400, the API's {"error": ...}
    search = params.get(search_key) or None
    for name, value in (("target", target), ("search", search)):
        if value is not None and len(value) > MAX_FILTER:
            raise UsageError(f"{name} is longer than {MAX_FILTER} characters")
    before = params.get("before_id") or None
    before_id = None
    if before is not None:
        before_id = ascii_int(before, lo=1, hi=MAX_ID)
        if before_id is None:
            raise UsageError("before_id must be a job id (a whole number >= 1)")
    return Filters(status, clean(target), clean(search), before_id, queue)
