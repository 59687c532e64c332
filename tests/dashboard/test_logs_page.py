"""The Logs page (/logs), its live feed (/logs/stream) and GET /api/logs, over real HTTP and in Chromium.

The server of this module starts over a log folder written beforehand: known
lines with timestamps in the past, across a gzipped rotated file, a plain
rotated file and the current file (a malformed line among them), and an
errors file. Every known-answer query carries ``until`` = the moment the
files were written, so the lines the server's own jobs add later never count.
Then real jobs run and their lines must appear live.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from .conftest import READONLY, TOKEN, Server, in_ci, poll, start_server
from .test_browser import ARGS, CHROMIUM, WAIT_MS, _missing, log_in, shot
from .test_pages import sse_messages

FLAKY = "examples.jobs:FlakyJob"
SAMPLE = "examples.jobs:SampleJob"
XSS = "<script>alert(1)</script>"
DAY, HOUR, MINUTE = 86400.0, 3600.0, 60.0
TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 3, in fail\nRuntimeError: boom'


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(n: int, ts: float, level: str, event: str, job_id: str | None = None,
           target: str | None = None, method: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"timestamp": iso(ts), "level": level, "event": event, "job_id": job_id, "target": target,
            "method": method, "attempt": 1 if job_id else None, "pid": 4242, "n": n, **extra}


class KnownLog:
    """The lines written before the server started, by number (``n`` on each line)."""

    def __init__(self, folder: Path) -> None:
        self.t0 = t0 = time.time() - 1
        r = record
        self.gz = [r(1, t0 - 3 * DAY, "info", "job_queued", "901", SAMPLE, "process"),
                   r(2, t0 - 3 * DAY + 1, "info", "job_started", "901", SAMPLE, "process")]
        self.rotated = [r(3, t0 - 2 * DAY, "info", "job_completed", "901", SAMPLE, "process",
                          duration_ms=12),
                        r(4, t0 - DAY, "info", "email_sent", "902", SAMPLE, "handle", to="a@b.c"),
                        r(5, t0 - DAY + 5, "warning", "job_retrying", "902", SAMPLE, "handle",
                          error="RuntimeError: boom", retry_in_s=1)]
        self.failed = r(6, t0 - 3 * HOUR, "error", "job_failed", "902", SAMPLE, "handle",
                        error="RuntimeError: boom", traceback=TRACEBACK)
        self.ticks = [r(100 + i, t0 - 50 * MINUTE + i, "debug", "tick") for i in range(120)]
        self.current = [self.failed,
                        r(7, t0 - 2 * HOUR, "info", XSS, "903", FLAKY, "fail", note="<b>bold</b>"),
                        *self.ticks,
                        r(8, t0 - 30 * MINUTE, "debug", "cache_miss", key="k1"),
                        r(9, t0 - 10 * MINUTE, "info", "job_completed", "903", FLAKY, "fail",
                          duration_ms=3)]
        logs = folder / "logs"
        logs.mkdir(mode=0o700, parents=True)
        main = logs / "background_jobs.log"
        with gzip.open(f"{main}.2.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in self.gz)
        self._write(Path(f"{main}.1"), [json.dumps(line) for line in self.rotated])
        lines = [json.dumps(line) for line in self.current]
        lines.insert(1, "this line is not JSON {")
        self._write(main, lines)
        self._write(logs / "background_jobs_errors.log", [json.dumps(self.failed)])

    @staticmethod
    def _write(path: Path, lines: list[str]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)

    @property
    def newest_first(self) -> list[int]:
        every = self.gz + self.rotated + self.current
        return [line["n"] for line in sorted(every, key=lambda line: line["timestamp"], reverse=True)]

    @property
    def tick_numbers(self) -> list[int]:
        return [line["n"] for line in reversed(self.ticks)]


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, KnownLog]]:
    root = tmp_path_factory.mktemp("logs-page")
    log = KnownLog(root)
    server = start_server(root)
    yield server, log
    server.stop()


@pytest.fixture
def server(known: tuple[Server, KnownLog]) -> Server:
    return known[0]


@pytest.fixture
def log(known: tuple[Server, KnownLog]) -> KnownLog:
    return known[1]


def numbers(server: Server, log: KnownLog, **params: Any) -> list[int]:
    """The ``n`` of every line /api/logs answers (all pages), newest first; ``until`` = before the jobs."""
    params = {"until": iso(log.t0), "limit": 500, **params}
    found: list[int] = []
    while True:
        r = server.api.get("/api/logs", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        found += [line["n"] for line in body["lines"]]
        if not body["next_before"]:
            return found
        params["before"] = body["next_before"]


# -- known answers --------------------------------------------------------------------------------------
def test_api_lists_every_line_newest_first_across_rotated_and_gzipped_files(server: Server,
                                                                            log: KnownLog) -> None:
    """All nine known lines and the ticks, newest first, from .2.gz, .1 and the current file; no malformed."""
    assert numbers(server, log) == log.newest_first
    assert len(log.newest_first) == 9 + 120


def test_api_pages_by_cursor_without_gaps_or_repeats(server: Server, log: KnownLog) -> None:
    """limit=7: each page is older than the one before; together they are the whole answer."""
    pages: list[list[int]] = []
    params: dict[str, Any] = {"until": iso(log.t0), "limit": 7}
    while True:
        body = server.api.get("/api/logs", params=params).json()
        assert len(body["lines"]) <= 7
        if body["lines"]:
            pages.append([line["n"] for line in body["lines"]])
        if not body["next_before"]:
            break
        params["before"] = body["next_before"]
    assert [n for page in pages for n in page] == log.newest_first
    assert all(len(page) == 7 for page in pages[:-1])


@pytest.mark.parametrize(("params", "expected"), [
    ({"level": "warning"}, [6, 5]),
    ({"level": "error"}, [6]),
    ({"level": "ERROR"}, [6]),
    ({"event": "job_completed"}, [9, 3]),
    ({"event": ["job_completed", "job_failed"]}, [9, 6, 3]),
    ({"event": "job_completed,job_failed"}, [9, 6, 3]),
    ({"event": "job_completed job_failed"}, [9, 6, 3]),
    ({"target": FLAKY}, [9, 7]),
    ({"grep": "boom"}, [6, 5]),
    ({"grep": "job_(queued|started)"}, [2, 1]),
    ({"grep": r'"to": "a@b\.c"'}, [4]),
    ({"job_id": "901"}, [3, 2, 1]),
    ({"job_id": "902", "level": "warning"}, [6, 5]),
    ({"job_id": "903", "event": "job_completed"}, [9]),
    ({"errors": "1"}, [6]),
    ({"errors": "true", "job_id": "901"}, []),
])
def test_each_filter_alone_and_combined(server: Server, log: KnownLog, params: dict[str, Any],
                                        expected: list[int]) -> None:
    assert numbers(server, log, **params) == expected


def test_time_filters_absolute_and_relative(server: Server, log: KnownLog) -> None:
    """since/until take ISO 8601 or 30s/10m/2h/7d, as the CLI does."""
    t0 = log.t0
    assert numbers(server, log, since="25h") == [9, 8, *log.tick_numbers, 7, 6, 5, 4]
    assert numbers(server, log, since="4h", level="info") == [9, 7, 6]  # at least info
    assert numbers(server, log, since="7d", until="2d") == [3, 2, 1]
    assert numbers(server, log, since=iso(t0 - 2 * DAY - 1), until=iso(t0 - 2 * HOUR + 1)) == [
        7, 6, 5, 4, 3]
    assert numbers(server, log, since=iso(t0 - 2 * DAY - 1), until=iso(t0 - 2 * HOUR + 1),
                   job_id="903") == [7]


# -- the page ---------------------------------------------------------------------------------------------
def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-key="([0-9a-f]+)">', html)


def test_page_shows_lines_newest_first_each_linked_to_its_job(server: Server, log: KnownLog) -> None:
    html = server.api.get("/logs", params={"until": iso(log.t0), "event": "job_completed"}).text
    assert len(rows(html)) == 2
    assert html.index('href="/jobs/903"') < html.index('href="/jobs/901"')
    assert "Older »" not in html
    assert '<a href="/logs"' in html and ">Logs</a>" in html  # the nav link
    assert 'data-live="0"' in html  # until: nothing new can match


def test_page_highlights_errors_and_folds_tracebacks(server: Server, log: KnownLog) -> None:
    html = server.api.get("/logs", params={"until": iso(log.t0), "job_id": "902"}).text
    assert len(rows(html)) == 3
    assert html.count(" is-error") == 1 and 'class="level lv-error"' in html
    folded = re.search(r"<details><summary>traceback</summary><pre class=\"code\">(.*?)</pre></details>",
                       html, re.S)
    assert folded and "RuntimeError: boom" in folded.group(1)


def test_page_escapes_everything_from_a_line(server: Server, log: KnownLog) -> None:
    html = server.api.get("/logs", params={"until": iso(log.t0), "job_id": "903"}).text
    assert XSS not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_page_older_link_pages_with_the_readers_cursor(server: Server, log: KnownLog) -> None:
    """120 ticks: 100 on the first page, the other 20 behind "Older", then no older link."""
    first = server.api.get("/logs", params={"event": "tick", "since": "1d"}).text
    assert len(rows(first)) == 100 and 'data-live="1"' in first
    older = re.search(r'<a href="/logs\?([^"]+)" rel="next" data-older>', first)
    assert older
    query = older.group(1).replace("&amp;", "&")
    assert "since=1d" not in query and "since=" in query  # relative times made absolute for the link
    second = server.api.get("/logs?" + query).text
    assert len(rows(second)) == 20 and "data-older" not in second
    assert not set(rows(first)) & set(rows(second))
    assert "« Newest" in second and 'data-live="0"' in second


def test_errors_file_toggle(server: Server, log: KnownLog) -> None:
    html = server.api.get("/logs", params={"until": iso(log.t0), "errors": "1"}).text
    assert len(rows(html)) == 1 and "job_failed" in html
    assert re.search(r'<a href="/logs\?until=[^"]*errors=1" aria-current="page" data-errors-toggle>', html)


@pytest.mark.parametrize(("params", "message"), [
    ({"since": "yesterday-ish"}, "since: not a time: 'yesterday-ish'"),
    ({"until": "10 parsecs"}, "until: not a time: '10 parsecs'"),
    ({"level": "loud"}, "level: unknown level 'loud'"),
    ({"grep": "(unclosed"}, "grep: invalid regular expression '(unclosed'"),
    ({"job_id": "abc"}, "job_id must be a job id"),
    ({"job_id": "0"}, "job_id must be a job id"),
    ({"job_id": "١٢"}, "job_id must be a job id"),
    ({"errors": "maybe"}, "errors must be 1 or 0"),
    ({"before": "not a cursor"}, "before must be the cursor of a previous page"),
    ({"before": "zz-1:0:1.5"}, "before must be the cursor of a previous page"),
    ({"grep": "x" * 201}, "grep is longer than 200 characters"),
])
def test_bad_filters_are_a_one_line_400(server: Server, params: dict[str, str], message: str) -> None:
    page = server.api.get("/logs", params=params)
    assert page.status_code == 400
    text = re.search(r"<section class=\"card\">\s*<h1>Bad filter</h1>\s*<p>(.*?)</p>", page.text, re.S)
    assert text and message in unescape(text.group(1)) and "\n" not in text.group(1), page.text
    api = server.api.get("/api/logs", params=params)
    assert api.status_code == 400 and message in api.json()["error"]
    assert "\n" not in api.json()["error"]
    stream = server.api.get("/logs/stream", params=params)  # a cursor at all is refused there
    assert stream.status_code == 400 and ("before" in params or message in stream.json()["error"])
    assert "Traceback" not in server.stderr()


def test_api_limit_is_bounded(server: Server) -> None:
    for bad in ("0", "501", "x", "-1"):
        r = server.api.get("/api/logs", params={"limit": bad})
        assert r.status_code == 400 and "limit" in r.json()["error"]


def test_behind_the_login_and_read_only_may_look(server: Server, log: KnownLog) -> None:
    anonymous = server.client(follow_redirects=False)
    page = anonymous.get("/logs", params={"level": "error"})
    assert page.status_code == 302 and page.headers["location"].startswith("/login?next=%2Flogs")
    for path in ("/api/logs", "/logs/stream"):
        assert anonymous.get(path).status_code == 401
    ro = server.client(READONLY)
    assert ro.get("/logs").status_code == 200
    assert ro.get("/api/logs", params={"until": iso(log.t0), "level": "error"}).json()["lines"][0]["n"] == 6
    browser, _csrf = server.login(READONLY)
    assert browser.get("/logs").status_code == 200


def test_openapi_describes_the_logs_endpoint(server: Server) -> None:
    doc = server.api.get("/api/openapi.json").json()
    op = doc["paths"]["/api/logs"]["get"]
    names = {p["name"] for p in op["parameters"]}
    assert names == {"since", "until", "level", "event", "target", "grep", "job_id", "errors", "before",
                     "limit"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LogPage"}
    assert "LogLine" in doc["components"]["schemas"]


# -- live -------------------------------------------------------------------------------------------------
def test_stream_sends_new_matching_lines_only(server: Server) -> None:
    """/logs/stream?event=job_completed: a job's completion arrives; its other events and old lines don't."""
    with server.api.stream("GET", "/logs/stream",
                           params={"event": "job_completed", "after": f"{time.time():.6f}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        job_id = server.dispatch("handle", [])
        seen: list[dict[str, Any]] = []
        for _event, data in sse_messages(response):
            seen += data["lines"]
            if any(line["job_id"] == job_id for line in seen):
                break
    assert {line["event"] for line in seen} == {"job_completed"}
    assert [line["job_id"] for line in seen].count(job_id) == 1
    assert "903" not in {line["job_id"] for line in seen}  # written before the stream's opening
    line = next(line for line in seen if line["job_id"] == job_id)
    assert line["target"] == SAMPLE and line["method"] == "handle" and not line["error"]


def test_stream_sends_errors_with_their_traceback(server: Server) -> None:
    with server.api.stream("GET", "/logs/stream",
                           params={"level": "error", "after": f"{time.time():.6f}"}) as response:
        job_id = server.dispatch("fail", {"message": "live failure"}, target=FLAKY)
        for _event, data in sse_messages(response):
            mine = [line for line in data["lines"] if line["job_id"] == job_id]
            if mine:
                break
    assert mine[0]["event"] == "job_failed" and mine[0]["error"]
    assert any(f["k"] == "traceback" and "live failure" in f["v"] for f in mine[0]["folded"])


# -- the unit of the live feed: overlap and dedupe, without a server ------------------------------------------
def test_live_feed_reads_an_overlap_and_never_sends_a_line_twice(tmp_path: Path) -> None:
    """A late line with an older timestamp still arrives; polls that see a line again do not resend it."""
    from bgrunner.context import Context
    from bgrunner.dashboard.state import Dashboard
    from bgrunner.dashboard.views import logs

    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    main = folder / "background_jobs.log"
    now = time.time()
    KnownLog._write(main, [json.dumps(record(1, now - 60, "info", "old"))])

    def append(*lines: dict[str, Any]) -> None:
        with open(main, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)

    dash = Dashboard(Context(config_path=str(tmp_path / "a.toml"), log_dir=str(folder),
                             database_url="memory://logs-live"))
    ctx = dash.ctx()

    class Params(dict[str, str]):
        def getlist(self, key: str) -> list[str]:
            return [self[key]] if key in self else []

    watch = logs.LogWatch(dash, logs.parse_query(Params()), after=now)
    assert watch.poll(ctx) is None  # the old line is the page's
    append(record(2, now + 0.5, "info", "first"))
    time.sleep(0.6)  # past the shared-read TTL
    sent = watch.poll(ctx)
    assert sent and [line["event"] for line in sent["lines"]] == ["first"]
    append(record(3, now + 0.2, "info", "late"))  # another writer's older stamp, appended later
    time.sleep(0.6)
    sent = watch.poll(ctx)
    assert sent and [line["event"] for line in sent["lines"]] == ["late"]
    time.sleep(0.6)
    assert watch.poll(ctx) is None  # all three are still in the overlap: none is sent again


# -- Chromium -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so the browser tests must run", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    yield tab
    context.close()
    assert not [p for p in problems if "favicon" not in p], problems


def row_count(page: Any) -> int:
    return int(page.locator("tbody[data-lines] tr").count())


@pytest.mark.browser
def test_in_chromium_filter_narrows_live_line_appears_and_links_to_its_job(
        page: Any, server: Server, log: KnownLog, tmp_path: Path) -> None:
    """Filter the page, watch a job's line arrive without a reload, follow its link to the job."""
    log_in(page, server, "/logs")
    assert TOKEN  # logged in as admin
    everything = row_count(page)
    assert everything == 100  # a full first page (the known lines and ticks are more than 100)
    shot(page, tmp_path, "logs")

    page.select_option("select[name=level]", "warning")
    page.fill("input[name=since]", "7d")
    page.click("form[data-log-filters] button[type=submit]")
    page.wait_for_url("**/logs?*level=warning*")
    levels = page.locator("tbody[data-lines] tr .level").all_inner_texts()
    assert 2 <= len(levels) < everything and set(levels) <= {"warning", "error"}
    assert page.locator("tbody[data-lines] tr.is-error details summary", has_text="traceback").count() >= 1
    shot(page, tmp_path, "logs-filtered")
    page.click("[data-errors-toggle]")
    page.wait_for_url("**/logs?*errors=1*")
    assert set(page.locator("tbody[data-lines] tr .level").all_inner_texts()) == {"error"}
    assert page.input_value("select[name=level]") == "warning"  # the filters are kept

    page.goto(server.url + "/logs?event=job_completed")
    page.locator("[data-live-state]:not([hidden])").wait_for()
    page.evaluate("window.__notReloaded = true")
    before = row_count(page)
    job_id = server.dispatch("process", {"name": "logs page", "times": 1})
    link = page.locator(f'tbody[data-lines] tr:first-child a[data-job-link][href="/jobs/{job_id}"]')
    link.wait_for()
    assert page.evaluate("window.__notReloaded") is True
    assert row_count(page) == before + 1
    assert "job_completed" in page.locator("tbody[data-lines] tr:first-child").inner_text()
    shot(page, tmp_path, "logs-live")
    link.click()
    page.wait_for_url(f"{server.url}/jobs/{job_id}")
    page.locator(".heading [data-field=status]", has_text="completed").wait_for()


def test_server_never_printed_a_traceback(server: Server) -> None:
    poll(lambda: server.proc.poll() is None, what="the server to be running")
    assert "Traceback" not in server.stderr()

