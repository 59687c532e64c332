"""The form actions of the pages: cancel, retry, bulk cancel, dispatch. Each is audited.

The gate has already checked the session, the role and the CSRF token. Each
action answers with a redirect (post/redirect/get) to the page showing its
result; a notice key in the URL picks the message.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bgrunner import jobs
from bgrunner.context import Context
from bgrunner.dashboard.auth import Identity
from bgrunner.dashboard.forms import MethodInfo, field_of, parse_form
from bgrunner.dashboard.views.common import (
    Filters,
    actor_and_address,
    audit,
    dashboard,
    job_id_of,
    parse_filters,
    render,
)
from bgrunner.dashboard.views.pages import safe_next
from bgrunner.errors import JobError, JobNotFound, NotAllowedError, ParamsError, UsageError
from bgrunner.model import CANCELLABLE, JobStatus

#: A bulk cancel stops at this many jobs per click.
BULK_CAP = 1000


def cancel_one(ctx: Context, who: Identity, address: str, job_id: int) -> bool:
    """Cancel without waiting for the process to go (SIGKILL follows in a thread); audited."""
    if ctx.store.get(job_id) is None:
        raise JobNotFound(f"no job {job_id}")
    done = jobs.cancel(ctx, job_id, reason=f"cancelled from the dashboard ({who.actor})",
                       wait=False)
    audit(ctx, who, address, "cancel", job_id, "cancelled" if done else "had already ended")
    return done


class WrongState(UsageError):
    """The job is not in a status the action applies to."""


def refused(ctx: Context, who: Identity, address: str, action: str, job_id: int | None,
            reason: str) -> None:
    """Audit an action that was asked for and refused (``<action>_refused``)."""
    audit(ctx, who, address, f"{action}_refused", job_id, reason)


def retry_one(ctx: Context, who: Identity, address: str, job_id: int) -> int:
    """A new job like a failed or cancelled one (``jobs.retry``); audited, refusals too."""
    job = jobs.find(ctx, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        refused(ctx, who, address, "retry", job.id, f"job is {job.status}")
        raise WrongState(f"job {job.id} is {job.status}; only failed or cancelled jobs are retried")
    new_id = jobs.retry(ctx, job_id)
    audit(ctx, who, address, "retry", job_id, f"new job {new_id}")
    return new_id


async def cancel(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    who, address = actor_and_address(request)
    done = await dashboard(request).run(cancel_one, who, address, job_id)
    form = await request.form()
    back = safe_next(str(form.get("next") or f"/jobs/{job_id}"))
    return _redirect(back, "cancelled" if done else "not_cancelled")


async def retry(request: Request) -> Response:
    job_id = job_id_of(request.path_params["job_id"])
    who, address = actor_and_address(request)
    new_id = await dashboard(request).run(retry_one, who, address, job_id)
    return _redirect(f"/jobs/{new_id}", "retried")


def _redirect(path: str, notice: str, **extra: Any) -> RedirectResponse:
    query = "&".join([f"notice={notice}"] + [f"{k}={v}" for k, v in extra.items()])
    sep = "&" if "?" in path else "?"
    return RedirectResponse(f"{path}{sep}{query}", status_code=303)


def bulk_cancel_filtered(ctx: Context, who: Identity, address: str, filters: Filters) -> int:
    """Cancel up to ``BULK_CAP`` cancellable jobs matching the filters, newest first."""
    statuses = [filters.status] if filters.status else [JobStatus.PENDING, JobStatus.RETRYING, JobStatus.RUNNING]
    cancelled: list[int] = []
    for status in statuses:
        if status not in CANCELLABLE:
            continue
        before = None
        while len(cancelled) < BULK_CAP:
            page = ctx.store.list(status=status, target=filters.target, search=filters.search,
                                  queue=filters.queue, before_id=before,
                                  limit=min(200, BULK_CAP - len(cancelled)))
            if not page:
                break
            for job in page:
                if jobs.cancel(ctx, job.id, reason=f"bulk cancel from the dashboard ({who.actor})",
                               wait=False):
                    cancelled.append(job.id)
            before = page[-1].id
    shown = ", ".join(str(i) for i in cancelled[:50]) + (" ..." if len(cancelled) > 50 else "")
    audit(ctx, who, address, "bulk_cancel", None,
          f"filter {filters.query(before_id=None) or '(none)'}: {len(cancelled)} cancelled"
          + (f" ({shown})" if cancelled else ""))
    return len(cancelled)


async def bulk_cancel(request: Request) -> Response:
    form = await request.form()
    filters = parse_filters({k: str(v) for k, v in form.items() if k != "before_id"})
    who, address = actor_and_address(request)
    n = await dashboard(request).run(bulk_cancel_filtered, who, address, filters)
    query = filters.query(before_id=None)
    return _redirect("/jobs" + (f"?{query}" if query else ""), "bulk", n=n)


# -- dispatch ---------------------------------------------------------------------------------
async def dispatch_page(request: Request) -> Response:
    """GET shows the form, POST submits it."""
    if request.method == "POST":
        return await dispatch(request)
    return await dispatch_form(request)


async def dispatch_form(request: Request) -> Response:
    target, method = request.path_params["target"], request.path_params["method"]
    dash = dashboard(request)
    info = await dash.run(dash.method, target, method)
    return render(request, "dispatch.html", info=info, values={}, errors={})


def submit_checked(ctx: Context, who: Identity, address: str, info: MethodInfo | None,
                   target: str, method: str, params: Any, priority: int, delay: float, *,
                   queue: str | None = None, unique_key: str | None = None) -> int:
    """``jobs.prepare`` (allowlist, params bound to the signature, policy) then submit; audited.

    The class is imported first (``info``), so ``prepare`` binds the params to
    the signature, as ``run_background_job`` does once the class is loaded.
    A refusal (not allowed, bad params) is audited with its reason.
    """
    try:
        new = jobs.prepare(ctx, target, method, params, priority=priority, delay=delay, queue=queue,
                           unique_key=unique_key)
    except JobError as exc:
        refused(ctx, who, address, "dispatch", None, f"{target}.{method}: {exc}")
        raise
    job_id = jobs.submit(ctx, new)
    audit(ctx, who, address, "dispatch", job_id, f"{target}.{method}")
    return job_id


def _method_or_refuse(ctx: Context, dash: Any, who: Identity, address: str, target: str,
                      method: str) -> MethodInfo:
    try:
        info: MethodInfo = dash.method(ctx, target, method)
    except NotAllowedError as exc:
        refused(ctx, who, address, "dispatch", None, f"{target}.{method}: {exc}")
        raise
    return info


async def dispatch(request: Request) -> Response:
    target, method = request.path_params["target"], request.path_params["method"]
    dash = dashboard(request)
    who, address = actor_and_address(request)
    info = await dash.run(_method_or_refuse, dash, who, address, target, method)
    form = {k: str(v) for k, v in (await request.form()).multi_items()}
    parsed = parse_form(info, form)
    general: str | None = None
    if parsed.errors:
        detail = "; ".join(f"{name}: {text}" for name, text in sorted(parsed.errors.items()))
        await dash.run(refused, who, address, "dispatch", None, f"{target}.{method}: {detail}")
    if not parsed.errors and info.error is None:
        try:
            job_id = await dash.run(submit_checked, who, address, info, target, method,
                                    parsed.params, parsed.priority, parsed.delay)
            return _redirect(f"/jobs/{job_id}", "dispatched")
        except NotAllowedError:
            raise
        except ParamsError as exc:
            name = field_of(str(exc), info)
            if name is None:
                general = str(exc)
            else:
                parsed.errors[name] = str(exc)
        except JobError as exc:
            general = str(exc)
    elif info.error is not None:
        general = f"this method cannot be dispatched: {info.error}"
    return render(request, "dispatch.html", 400, info=info, values=form,
                  errors=parsed.errors, general=general)


def dispatch_url(target: str, method: str) -> str:
    return f"/dispatch/{quote(target, safe=':')}/{quote(method)}"
