"""Live updates as Server-Sent Events: ``/events`` for lists, ``/jobs/{id}/stream`` for one job.

Each stream polls at most once per ``POLL_INTERVAL``, and what it reads is
shared by every stream asking within ``SHARED_TTL`` (``Dashboard.shared``; the
counts too, see ``Dashboard.counts``), so many viewers of one job cost one
query. A stream sends a JSON message only when something changed, and ends
when the client goes away (Starlette cancels the generator on disconnect) or
after ``STREAM_LIFETIME``, after which the browser's EventSource reconnects by
itself. Open streams are capped per caller and in all (``limits.StreamSlots``):
beyond, 429. Streams only read: a job's record is the store's (``jobs.find``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from bgrunner import jobs
from bgrunner.context import Context
from bgrunner.dashboard.auth import Receive, Scope, Send, identity
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.dashboard.jobview import ProcessWatch, read_output
from bgrunner.dashboard.limits import StreamSlots
from bgrunner.dashboard.openapi import MAX_ID
from bgrunner.dashboard.state import Dashboard
from bgrunner.dashboard.views.common import PAGE_SIZE, Filters, dashboard, job_id_of, parse_filters
from bgrunner.errors import UsageError
from bgrunner.model import JobRecord

POLL_INTERVAL = 1.0
STREAM_LIFETIME = 300.0
HEARTBEAT = 15.0
#: A list stream watches at most this many jobs.
MAX_WATCH = 200

HEADERS = {"X-Accel-Buffering": "no"}


def message(payload: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _signature(job: JobRecord) -> tuple[Any, ...]:
    return (job.status, job.attempts, json.dumps(job.progress), job.pid, job.finished_at,
            job.error)


def _found(job: JobRecord, search: str | None) -> bool:
    """The store's search (case-insensitive text in the params' JSON or the error), in Python."""
    if not search:
        return True
    needle = search.lower()
    return needle in json.dumps(job.params).lower() or needle in (job.error or "").lower()


def _ids(text: str) -> set[int]:
    ids = set()
    for part in text.split(",", MAX_WATCH)[:MAX_WATCH]:
        value = ascii_int(part.strip(), lo=1, hi=MAX_ID)
        if value is not None:
            ids.add(value)
    return ids


class SlotStream(StreamingResponse):
    """An event stream holding one of ``slots`` for ``who`` until it ends, however it ends."""

    def __init__(self, content: AsyncIterator[str], slots: StreamSlots, who: str) -> None:
        super().__init__(content, media_type="text/event-stream", headers=HEADERS)
        self.slots, self.who = slots, who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give_back(self.who)


class Ending(Protocol):
    """A watch that can tell its stream there is nothing more to send (``done``)."""

    done: bool


def open_stream(request: Request, dash: Dashboard, content: AsyncIterator[str]) -> Response:
    """The stream if its caller (and everybody) has a slot left; else 429."""
    who = identity(request).key
    if not dash.streams.take(who):
        return JSONResponse({"error": "too many open event streams: close some pages"},
                            status_code=429, headers={"Retry-After": "10"})
    return SlotStream(content, dash.streams, who)


class ListWatch:
    """One list stream's memory: the jobs it watches and what it last sent of each."""

    def __init__(self, dash: Dashboard, filters: Filters, watch: set[int], top: int | None) -> None:
        self.dash, self.filters, self.watch, self.top = dash, filters, watch, top
        self.opened = time.monotonic()  # as JobWatch: no read from before the stream opened
        self.sent: dict[int, tuple[Any, ...]] = {}
        self.counts: dict[str, int] | None = None

    def poll(self, ctx: Context) -> dict[str, Any] | None:
        changed = [job for job in self._watched(ctx) if self._is_news(job)]
        fresh = self._new_jobs(ctx) if self.top is not None else []
        counts = self.dash.counts(ctx)
        if not changed and not fresh and counts == self.counts:
            return None
        self.counts = counts
        return {"counts": counts, "jobs": [j.to_dict() for j in changed],
                "new": [j.to_dict() for j in fresh]}

    def _watched(self, ctx: Context) -> list[JobRecord]:
        found = []
        for job_id in sorted(self.watch):
            job = self.dash.record(ctx, job_id, not_before=self.opened)
            if job is None or job.is_final:
                self.watch.discard(job_id)  # final jobs never change again
            if job is not None:
                found.append(job)
        return found

    def _is_news(self, job: JobRecord) -> bool:
        signature = _signature(job)
        if self.sent.get(job.id) == signature:
            return False
        self.sent[job.id] = signature
        return True

    def _new_jobs(self, ctx: Context) -> list[JobRecord]:
        """Jobs newer than the page's newest, among the latest ``PAGE_SIZE`` of its filter.

        The text search is applied here, to those few rows, rather than as a
        LIKE over the whole store once a second.
        """
        f = self.filters
        rows = self.dash.shared(("latest", f.status, f.target, f.queue),
                                lambda: ctx.store.list(status=f.status, target=f.target, queue=f.queue,
                                                       limit=PAGE_SIZE))
        top = self.top or 0
        fresh = [job for job in rows if job.id > top and _found(job, f.search)]
        if fresh:
            self.top = max(job.id for job in fresh)
            for job in fresh:
                self.sent[job.id] = _signature(job)
                if not job.is_final and len(self.watch) < MAX_WATCH:
                    self.watch.add(job.id)
        return fresh


async def list_events(request: Request) -> Response:
    """Counts, changes of the watched jobs (``watch=1,2,3``) and, with ``top=N``, newer jobs."""
    dash = dashboard(request)
    params = request.query_params
    filters = parse_filters(params)
    top_text = params.get("top")
    top = None
    if top_text is not None:
        top = ascii_int(top_text, lo=0, hi=MAX_ID)
        if top is None:
            raise UsageError("top must be a job id")
    watch = ListWatch(dash, filters, _ids(params.get("watch", "")), top)
    return open_stream(request, dash, poll_loop(dash, watch.poll, None))


class JobWatch:
    """One job page's stream: the record, new output, the process's CPU and memory."""

    def __init__(self, dash: Dashboard, job_id: int, offset: int) -> None:
        self.dash, self.job_id, self.offset = dash, job_id, offset
        self.opened = time.monotonic()  # reads from before the stream opened are not shared with it
        self.sent: tuple[Any, ...] | None = None
        self.process = ProcessWatch()
        self.done = False

    def poll(self, ctx: Context) -> dict[str, Any] | None:
        job = self.dash.record(ctx, self.job_id, not_before=self.opened)
        if job is None:
            self.done = True
            return None
        text, self.offset, skipped = read_output(ctx.output_dir, job.id, self.offset)
        stats = self.process.sample(job.pid, job.pid_ctime) if job.owned else None
        signature = _signature(job)
        self.done = job.is_final
        if not text and stats is None and signature == self.sent:
            return None
        self.sent = signature
        return {"job": job.to_dict(), "output": text, "output_skipped": skipped,
                "offset": self.offset,
                "process": None if stats is None else {
                    "pid": stats.pid, "cpu_percent": stats.cpu_percent,
                    "memory_bytes": stats.memory_bytes, "threads": stats.threads}}


async def job_events(request: Request) -> Response:
    """The job page's live feed; ends (event ``done``) once the job is final."""
    job_id = job_id_of(request.path_params["job_id"])
    offset = ascii_int(request.query_params.get("offset", "0"), lo=0, hi=2**62) or 0
    dash = dashboard(request)
    await dash.run(jobs.find, job_id)  # 404 now rather than inside the stream
    watch = JobWatch(dash, job_id, offset)
    return open_stream(request, dash, poll_loop(dash, watch.poll, watch))


async def poll_loop(dash: Dashboard, poll: Any, job: Ending | None) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    started = last_sent = time.monotonic()
    while time.monotonic() - started < STREAM_LIFETIME:
        payload = await dash.run(poll)
        now = time.monotonic()
        if payload is not None:
            yield message(payload)
            last_sent = now
        elif now - last_sent >= HEARTBEAT:
            yield ": keep-alive\n\n"  # also how a vanished client is noticed
            last_sent = now
        if job is not None and job.done:
            yield message({}, "done")
            return
        await anyio.sleep(POLL_INTERVAL)
