"""The JSON API and /metrics, against the real server with jobs really running."""

from __future__ import annotations

import uuid

import psutil

from bgrunner.store.factory import open_store

from .conftest import Server, poll

SLOW = "examples.jobs:SlowJob"
FLAKY = "examples.jobs:FlakyJob"


def stored(server: Server, job_id: str) -> dict[str, object]:
    store = open_store(server.database_url)
    try:
        record = store.get(int(job_id))
        assert record is not None
        return record.to_dict()
    finally:
        store.close()


def test_records_are_exactly_the_public_record(server: Server) -> None:
    """GET /api/jobs and /api/jobs/{id} answer JobRecord.to_dict(), field for field."""
    job_id = server.dispatch("process", {"name": "record", "times": 2})
    done = server.wait_status(job_id, "completed")
    assert done == stored(server, job_id)
    assert done["result"] == {"greeting": "hello record", "times": 2}
    listed = server.api.get("/api/jobs", params={"limit": 500}).json()["jobs"]
    assert next(j for j in listed if j["id"] == job_id) == stored(server, job_id)


def test_list_filters_and_keyset_pages(server: Server) -> None:
    """Filters by status, target and text; pages follow next_before_id, newest first, no overlap."""
    marker = uuid.uuid4().hex
    ids = [server.dispatch("process", {"name": f"{marker}-{i}"}) for i in range(7)]
    for job_id in ids:
        server.wait_status(job_id, "completed")
    seen: list[str] = []
    before = None
    while True:
        params = {"search": marker, "limit": 3, **({"before_id": before} if before else {})}
        page = server.api.get("/api/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert seen == sorted(ids, key=int, reverse=True)
    only = server.api.get("/api/jobs", params={"search": marker, "status": "failed"}).json()
    assert only == {"jobs": [], "next_before_id": None}
    by_target = server.api.get("/api/jobs", params={"target": SLOW, "search": marker}).json()
    assert by_target["jobs"] == []
    assert server.api.get("/api/jobs", params={"status": "nope"}).status_code == 400
    assert server.api.get("/api/jobs", params={"limit": 0}).status_code == 400
    assert server.api.get("/api/jobs", params={"before_id": "x"}).status_code == 400


def test_unknown_or_invalid_ids_are_404(server: Server) -> None:
    """Every id that names no job answers 404 with a JSON error, on every job route."""
    for bad in ("999999999", "abc", "0", "-1", "1.5", "9" * 30):
        assert server.api.get(f"/api/jobs/{bad}").status_code == 404, bad
        r = server.api.post(f"/api/jobs/{bad}/cancel")
        assert r.status_code == 404 and "error" in r.json(), bad
        assert server.api.post(f"/api/jobs/{bad}/retry").status_code == 404, bad


def test_dispatch_runs_the_job_and_validates_like_run_background_job(server: Server) -> None:
    """A good body gives 201 and a job that runs; bad ones give 400/403 and record nothing."""
    before = server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"]
    last = before[0]["id"] if before else "0"
    bad_bodies = [
        ({"target": "os:System", "method": "run"}, 403, "not in the allowlist"),
        ({"target": "examples.jobs:SampleJob", "method": "_private"}, 403, "private"),
        ({"target": "examples.jobs:SampleJob", "method": "delete"}, 403, "not allowed"),
        ({"target": "examples.jobs:SampleJob", "method": "process", "params": {"times": 2}},
         400, "missing parameter 'name'"),
        ({"target": "examples.jobs:SampleJob", "method": "process",
          "params": {"name": "x", "times": "many"}}, 400, "parameter 'times'"),
        ({"target": "examples.jobs:SampleJob", "method": "process", "params": "x"}, 400,
         "params must be a list or a dict"),
        ({"target": "examples.jobs:SampleJob", "method": "handle", "priority": "high"}, 400,
         "priority"),
        ({"target": "examples.jobs:SampleJob", "method": "handle", "delay": -1}, 400, "delay"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, text in bad_bodies:
        r = server.api.post("/api/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        assert text in r.json()["error"], (body, r.text)
    r = server.api.post("/api/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    after = server.api.get("/api/jobs", params={"limit": 1}).json()["jobs"]
    assert (after[0]["id"] if after else "0") == last
    job_id = server.dispatch("process", ["positional", 3, True])
    assert server.wait_status(job_id, "completed")["result"] == {"greeting": "HELLO POSITIONAL",
                                                                 "times": 3}


def test_cancel_stops_a_running_job(server: Server) -> None:
    """POST cancel on a running job: {"cancelled": true}, status cancelled, process gone."""
    job_id = server.dispatch("run", {"steps": 200, "delay": 0.1}, target=SLOW)
    running = poll(lambda: (j := server.job(job_id))["status"] == "running" and j["pid"] and j,
                   what="the job to run")
    r = server.api.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json() == {"cancelled": True}
    assert server.job(job_id)["status"] == "cancelled"
    poll(lambda: not _alive(running["pid"]), what="the job's process to end")
    again = server.api.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json() == {"cancelled": False}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_retry_creates_a_linked_job(server: Server) -> None:
    """A failed job retried gives a new job with retry_of set; a completed one cannot be retried."""
    failed = server.dispatch("fail", {"message": "retry me"}, target=FLAKY)
    assert server.wait_status(failed, "failed")["error"]
    r = server.api.post(f"/api/jobs/{failed}/retry")
    assert r.status_code == 201
    new = server.job(r.json()["id"])
    assert new["retry_of"] == failed and new["params"] == {"message": "retry me"}
    done = server.dispatch("handle", [])
    server.wait_status(done, "completed")
    r = server.api.post(f"/api/jobs/{done}/retry")
    assert r.status_code == 409 and "only failed or cancelled" in r.json()["error"]


def test_api_actions_are_audited(server: Server) -> None:
    """Dispatch, cancel and retry through the API appear on /audit with the token named, "api:admin"."""
    job_id = server.dispatch("run", {"steps": 100, "delay": 0.1}, target=SLOW)
    server.api.post(f"/api/jobs/{job_id}/cancel")
    server.api.post(f"/api/jobs/{job_id}/retry")
    html = server.api.get("/audit").text
    for action in ("dispatch", "cancel", "retry"):
        assert f">{action}<" in html
    assert f'<a href="/jobs/{job_id}">{job_id}</a>' in html
    assert "<td>api:admin</td>" in html


def test_metrics_in_prometheus_format(server: Server) -> None:
    """/metrics needs a login and reports jobs by status, attempts, durations, queue, processes."""
    job_id = server.dispatch("handle", [])
    server.wait_status(job_id, "completed")
    assert server.client().get("/metrics").status_code == 401
    r = server.api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in ('bgrunner_jobs{status="completed"}', 'bgrunner_jobs{status="pending"}',
                 "bgrunner_attempts_total", 'bgrunner_job_duration_seconds_bucket{le="+Inf"}',
                 "bgrunner_job_duration_seconds_count", "bgrunner_queue_depth",
                 "bgrunner_running_processes"):
        assert line in text, line
    completed = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith('bgrunner_jobs{status="completed"}'))
    assert completed >= 1


def test_openapi_schema_describes_the_api(server: Server) -> None:
    """The schema lists every API operation and the bearer security scheme."""
    doc = server.api.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel",
                                 "/api/jobs/{job_id}/retry", "/api/logs", "/api/workers", "/api/schedules",
                                 "/api/schedules/{name}/run", "/api/schedules/{name}/pause",
                                 "/api/schedules/{name}/resume"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
