"""The Logs page (``/logs``), its live feed (``/logs/stream``) and ``GET /api/logs``.

Every read goes through ``bgrunner.logread``, the reader ``bgrunner logs`` uses:
the same filters (``LogFilter``, ``parse_time``), the same files in the same
order (rotated and gzipped ones too), the same newest-first keyset pages
(``newest(path, filt, before=cursor, limit=N)``). The page and the API take the
CLI's filters as query parameters: ``since``, ``until`` (ISO 8601 or ``30s``,
``10m``, ``2h``, ``7d``), ``level`` (at least), ``event`` (repeatable, or
several separated by commas or spaces), ``target``, ``grep`` (a regular
expression over the whole line), ``job_id``, ``errors=1`` (the errors file) and
``before`` (the cursor of the previous page). A bad value is a 400 naming it.

The live feed does not hold a thread per viewer: like the other streams it
polls once per second, and each poll asks the reader for the newest matching
lines *since a bounded moment* (a few seconds before the previous poll began,
rounded down so that viewers of one filter share one read through
``Dashboard.shared``). Lines already sent are remembered by a key (a hash of
the line), so the overlap never shows a line twice; lines written by another
process with a slightly older timestamp still arrive within the overlap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bgrunner import logread
from bgrunner.context import Context
from bgrunner.dashboard.forms import ascii_float
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.dashboard.openapi import MAX_ID, MAX_LIMIT
from bgrunner.dashboard.state import Dashboard
from bgrunner.dashboard.views import events
from bgrunner.dashboard.views.common import MAX_FILTER, clean, dashboard, render
from bgrunner.errors import ConfigError, JobError, UsageError
from bgrunner.eventlog import ERROR_LOG, MAIN_LOG

#: Lines per page of ``/logs`` (and the API's default ``limit``).
PAGE_LINES = 100
#: Levels a ``level`` filter takes (at least that one), lowest first: the reader's.
LEVELS = tuple(logread.LEVELS)
#: Levels shown as errors.
ERROR_LEVELS = frozenset({"error", "critical", "fatal", "exception"})
#: Events a filter may name at most, and the longest name.
MAX_EVENT_NAMES = 20
MAX_EVENT_NAME = 100
#: A cursor is the reader's own text; anything longer or stranger is refused before it is asked.
MAX_CURSOR = 400
_CURSOR = re.compile(rf"[\x21-\x7e]{{1,{MAX_CURSOR}}}")
_SPLIT = re.compile(r"[\s,]+")
#: Keys every line has (shown in their own columns).
COMMON = ("timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid")
#: Keys holding a traceback: shown folded (``<details>``).
FOLDED = ("traceback", "exception", "stack")
#: Events bgrunner writes (CONTRACT §8), offered in the filter's list.
KNOWN_EVENTS = ("job_queued", "job_started", "job_completed", "job_retrying", "job_failed",
                "job_cancelled", "job_rejected")

# -- the live feed's reads -----------------------------------------------------------------
#: Each poll reads from this long before the previous poll began (>= the shared-read TTL plus
#: how far apart two writers' clocks and their appends may be).
LIVE_OVERLAP = 5.0
#: ... rounded down to a multiple of this, so that viewers of one filter share reads.
LIVE_BUCKET = 5.0
#: Lines sent per poll at most (more: the message says some were skipped).
LIVE_LIMIT = 200
#: Lines at most this much older than the page's opening are still sent (the browser drops
#: those it already shows, by key).
LIVE_SKEW = 2.0
#: A stream never reads from further back than this (a reconnect after a long sleep).
LIVE_CATCH_UP = 600.0


@dataclasses.dataclass(frozen=True)
class LogQuery:
    """The Logs page's (and the API's) filters: the text as given, and the reader's ``LogFilter``."""

    since: str | None = None
    until: str | None = None
    level: str | None = None
    events: tuple[str, ...] = ()
    target: str | None = None
    grep: str | None = None
    job_id: str | None = None
    errors: bool = False
    before: str | None = None
    filt: logread.LogFilter = dataclasses.field(default_factory=logread.LogFilter, compare=False)
    #: ``since`` / ``until`` as epoch seconds (relative ones resolved when parsed).
    since_at: float | None = None
    until_at: float | None = None

    def query(self, *, absolute: bool = False, **changes: Any) -> str:
        """This filter set as a query string, some values changed (None drops a key).

        ``absolute``: relative times as the moments they meant when parsed, so that
        an "older" link keeps showing the same window however late it is followed.
        """
        since, until = self.since, self.until
        if absolute:
            since = _iso(self.since_at) if self.since_at is not None else None
            until = _iso(self.until_at) if self.until_at is not None else None
        values: dict[str, Any] = {"since": since, "until": until, "level": self.level,
                                  "event": " ".join(self.events) or None, "target": self.target,
                                  "grep": self.grep, "job_id": self.job_id,
                                  "errors": "1" if self.errors else None, "before": self.before}
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    @property
    def any(self) -> bool:
        return bool(self.since or self.until or self.level or self.events or self.target
                    or self.grep or self.job_id)

    @property
    def live(self) -> bool:
        """New lines can still match: the newest page, with no end time."""
        return self.before is None and self.until is None

    def path(self, ctx: Context) -> str:
        return os.path.join(ctx.log_dir, ERROR_LOG if self.errors else MAIN_LOG)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(name: str, text: str | None, now: float) -> tuple[str | None, float | None]:
    if not text:
        return None, None
    if len(text) > 64:
        raise UsageError(f"{name} is longer than 64 characters")
    return text, logread.parse_time(text, now, what=name)  # UsageError names it


def _flag(name: str, text: str | None) -> bool:
    value = (text or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{name} must be 1 or 0")


def parse_query(params: Any, now: float | None = None) -> LogQuery:
    """Validate the filters of ``/logs`` and ``/api/logs``; UsageError (one line) names the bad one."""
    now = time.time() if now is None else now
    since, since_at = _time("since", params.get("since") or None, now)
    until, until_at = _time("until", params.get("until") or None, now)
    level_text = params.get("level") or None
    if level_text is not None and len(level_text) > 40:
        raise UsageError("level is longer than 40 characters")
    level = None if level_text is None else logread.parse_level(level_text, what="level")
    events: list[str] = []
    for value in params.getlist("event") if hasattr(params, "getlist") else [params.get("event") or ""]:
        for name in _SPLIT.split(value):
            if not name:
                continue
            if len(name) > MAX_EVENT_NAME:
                raise UsageError(f"event names are at most {MAX_EVENT_NAME} characters")
            if name not in events:
                events.append(clean(name) or "")
    if len(events) > MAX_EVENT_NAMES:
        raise UsageError(f"at most {MAX_EVENT_NAMES} events may be named")
    target = params.get("target") or None
    grep = params.get("grep") or None
    for name, value in (("target", target), ("grep", grep)):
        if value is not None and len(value) > MAX_FILTER:
            raise UsageError(f"{name} is longer than {MAX_FILTER} characters")
    pattern = None if grep is None else logread.compile_grep(grep, what="grep")
    job_text = (params.get("job_id") or "").strip() or None
    job_id = None
    if job_text is not None:
        number = ascii_int(job_text, lo=1, hi=MAX_ID)
        if number is None:
            raise UsageError("job_id must be a job id (a whole number >= 1)")
        job_id = str(number)
    before = params.get("before") or None
    if before is not None and not _CURSOR.fullmatch(before):
        raise UsageError("before must be the cursor of a previous page")
    filt = logread.LogFilter(since=since_at, until=until_at, level=level, events=tuple(events),
                             target=clean(target), grep=pattern, job_id=job_id)
    return LogQuery(since=since, until=until, level=level, events=tuple(events), target=clean(target),
                    grep=clean(grep), job_id=job_id, errors=_flag("errors", params.get("errors")),
                    before=before, filt=filt, since_at=since_at, until_at=until_at)


def _with_since(filt: logread.LogFilter, since: float | None) -> logread.LogFilter:
    """The reader's filter with another ``since`` (the rest as it was)."""
    return dataclasses.replace(filt, since=since)


def _filter_key(q: LogQuery) -> tuple[Any, ...]:
    """What makes two viewers' reads the same, ``since`` aside."""
    return (q.errors, q.until_at, q.level, q.events, q.target, q.grep, q.job_id)


def newest(ctx: Context, q: LogQuery, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """A page of matching lines, newest first, and the cursor of the next (older) page."""
    try:
        lines, cursor = logread.newest(q.path(ctx), q.filt, before=q.before, limit=limit)
    except (UsageError, ValueError, KeyError, IndexError) as exc:
        if q.before is None:
            raise
        raise UsageError("before must be the cursor of a previous page") from exc  # not the reader's
    except OSError as exc:  # a log file that is a link, not ours, unreadable
        raise ConfigError(f"cannot read the log: {exc}") from None
    return list(lines), cursor


# -- what a line looks like on the page ------------------------------------------------------
def line_key(raw: str) -> str:
    """A line's identity: the browser and the stream drop a line already shown."""
    return hashlib.blake2b(raw.encode("utf-8", "replace"), digest_size=10).hexdigest()


def epoch(text: Any) -> float | None:
    """A line's ISO 8601 timestamp as epoch seconds; None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _short(value: Any, limit: int = 300, key: str = "") -> str:
    import json

    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        try:  # an epoch time, as the job page shows it
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (ValueError, OverflowError, OSError):
            pass
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _job_id(value: Any) -> str | None:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return text if text.isascii() and text.isdigit() and len(text) <= 19 else None


def line_view(raw: str, event: dict[str, Any]) -> dict[str, Any]:
    """One line as the page and the live feed show it: plain values only (the page escapes them)."""
    level = str(event.get("level") or "").lower()
    stamp = event.get("timestamp")
    shown = stamp[:23].replace("T", " ") if isinstance(stamp, str) else ""
    target = event.get("target")
    return {
        "key": line_key(raw),
        "timestamp": stamp if isinstance(stamp, str) else None,
        "when": shown,
        "level": level,
        "error": level in ERROR_LEVELS,
        "event": _short(event.get("event", ""), 200),
        "job_id": _job_id(event.get("job_id")),
        "target": target if isinstance(target, str) else None,
        "cls": target.split(":")[-1] if isinstance(target, str) else "",
        "method": event.get("method") if isinstance(event.get("method"), str) else None,
        "attempt": event.get("attempt") if isinstance(event.get("attempt"), int) else None,
        "pid": event.get("pid") if isinstance(event.get("pid"), int) else None,
        "details": [{"k": str(k), "v": _short(v, key=str(k))} for k, v in event.items()
                    if k not in COMMON and k not in FOLDED],
        "folded": [{"k": k, "v": str(event[k])} for k in FOLDED if event.get(k)],
    }


# -- the page -------------------------------------------------------------------------------------
async def logs_page(request: Request) -> Response:
    try:
        q = parse_query(request.query_params)
    except UsageError as exc:
        return render(request, "error.html", 400, title="Bad filter", message=str(exc))
    dash = dashboard(request)
    opened = time.time()

    def fetch(ctx: Context) -> tuple[list[tuple[str, dict[str, Any]]], str | None, list[str]]:
        lines, cursor = newest(ctx, q, PAGE_LINES)
        try:
            targets = sorted(ctx.config.jobs)
        except JobError:  # a broken allowlist: the logs are still readable
            targets = []
        return lines, cursor, targets

    try:
        lines, cursor, targets = await dash.run(fetch)
    except UsageError as exc:
        return render(request, "error.html", 400, title="Bad filter", message=str(exc))
    return render(request, "logs.html", lines=[line_view(raw, event) for raw, event in lines], q=q,
                  cursor=cursor, targets=targets, levels=LEVELS, known_events=KNOWN_EVENTS,
                  after=f"{opened:.6f}")


# -- the API ----------------------------------------------------------------------------------------
async def api_logs(request: Request) -> Response:
    """``{"lines": [...], "next_before": cursor|null}``: the lines as written, newest first."""
    params = request.query_params
    q = parse_query(params)
    limit = ascii_int(params.get("limit", str(PAGE_LINES)), lo=1, hi=MAX_LIMIT)
    if limit is None:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    lines, cursor = await dashboard(request).run(newest, q, limit)
    return JSONResponse({"lines": [event for _raw, event in lines], "next_before": cursor})


# -- the live feed ----------------------------------------------------------------------------------
class LogWatch:
    """One Logs page's stream: the matching lines written since it last looked."""

    def __init__(self, dash: Dashboard, q: LogQuery, after: float) -> None:
        self.dash, self.q = dash, q
        self.floor = after - LIVE_SKEW  # older lines belong to the page (or to older pages)
        self.covered = after  # lines written before this were read (or were on the page)
        self.sent: dict[str, float] = {}
        self.done = False

    def poll(self, ctx: Context) -> dict[str, Any] | None:
        started = time.time()
        since = math.floor((self.covered - LIVE_OVERLAP) / LIVE_BUCKET) * LIVE_BUCKET
        q = self.q
        if q.since_at is not None and q.since_at > since:
            since = q.since_at
        if q.until_at is not None and q.until_at < self.floor:
            self.done = True  # nothing new can match any more
            return None
        path = q.path(ctx)
        filt = _with_since(q.filt, since)
        try:
            lines, _cursor = self.dash.shared(
                ("logs", path, _filter_key(q), since),
                lambda: logread.newest(path, filt, before=None, limit=LIVE_LIMIT))
        except OSError:
            return None  # an unreadable file for now: the next poll tries again
        self.covered = started
        fresh: list[dict[str, Any]] = []
        for raw, event in lines:
            ts = epoch(event.get("timestamp"))
            if ts is not None and ts < self.floor:
                continue
            key = line_key(raw)
            if key in self.sent:
                continue
            self.sent[key] = ts if ts is not None else started
            fresh.append(line_view(raw, event))
        for key in [k for k, ts in self.sent.items() if ts < since - LIVE_BUCKET]:
            del self.sent[key]
        if not fresh:
            return None
        oldest = epoch(lines[-1][1].get("timestamp")) if lines else None
        gap = len(lines) >= LIVE_LIMIT and oldest is not None and oldest > since
        return {"lines": fresh, "gap": gap, "covered": started}


async def log_events(request: Request) -> Response:
    """New lines matching the page's filters, newest first in each message (``after``: epoch s)."""
    params = request.query_params
    q = parse_query(params)
    if q.before is not None:
        raise UsageError("before: the live feed sends new lines only; it takes no cursor")
    now = time.time()
    after = now
    if params.get("after"):
        try:
            after = ascii_float(params["after"], "after")
        except ValueError as exc:
            raise UsageError(f"after: {exc}") from None
    after = min(max(after, now - LIVE_CATCH_UP), now)
    dash = dashboard(request)
    watch = LogWatch(dash, q, after)
    return events.open_stream(request, dash, events.poll_loop(dash, watch.poll, watch))
