"""Schedules, workers, queues and limits on the dashboard (issue #11), over real HTTP.

The module's server has schedules in its allowlist and launches nothing by
itself (``BGRUNNER_AUTOSTART=0``): run-now jobs stay pending unless a test starts
a worker, so what the pages show is what the test arranged.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from bgrunner import cron, schedules
from bgrunner.allowlist import parse_config
from bgrunner.dashboard.metrics import StoreCollector
from bgrunner.model import NewJob
from bgrunner.store.factory import open_store
from bgrunner.store.memory import MemoryStore

from .conftest import ALLOWLIST, READONLY, ROOT, Server, form_value, poll, start_server

SLOW = "examples.jobs:SlowJob"

PRODUCTION = """\
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
worker_idle_exit = 3

[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]

[jobs."examples.jobs:SlowJob"]
methods = ["run"]
timeout = 120
queue = "reports"
max_running = 3
rate_limit = "30/m"
memory_limit_mb = 512
cpu_limit_s = 60

[schedules.hourly]
target = "examples.jobs:SampleJob"
method = "process"
params = {name = "from-schedule"}
every = 86400
queue = "reports"

[schedules.nightly]
target = "examples.jobs:SampleJob"
method = "handle"
cron = "0 3 * * *"
timezone = "Europe/Paris"
enabled = false

[schedules.late-one]
target = "examples.jobs:SampleJob"
method = "handle"
cron = "0 0 1 1 *"
queue = "elsewhere"
"""


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("production"), allowlist=PRODUCTION,
                     extra_env={"BGRUNNER_AUTOSTART": "0"})
    yield s
    s.stop()


def audit_entries(server: Server) -> list[Any]:
    store = open_store(server.database_url)
    try:
        return list(store.audit(limit=500))
    finally:
        store.close()


def row_of(html: str, name: str) -> str:
    found = re.search(rf'<tr id="schedule-{re.escape(name)}".*?</tr>', html, re.S)
    assert found, f"no row for schedule {name}"
    return found.group(0)


def listed(server: Server, name: str) -> dict[str, Any]:
    rows = server.api.get("/api/schedules").json()["schedules"]
    return dict(next(r for r in rows if r["name"] == name))


# -- schedules ---------------------------------------------------------------------------------
def test_schedules_page_shows_each_schedule_its_timing_queue_and_state(prod: Server) -> None:
    """Every configured schedule: target/method, cron (with its zone) or every, queue, next run, state."""
    html = prod.api.get("/schedules").text
    hourly, nightly = row_of(html, "hourly"), row_of(html, "nightly")
    assert "SampleJob" in hourly and ".process" in hourly and "every 1 d" in hourly
    assert 'href="/jobs?queue=reports"' in hourly and 'data-state="active"' in hourly
    assert re.search(r'data-field="next_run">\d{4}-\d\d-\d\d \d\d:00:00', hourly)
    assert "<code>0 3 * * *</code>" in nightly and "Europe/Paris" in nightly
    assert 'data-state="disabled"' in nightly and 'data-field="next_run">—' in nightly
    assert "never" in nightly  # no last run yet
    assert "no live worker serves this queue" in hourly
    for name in ("hourly", "nightly"):
        assert f'action="/schedules/{name}/run"' in html and f'action="/schedules/{name}/pause"' in html
    assert '<a href="/schedules" aria-current="page">Schedules</a>' in html
    assert '<a href="/workers">Workers</a>' in html


def test_run_now_from_the_page_queues_a_job_the_schedule_links_to(prod: Server) -> None:
    """Run now: a job of the schedule's target, queue and params; its page opens; audited with address."""
    c, csrf = prod.login()
    r = c.post("/schedules/hourly/run", data={"csrf_token": csrf})
    assert r.status_code == 303
    job_id = re.fullmatch(r"/jobs/(\d+)\?notice=schedule_run", r.headers["location"]).group(1)
    job = prod.job(job_id)
    assert (job["target"], job["method"], job["params"]) == ("examples.jobs:SampleJob", "process",
                                                             {"name": "from-schedule"})
    assert job["queue"] == "reports" and job["schedule"] == "hourly" and job["scheduled_for"]
    page = c.get(r.headers["location"]).text
    assert "Schedule run queued" in page and 'href="/schedules#schedule-hourly"' in page
    row = row_of(c.get("/schedules").text, "hourly")
    assert f'<a href="/jobs/{job_id}">job {job_id}</a>' in row and "s-pending" in row
    assert listed(prod, "hourly")["last_run"]["job_id"] == job_id
    entry = next(e for e in audit_entries(prod) if e.action == "schedule_run" and e.job_id == int(job_id))
    assert entry.detail == "hourly" and entry.address == "127.0.0.1" and entry.actor.startswith("session ")


def test_pause_and_resume_are_kept_in_the_store_and_audited(prod: Server) -> None:
    """Pause hides the next run and offers Resume; a second pause says so; resume restarts it."""
    c, csrf = prod.login()
    r = c.post("/schedules/nightly/pause", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/schedules?notice=paused#schedule-nightly"
    html = c.get(r.headers["location"]).text
    assert "Schedule paused" in html
    row = row_of(html, "nightly")
    assert 'action="/schedules/nightly/resume"' in row and 'action="/schedules/nightly/pause"' not in row
    assert 'data-state="disabled"' in row  # disabled in the allowlist says more than paused
    assert listed(prod, "nightly")["paused"] is True
    r = c.post("/schedules/nightly/pause", data={"csrf_token": csrf})
    assert r.headers["location"].startswith("/schedules?notice=not_paused")
    r = c.post("/schedules/nightly/resume", data={"csrf_token": csrf})
    assert r.headers["location"].startswith("/schedules?notice=resumed")
    assert listed(prod, "nightly")["paused"] is False
    details = [(e.action, e.detail) for e in audit_entries(prod) if e.action.startswith("schedule_")]
    for expected in (("schedule_pause", "nightly"), ("schedule_pause", "nightly (already paused)"),
                     ("schedule_resume", "nightly")):
        assert expected in details


def test_read_only_sees_the_schedules_but_no_buttons_and_cannot_act(prod: Server) -> None:
    """The read-only session has no Run/Pause forms; its posts and its token's API posts are 403."""
    ro = prod.client(READONLY)
    assert ro.get("/api/schedules").status_code == 200 and ro.get("/api/workers").status_code == 200
    browser, csrf = prod.login(READONLY)
    assert browser.get("/workers").status_code == 200
    html = browser.get("/schedules").text
    assert "hourly" in html and "act-run" not in html and "act-pause" not in html
    for action in ("run", "pause", "resume"):
        r = browser.post(f"/schedules/hourly/{action}", data={"csrf_token": csrf})
        assert r.status_code == 403, action
        r = prod.client(READONLY).post(f"/api/schedules/hourly/{action}")
        assert r.status_code == 403 and "read-only" in r.json()["error"], action
    assert listed(prod, "hourly")["paused"] is False
    denied = [e for e in audit_entries(prod) if e.action == "denied" and "/schedules/hourly/" in (e.detail or "")]
    assert len(denied) >= 6


def test_schedule_posts_need_the_csrf_token(prod: Server) -> None:
    c, _csrf = prod.login()
    before = listed(prod, "hourly")["last_run"]
    for action in ("run", "pause", "resume"):
        assert c.post(f"/schedules/hourly/{action}", data={}).status_code == 403
        assert c.post(f"/schedules/hourly/{action}", data={"csrf_token": "wrong"}).status_code == 403
    assert listed(prod, "hourly")["last_run"] == before


def test_unknown_schedules_are_not_found(prod: Server) -> None:
    """A name the allowlist does not have (or could not have) is 404, as a page and as JSON."""
    c, csrf = prod.login()
    for name in ("nope", "a%20b", "x" * 65, "%E2%98%83"):
        r = c.post(f"/schedules/{name}/run", data={"csrf_token": csrf})
        assert r.status_code == 404, name
        r = prod.api.post(f"/api/schedules/{name}/pause")
        assert r.status_code == 404 and "error" in r.json(), name


def test_api_lists_schedules_and_acts_on_them(prod: Server) -> None:
    """GET /api/schedules is the listing; run answers 201 with the id; pause/resume say if it changed."""
    rows = prod.api.get("/api/schedules").json()["schedules"]
    assert [r["name"] for r in rows] == ["hourly", "late-one", "nightly"]
    nightly = next(r for r in rows if r["name"] == "nightly")
    assert nightly["cron"] == "0 3 * * *" and nightly["every"] is None
    assert nightly["timezone"] == "Europe/Paris" and nightly["enabled"] is False
    r = prod.api.post("/api/schedules/hourly/run")
    assert r.status_code == 201
    job_id = r.json()["id"]
    assert isinstance(job_id, str) and prod.job(job_id)["schedule"] == "hourly"
    assert listed(prod, "hourly")["last_run"] == {"job_id": job_id, "status": "pending",
                                                  "scheduled_for": prod.job(job_id)["scheduled_for"]}
    assert prod.api.post("/api/schedules/hourly/pause").json() == {"name": "hourly", "paused": True,
                                                                    "changed": True}
    assert prod.api.post("/api/schedules/hourly/pause").json()["changed"] is False
    assert listed(prod, "hourly")["next_run"] is None
    assert prod.api.post("/api/schedules/hourly/resume").json() == {"name": "hourly", "paused": False,
                                                                     "changed": True}
    assert listed(prod, "hourly")["next_run"] is not None
    actors = {e.actor for e in audit_entries(prod) if e.action == "schedule_run" and e.job_id == int(job_id)}
    assert actors == {"api:admin"}


# -- queues and limits ---------------------------------------------------------------------
def test_job_list_shows_the_queue_and_filters_by_it(prod: Server) -> None:
    """The queue column and filter on the page, ?queue= on the API; a bad name is a 400 on both."""
    slow = prod.dispatch("run", {"steps": 1}, target=SLOW)
    plain = prod.dispatch("handle", [])
    assert prod.job(slow)["queue"] == "reports" and prod.job(plain)["queue"] == "default"
    html = prod.api.get("/jobs", params={"queue": "reports"}).text
    assert f'data-id="{slow}"' in html and f'data-id="{plain}"' not in html
    assert 'name="queue" value="reports"' in html and '<option value="elsewhere">' in html
    assert '<td class="queue"><a href="/jobs?queue=reports">reports</a></td>' in html
    ids = [j["id"] for j in prod.api.get("/api/jobs", params={"queue": "default", "limit": 500}).json()["jobs"]]
    assert plain in ids and slow not in ids
    assert prod.api.get("/api/jobs", params={"queue": "nothing-here"}).json()["jobs"] == []
    for bad in ("a b", "x" * 65, "é", "a/b"):
        page = prod.api.get("/jobs", params={"queue": bad})
        assert page.status_code == 400 and "queue" in page.text, bad
        r = prod.api.get("/api/jobs", params={"queue": bad})
        assert r.status_code == 400 and "queue" in r.json()["error"], bad


def test_api_dispatch_takes_a_queue_and_a_unique_key(prod: Server) -> None:
    """POST /api/jobs with queue and unique_key: the job waits in that queue; a second post of the
    key while it is pending returns the same id; a bad queue or key is a 400 recording nothing."""
    body = {"target": "examples.jobs:SampleJob", "method": "handle", "params": [],
            "queue": "elsewhere", "unique_key": "api-once"}
    first = prod.api.post("/api/jobs", json=body)
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]
    assert prod.job(job_id)["queue"] == "elsewhere" and prod.job(job_id)["unique_key"] == "api-once"
    again = prod.api.post("/api/jobs", json=body)
    assert again.status_code == 201 and again.json()["id"] == job_id
    last = prod.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    for bad in ({"queue": "a b"}, {"queue": 5}, {"unique_key": ""}, {"unique_key": "x" * 201}):
        r = prod.api.post("/api/jobs", json={**body, **bad})
        assert r.status_code == 400, (bad, r.text)
    assert prod.api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["id"] == last
    prod.api.post(f"/api/jobs/{job_id}/cancel")


def test_bulk_cancel_keeps_to_the_queue_filter(prod: Server) -> None:
    c, csrf = prod.login()
    slow = prod.dispatch("run", {"steps": 1}, target=SLOW)
    plain = prod.dispatch("handle", [])
    r = c.post("/bulk-cancel", data={"csrf_token": csrf, "queue": "reports"})
    assert r.status_code == 303 and "queue=reports" in r.headers["location"]
    assert prod.job(slow)["status"] == "cancelled" and prod.job(plain)["status"] == "pending"
    prod.api.post(f"/api/jobs/{plain}/cancel")


def test_job_page_shows_its_queue_and_its_targets_limits(prod: Server) -> None:
    slow = prod.dispatch("run", {"steps": 1}, target=SLOW)
    html = prod.api.get(f"/jobs/{slow}").text
    assert '<dd data-fact="queue"><a href="/jobs?queue=reports">reports</a></dd>' in html
    limits = re.search(r'<dl class="facts" data-limits>.*?</dl>', html, re.S).group(0)
    for text in ("at most 3", "at most 30/m", "512 MB per attempt", "60 s per attempt"):
        assert text in limits, text
    plain = prod.dispatch("handle", [])
    limits = re.search(r'<dl class="facts" data-limits>.*?</dl>', prod.api.get(f"/jobs/{plain}").text,
                       re.S).group(0)
    assert limits.count("no limit") == 4


def test_job_page_of_a_target_no_longer_allowed_says_its_limits_are_unknown(
        fresh_server: Callable[..., Server]) -> None:
    server = fresh_server(extra_env={"BGRUNNER_AUTOSTART": "0"})
    job_id = server.dispatch("fail", {"message": "x"}, target="examples.jobs:FlakyJob")
    assert "no limit" in server.api.get(f"/jobs/{job_id}").text
    (server.root / "allowed_jobs.toml").write_text(ALLOWLIST.split('[jobs."examples.jobs:FlakyJob"]')[0])
    poll(lambda: "no longer in the allowlist" in server.api.get(f"/jobs/{job_id}").text,
         what="the job page to see the allowlist change")


# -- workers -------------------------------------------------------------------------------------
@pytest.fixture
def reports_worker(prod: Server) -> Iterator[subprocess.Popen[bytes]]:
    """``bgrunner worker --queue reports --concurrency 2`` on the module's store (stopped after)."""
    with open(prod.root / "worker.err", "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--queue", "reports",
                                 "--concurrency", "2"], cwd=ROOT, env=prod.env,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_workers_page_and_api_show_each_worker_its_queues_and_running_jobs(
        prod: Server, reports_worker: subprocess.Popen[bytes]) -> None:
    job_id = prod.dispatch("run", {"steps": 300, "delay": 0.1}, target=SLOW)

    def mine() -> dict[str, Any] | None:
        for w in prod.api.get("/api/workers").json()["workers"]:
            if w["pid"] == reports_worker.pid and job_id in w["running"]:
                return dict(w)
        return None

    worker = poll(mine, timeout=30, what="the worker to run the slow job")
    assert worker["queues"] == ["reports"] and worker["concurrency"] == 2
    assert worker["id"].endswith(f":{reports_worker.pid}") and worker["seen_ago"] >= 0
    html = prod.api.get("/workers").text
    row = re.search(rf'<tr id="worker-{re.escape(worker["id"])}".*?</tr>', html, re.S).group(0)
    assert f'<a href="/jobs/{job_id}">{job_id}</a>' in row
    assert '<a href="/jobs?queue=reports">reports</a>' in row, row
    assert re.search(r'<td class="num">[12]/2</td>', row), row
    assert re.search(r"\(\d[^)]* ago\)", row)
    assert '<a href="/workers" aria-current="page">Workers</a>' in html
    assert "no live worker serves this queue" not in row_of(prod.api.get("/schedules").text, "hourly")
    job_page = prod.api.get(f"/jobs/{job_id}").text
    assert 'href="/workers#worker-' in job_page
    prod.api.post(f"/api/jobs/{job_id}/cancel")


def test_workers_page_without_workers(fresh_server: Callable[..., Server]) -> None:
    server = fresh_server(extra_env={"BGRUNNER_AUTOSTART": "0"})
    assert "No live worker" in server.api.get("/workers").text
    assert server.api.get("/api/workers").json() == {"workers": []}


# -- metrics ------------------------------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_metrics_per_queue_and_schedule_lateness(prod: Server) -> None:
    """Depth and running per queue (configured queues always present); lateness of a due schedule."""
    text = prod.api.get("/metrics").text
    for queue in ("default", "reports", "elsewhere"):
        assert metric(text, "bgrunner_queue_depth", queue=queue) is not None, queue
        assert metric(text, "bgrunner_queue_running", queue=queue) is not None, queue
    before = metric(text, "bgrunner_queue_depth", queue="elsewhere")
    store = open_store(prod.database_url)
    try:
        store.create(NewJob(target="examples.jobs:SampleJob", method="handle", params=[], priority=0,
                            max_attempts=1, retry_delay=0, timeout=0, run_at=0, queue="elsewhere"))
        spec = parse_config(PRODUCTION, "t.toml").schedules["late-one"]
        store.sync_schedule("late-one", spec=cron.spec_key(**schedules.when(spec)),
                            next_at=store.clock() - 120)
    finally:
        store.close()
    text = prod.api.get("/metrics").text
    assert metric(text, "bgrunner_queue_depth", queue="elsewhere") == (before or 0) + 1
    late = metric(text, "bgrunner_schedule_lateness_seconds", schedule="late-one")
    assert late is not None and 120 <= late < 600
    assert metric(text, "bgrunner_schedule_lateness_seconds", schedule="nightly") is None  # disabled
    row = row_of(prod.api.get("/schedules").text, "late-one")
    assert "data-late" in row and "min" in row


def test_lateness_counts_only_enabled_unpaused_configured_schedules() -> None:
    """Late by now - next_at, 0 when on time; paused, disabled, unconfigured or unsynced: no series."""
    config = parse_config(PRODUCTION, "t.toml")
    store = MemoryStore("memory://")
    now = store.clock()
    store.sync_schedule("late-one", spec="s", next_at=now - 50)
    store.sync_schedule("hourly", spec="s", next_at=now + 500)
    store.sync_schedule("nightly", spec="s", next_at=now - 50)  # disabled
    store.sync_schedule("gone", spec="s", next_at=now - 50)  # not in the allowlist any more
    ctx = SimpleNamespace(store=store, config=config)
    families = {m.name: m for m in StoreCollector(lambda: ctx).collect()}
    values = {s.labels["schedule"]: s.value for s in families["bgrunner_schedule_lateness_seconds"].samples}
    assert set(values) == {"late-one", "hourly"}
    assert 50 <= values["late-one"] < 60 and values["hourly"] == 0
    store.pause_schedule("late-one", paused=True)
    families = {m.name: m for m in StoreCollector(lambda: ctx).collect()}
    assert {s.labels["schedule"] for s in families["bgrunner_schedule_lateness_seconds"].samples} == {"hourly"}
    depth = {s.labels["queue"]: s.value for s in families["bgrunner_queue_depth"].samples}
    assert depth == {"default": 0, "reports": 0, "elsewhere": 0}


def test_schedule_page_forms_carry_the_session_csrf_token(prod: Server) -> None:
    c, csrf = prod.login()
    html = c.get("/schedules").text
    assert form_value(row_of(html, "hourly"), "csrf_token") == csrf
