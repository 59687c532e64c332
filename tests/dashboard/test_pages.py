"""The server-rendered pages, the form actions and the event streams, over real HTTP."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx

from .conftest import Server, poll

SLOW = "examples.jobs:SlowJob"
FLAKY = "examples.jobs:FlakyJob"
XSS = "<script>alert(1)</script>"


def test_params_are_shown_escaped(server: Server) -> None:
    """A param holding a script tag appears escaped on the list and on the job page."""
    job_id = server.dispatch("process", {"name": XSS})
    server.wait_status(job_id, "completed")
    for page in ("/jobs", f"/jobs/{job_id}"):
        html = server.api.get(page).text
        assert XSS not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page


def test_dispatch_form_inputs_follow_the_signature(server: Server) -> None:
    """str -> text (required), int/float -> number, bool -> checkbox; plus priority and delay."""
    html = server.api.get("/dispatch/examples.jobs:SampleJob/process").text
    assert re.search(r'name="p.name" type="text" value="" required', html)
    assert re.search(r'name="p.times" type="number" step="1" value="1"', html)
    assert re.search(r'type="checkbox" name="p.loud" value="true">', html)
    assert 'name="priority"' in html and 'name="delay"' in html
    assert "Greet NAME a number of TIMES" in html
    slow = server.api.get("/dispatch/examples.jobs:SlowJob/run").text
    assert re.search(r'name="p.delay" type="number" step="any" value="0.5"', slow)
    assert server.api.get("/dispatch/os:System/run").status_code == 403


def test_dispatch_form_errors_are_shown_next_to_the_fields(server: Server) -> None:
    """Bad values come back with the message beside their field, and nothing is recorded."""
    c, csrf = server.login()
    last = server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    r = c.post("/dispatch/examples.jobs:SampleJob/process",
               data={"csrf_token": csrf, "p.name": "x", "p.times": "abc", "delay": "-3"})
    assert r.status_code == 400
    assert re.search(r'data-error="times">[^<]*not a whole number', r.text)
    assert re.search(r'data-error="delay">[^<]*delay must be', r.text)
    r = c.post("/dispatch/examples.jobs:SampleJob/process",
               data={"csrf_token": csrf, "p.name": "", "p.times": "2"})
    assert r.status_code == 400
    assert re.search(r"data-error=\"name\">missing parameter &#39;name&#39;", r.text)
    assert 'value="2"' in r.text  # what was typed is kept
    assert server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"] == last


def test_dispatch_form_submits_typed_params_and_opens_the_job(server: Server) -> None:
    """A valid form redirects to the new job's page; its params have their annotated types."""
    c, csrf = server.login()
    r = c.post("/dispatch/examples.jobs:SampleJob/process",
               data={"csrf_token": csrf, "p.name": "form", "p.times": "2", "p.loud": "true",
                     "priority": "5", "delay": "0"})
    assert r.status_code == 303
    job_id = re.fullmatch(r"/jobs/(\d+)\?notice=dispatched", r.headers["location"]).group(1)
    job = server.wait_status(job_id, "completed")
    assert job["params"] == {"name": "form", "times": 2, "loud": True}
    assert job["priority"] == 5
    assert "Job submitted." in c.get(r.headers["location"]).text
    assert "dispatch" in server.api.get("/audit").text


def test_job_page_shows_attempts_traceback_events_and_output(server: Server) -> None:
    """A failed job's page has its attempt with error and traceback, its log events, its output."""
    failed = server.dispatch("fail", {"message": "boom-detail"}, target=FLAKY)
    server.wait_status(failed, "failed")
    html = server.api.get(f"/jobs/{failed}").text
    assert "RuntimeError" in html and "boom-detail" in html
    assert "Traceback (most recent call last)" in html
    for event in ("job_queued", "job_started", "job_failed"):
        assert f"<code>{event}</code>" in html, event
    ok = server.dispatch("process", {"name": "printed", "times": 3})
    server.wait_status(ok, "completed")
    page = server.api.get(f"/jobs/{ok}").text
    output = re.search(r"<pre class=\"output\" data-output>(.*?)</pre>", page, re.S).group(1)
    assert output == "hello printed\n" * 3
    assert "<code>job_completed</code>" in page


def test_running_job_page_shows_its_process(server: Server) -> None:
    """While the job runs, its page shows its pid and memory (the process is checked to be it)."""
    job_id = server.dispatch("run", {"steps": 200, "delay": 0.1}, target=SLOW)
    job = poll(lambda: (j := server.job(job_id))["status"] == "running" and j["pid"] and j,
               what="the job to run")
    html = server.api.get(f"/jobs/{job_id}").text
    assert f'data-proc="pid">{job["pid"]}<' in html
    assert re.search(r'data-proc="memory">[\d.]+ (KiB|MiB)', html)
    server.api.post(f"/api/jobs/{job_id}/cancel")


def test_list_page_filters_and_pages_by_before_id(server: Server) -> None:
    """The list filters by status, target and text and links to older pages by before_id."""
    marker = uuid.uuid4().hex
    ids = [server.dispatch("process", {"name": f"{marker}-{i}"}) for i in range(55)]
    poll(lambda: all(j["status"] == "completed" for j in server.api.get(
        "/api/jobs", params={"search": marker, "limit": 100}).json()["jobs"]), timeout=60,
        what="the jobs to complete")
    html = server.api.get("/jobs", params={"q": marker, "status": "completed",
                                           "target": "examples.jobs:SampleJob"}).text
    rows = re.findall(r'<tr data-id="(\d+)"', html)
    assert rows == sorted(ids, key=int, reverse=True)[:50]
    older = re.search(r'href="/jobs\?([^"]*)" rel="next"', html).group(1).replace("&amp;", "&")
    assert f"before_id={rows[-1]}" in older
    page2 = re.findall(r'<tr data-id="(\d+)"', server.api.get("/jobs?" + older).text)
    assert page2 == sorted(ids, key=int, reverse=True)[50:]
    assert server.api.get("/jobs", params={"status": "bogus"}).status_code == 400


def test_bulk_cancel_cancels_only_the_filtered_jobs(server: Server) -> None:
    """Bulk cancel with a target filter cancels those jobs and leaves the others alone."""
    slow = [server.dispatch("run", {"steps": 100, "delay": 0.2}, target=SLOW, delay=300)
            for _ in range(3)]
    other = server.dispatch("handle", [], delay=300)
    c, csrf = server.login()
    r = c.post("/bulk-cancel", data={"csrf_token": csrf, "target": SLOW, "status": "pending"})
    assert r.status_code == 303 and "notice=bulk" in r.headers["location"]
    assert all(server.job(j)["status"] == "cancelled" for j in slow)
    assert server.job(other)["status"] == "pending"
    assert "bulk_cancel" in server.api.get("/audit").text
    server.api.post(f"/api/jobs/{other}/cancel")


def test_cancel_and_retry_buttons_act_and_come_back(server: Server) -> None:
    """The row buttons cancel a running job and retry it; each lands on a page saying so."""
    job_id = server.dispatch("run", {"steps": 100, "delay": 0.2}, target=SLOW)
    c, csrf = server.login()
    r = c.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf, "next": "/jobs?status=running"})
    assert r.status_code == 303 and r.headers["location"] == "/jobs?status=running&notice=cancelled"
    r = c.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf})
    new_id = re.fullmatch(r"/jobs/(\d+)\?notice=retried", r.headers["location"]).group(1)
    assert server.job(new_id)["retry_of"] == job_id
    server.api.post(f"/api/jobs/{new_id}/cancel")


def sse_messages(response: httpx.Response) -> Iterator[tuple[str | None, dict]]:
    """(event name, data) for each message of an event stream."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
            event = None


def test_list_stream_sends_counts_new_jobs_and_changes(server: Server) -> None:
    """/events sends the counts, a job newer than `top`, then that job's status changes."""
    top = server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    with server.api.stream("GET", "/events", params={"top": top}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(response)
        _, first = next(messages)
        assert set(first["counts"]) >= {"pending", "running", "completed"}
        job_id = server.dispatch("run", {"steps": 5, "delay": 0.3}, target=SLOW)
        statuses = set()
        for _, data in messages:
            for job in data["new"] + data["jobs"]:
                if job["id"] == job_id:
                    statuses.add(job["status"])
            if "completed" in statuses:
                break
    assert "completed" in statuses


def test_job_stream_sends_progress_output_and_ends(server: Server) -> None:
    """/jobs/{id}/stream sends progress as it moves, then `done` once the job is final."""
    job_id = server.dispatch("run", {"steps": 4, "delay": 0.4}, target=SLOW)
    progress, done = [], False
    with server.api.stream("GET", f"/jobs/{job_id}/stream") as response:
        for event, data in sse_messages(response):
            if event == "done":
                done = True
                break
            if data["job"]["progress"]:
                progress.append(data["job"]["progress"]["done"])
    assert done
    assert len(set(progress)) >= 2 and progress == sorted(progress)


def test_overview_allowed_and_audit_pages(server: Server) -> None:
    """The overview draws its charts, the allowed page lists signatures and docstrings."""
    job_id = server.dispatch("handle", [])
    server.wait_status(job_id, "completed")
    overview = server.api.get("/").text
    assert overview.count('<svg class="chart"') == 2
    assert '<rect class="bar completed"' in overview
    allowed = server.api.get("/allowed").text
    for text in ("examples.jobs:SampleJob", "process(name: str, times: int = 1, loud: bool = False)",
                 "run(steps: int = 10, delay: float = 0.5)", "A slow job that reports its progress.",
                 "Always raise RuntimeError(MESSAGE)."):
        assert text in allowed, text
    assert server.api.get("/audit").status_code == 200


def test_list_stream_applies_the_page_filter_to_new_jobs(server: Server) -> None:
    """With a text filter, only new jobs matching it are pushed to the page."""
    marker = uuid.uuid4().hex
    top = server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    with server.api.stream("GET", "/events", params={"top": top, "q": marker}) as response:
        messages = sse_messages(response)
        next(messages)
        other = server.dispatch("process", {"name": "someone else"})
        wanted = server.dispatch("process", {"name": marker})
        pushed: list[str] = []
        for _, data in messages:
            pushed += [job["id"] for job in data["new"]]
            if wanted in pushed:
                break
    assert other not in pushed
