"""Schedules (CONTRACT §11) with real workers: each occurrence fires once across workers and hosts,
overlap = "skip", catch-up after downtime, pause/resume from another process, the CLI, bad config.

A "host" is a ``BGRUNNER_HOST_ID`` with its own run folder (``XDG_RUNTIME_DIR``); on SQLite
the workers share one host. ``every = N`` occurrences are the multiples of N seconds since
the epoch, so the tests know them in advance. The fired runs are read back from the store
(``schedule``, ``scheduled_for``) and from the event log (``schedule_fired``,
``schedule_skipped``). The tests wait for a while where the scenario is "time passes"
(workers run for 20 s); everything else is polled.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgrunner.model import iso
from tests.conftest import ROOT, Project, stop_workers, wait_until

JOBS_MODULE = '''
import os
import time


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Work:
    def mark(self, path: str) -> None:
        """Append "id start t" to PATH."""
        _append(path, f"{os.environ['BGRUNNER_JOB_ID']} start {time.time()!r}\\n")

    def hold(self, path: str, seconds: float) -> None:
        """Note "id start t" in PATH, sleep, note "id end t"."""
        job = os.environ["BGRUNNER_JOB_ID"]
        _append(path, f"{job} start {time.time()!r}\\n")
        time.sleep(seconds)
        _append(path, f"{job} end {time.time()!r}\\n")
'''

CONFIG = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
launch = "fork"

[jobs."sjobs:Work"]
methods = ["mark", "hold"]
"""


def schedule(name: str, method: str, params: list[Any], **keys: Any) -> str:
    """A ``[schedules.NAME]`` table."""
    lines = [f"\n[schedules.{name}]", 'target = "sjobs:Work"', f'method = "{method}"',
             f"params = {json.dumps(params)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


class Sandbox:
    """A project plus the processes a test starts in it (all stopped at teardown)."""

    def __init__(self, project: Project, tmp_path: Path, backend: str) -> None:
        self.project = project
        self.tmp_path = tmp_path
        self.backend = backend
        self.procs: list[subprocess.Popen[bytes]] = []
        self.marks = tmp_path / "marks"

    def host_env(self, host: str) -> dict[str, str]:
        run = self.tmp_path / f"run-{host}"
        if not run.exists():
            run.mkdir(mode=0o700)
            os.chmod(run, stat.S_IRWXU)
        return {**self.project.env, "BGRUNNER_HOST_ID": host, "XDG_RUNTIME_DIR": str(run),
                "BGRUNNER_AUTOSTART": "0"}

    def configure(self, *schedules: str) -> None:
        self.project.write_config(CONFIG + "".join(schedules))

    def worker(self, host: str, *args: str, stderr: Any = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT,
                                env=self.host_env(host), stderr=stderr)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, host: str = "host-a", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bgrunner", *args], cwd=ROOT, env=self.host_env(host),
                              capture_output=True, text=True, timeout=timeout)

    def runs(self, name: str) -> list[Any]:
        """The jobs schedule ``name`` fired, by scheduled_for."""
        return sorted((j for j in self.project.jobs() if j.schedule == name),
                      key=lambda j: (j.scheduled_for, j.id))

    def events(self, event: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.project.events() if e["event"] == event and e.get("schedule") == name]

    def wait_registered(self, procs: list[subprocess.Popen[bytes]]) -> float:
        """Wait until every worker in ``procs`` is registered and has logged ``worker_started``
        (its template is up: its loop, and its first tick, come next); the time they all had."""
        pids = {p.pid for p in procs}

        def up() -> bool:
            started = {e.get("worker_pid") for e in self.project.events() if e["event"] == "worker_started"}
            if not pids <= started:
                return False
            store = self.project.store()
            try:
                return pids <= {w.pid for w in store.workers()}
            finally:
                store.close()

        wait_until(up, timeout=30, message="the workers to start")
        return time.time()

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """One SIGTERM each (a warm stop: running jobs end first); all of them at once."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=40) == 0

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)  # cold: running jobs are cancelled
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stop_workers(self.project.database_url)


def make_project(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Project:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        from tests.backends import fresh_postgres_url, require_postgres

        require_postgres()
        url = fresh_postgres_url(request)
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "sjobs.py").write_text(JOBS_MODULE)
    p = Project(root=tmp_path, database_url=url, extra_env={"PYTHONPATH": f"{mods}{os.pathsep}{ROOT}"})
    p.write_config(CONFIG)
    return p


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(make_project(request, tmp_path, request.param), tmp_path, request.param)
    yield sandbox
    sandbox.stop_all()


@pytest.fixture
def sqlite_box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(make_project(request, tmp_path, "sqlite"), tmp_path, "sqlite")
    yield sandbox
    sandbox.stop_all()


def spans(path: Path) -> dict[int, dict[str, float]]:
    """Job id -> {"start": t, "end": t} as the jobs noted them."""
    found: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        job, what, at = line.split()
        found.setdefault(int(job), {})[what] = float(at)
    return found


#: The store's clock may read a little ahead of the hosts' (SQLite: julianday('now') as a float).
CLOCK_EPS = 0.01


def fired_events(box: Sandbox, name: str) -> list[tuple[int, str]]:
    """(job id, scheduled_for) of each ``schedule_fired`` event of ``name`` (manual runs left out)."""
    return [(int(e["job_id"]), e["scheduled_for"]) for e in box.events("schedule_fired", name)
            if not e.get("manual")]


def assert_each_occurrence_once(runs: list[Any], every: float) -> None:
    """One run per occurrence, the occurrences consecutive multiples of ``every``."""
    per = Counter(j.scheduled_for for j in runs)
    assert [t for t, c in per.items() if c != 1] == [], f"occurrences fired more than once: {per}"
    times = [j.scheduled_for for j in runs]
    assert all(t % every == 0 for t in times), times
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    assert set(gaps) <= {every}, f"occurrences missed: gaps {gaps}"


# -- 1. each occurrence exactly once --------------------------------------------------------
def test_every_occurrence_fires_exactly_once_across_three_workers(box: Sandbox) -> None:
    """every = 2, three workers (PostgreSQL: two host ids; SQLite: one host) for 20 s: each
    occurrence has exactly one job, consecutive occurrences 2 s apart with none missing from
    the first (fired within one period of the workers' start) to the end; the schedule_fired
    events are exactly those jobs; the records carry schedule and scheduled_for."""
    box.configure(schedule("tick", "mark", [str(box.marks)], every=2))
    hosts = ["host-a", "host-a", "host-b"] if box.backend == "postgres" else ["host-a"] * 3
    workers = [box.worker(host, "--concurrency", "2") for host in hosts]
    up = box.wait_registered(workers)
    time.sleep(20)  # the scenario: three workers tick side by side for 20 s
    stopped = time.time()
    box.stop(workers)

    runs = box.runs("tick")
    assert_each_occurrence_once(runs, 2)
    times = [j.scheduled_for for j in runs]
    # A worker syncs the schedule at its first tick, right after worker_started, and fires from
    # the next occurrence on; allow that first tick a period's delay on a busy machine.
    assert times and times[0] <= up + 2 + 2, f"the first occurrence fired {times[0] - up:.1f} s after the start"
    assert times[-1] >= stopped - 2 - 1.5, f"occurrences kept firing to the end ({stopped - times[-1]:.1f} s)"
    assert len(times) >= 8, times
    for job in runs:
        assert job.schedule == "tick" and job.queue == "default" and job.target == "sjobs:Work", job
        assert job.created_at >= job.scheduled_for - CLOCK_EPS, "fired at or after its occurrence"
        if job.scheduled_for <= stopped - 3:
            assert job.status == "completed", (job.id, job.status, job.error)
    events = fired_events(box, "tick")
    assert sorted(events) == sorted((j.id, iso(j.scheduled_for)) for j in runs), "one event per fired run"
    recorded = json.loads(box.cli("status", str(runs[0].id), "--json").stdout)
    assert recorded["schedule"] == "tick" and recorded["scheduled_for"] == iso(runs[0].scheduled_for)
    ran = spans(box.marks)
    assert all(ran.get(j.id) for j in runs if j.status == "completed"), "each run ran"
    if box.backend == "postgres":
        assert {j.host for j in runs} <= {"host-a", "host-b"}


# -- 2. overlap = "skip" ------------------------------------------------------------------------
def test_overlap_skip_never_runs_two_at_once_and_logs_the_skips(sqlite_box: Sandbox) -> None:
    """every = 2, overlap = "skip", a run of 5 s, two workers: no two runs overlap; after a run the
    next one fired is the first occurrence at or after its end (the last before it at most, if it
    ended just before a tick looked); every occurrence in between is logged schedule_skipped with
    a reason naming the run still going."""
    box = sqlite_box
    box.configure(schedule("slow", "hold", [str(box.marks), 5], every=2, overlap="skip"))
    workers = [box.worker("host-a", "--concurrency", "2") for _ in range(2)]
    box.wait_registered(workers)
    wait_until(lambda: len([j for j in box.runs("slow") if j.status == "completed"]) >= 2, timeout=35,
               interval=0.1, message="two runs of the slow schedule to end")
    box.stop(workers)

    runs = box.runs("slow")
    ran = spans(box.marks)
    done = [j for j in runs if j.status == "completed"]
    assert len(done) >= 2
    for before, after in zip(runs, runs[1:], strict=False):
        assert before.finished_at is not None, f"run {after.id} fired while run {before.id} had not ended"
        if after.started_at is not None:  # (the last one may have been fired as the workers stopped)
            assert after.started_at >= before.finished_at, "two runs at once (store)"
            assert ran[after.id]["start"] >= ran[before.id]["end"], "two runs at once (the processes)"
        first_free = math.ceil(before.finished_at / 2) * 2
        assert after.scheduled_for in (first_free, first_free - 2), (before.finished_at, after.scheduled_for)
        if after.scheduled_for < before.finished_at:
            assert before.finished_at - after.scheduled_for < 1.0, "fired while the previous one ran"
    skipped = box.events("schedule_skipped", "slow")
    fired = {j.id for j in runs}
    assert skipped, "occurrences during a run are skipped"
    for e in skipped:
        named = {int(x) for x in re.findall(r"\d+", e["reason"])} & fired
        assert named, f"the reason names the run still going: {e['reason']!r}"
        assert "not ended" in e["reason"], e
    # Between two fired runs, the occurrences are each skipped once (4 s of a 5 s run: two).
    between = sum(round((b.scheduled_for - a.scheduled_for) / 2) - 1 for a, b in zip(runs, runs[1:], strict=False))
    assert len(skipped) >= between, (len(skipped), between)
    if all("scheduled_for" in e for e in skipped):  # the occurrence each skip was for, if logged
        occurrences = sorted([iso(j.scheduled_for) for j in runs] + [e["scheduled_for"] for e in skipped])
        assert len(occurrences) == len(set(occurrences)), "an occurrence both fired and skipped, or twice"
        first, last = runs[0].scheduled_for, runs[-1].scheduled_for
        inside = [o for o in occurrences if iso(first) <= o <= iso(last)]
        assert inside == [iso(first + 2 * k) for k in range(round((last - first) / 2) + 1)]


# -- 3. catch-up ---------------------------------------------------------------------------------
def test_after_downtime_only_the_latest_missed_occurrence_fires(box: Sandbox) -> None:
    """every = 1: a worker runs, stops (SIGTERM), > 3 occurrences pass, another worker (PostgreSQL:
    another host) starts: exactly one run for the missed ones, for the latest of them; then one
    per occurrence again."""
    box.configure(schedule("tick", "mark", [str(box.marks)], every=1))
    first = box.worker("host-a", "--concurrency", "2")
    box.wait_registered([first])
    wait_until(lambda: len(box.runs("tick")) >= 2, timeout=20, message="two runs before the downtime")
    box.stop([first])
    before = box.runs("tick")
    last_before = before[-1].scheduled_for
    time.sleep(max(0.0, last_before + 4.5 - time.time()))  # the downtime: 4 occurrences pass unserved
    restart = time.time()
    second = box.worker("host-b" if box.backend == "postgres" else "host-a", "--concurrency", "2")
    wait_until(lambda: len(box.runs("tick")) >= len(before) + 4, timeout=20, message="runs after the restart")
    box.stop([second])

    runs = box.runs("tick")
    after = [j for j in runs if j.scheduled_for > last_before]
    catch_up = after[0]
    missed = round(catch_up.scheduled_for - last_before) - 1
    assert missed >= 3, f"only {missed} occurrences were missed"
    # The latest missed one: not one from before the restart, and (with the occurrences after it
    # consecutive) not one older than the latest at its firing either.
    assert catch_up.scheduled_for >= math.floor(restart), "the catch-up is for the latest missed occurrence"
    assert catch_up.created_at >= catch_up.scheduled_for - CLOCK_EPS
    assert_each_occurrence_once(after, 1)  # then normal: one per occurrence
    assert_each_occurrence_once(before, 1)
    assert len(after) >= 4
    fired = fired_events(box, "tick")
    assert sorted(fired) == sorted((j.id, iso(j.scheduled_for)) for j in runs)
    if box.backend == "postgres":
        assert {j.host for j in after} == {"host-b"}


# -- 4. pause and resume from another process -------------------------------------------------------
def test_pause_and_resume_from_another_process(sqlite_box: Sandbox) -> None:
    """`bgrunner schedules pause tick` while two workers run: nothing fires while paused (and
    `schedules --json` says paused); `resume`: it fires again, from an occurrence after the resume."""
    box = sqlite_box
    box.configure(schedule("tick", "mark", [str(box.marks)], every=1))
    workers = [box.worker("host-a", "--concurrency", "2") for _ in range(2)]
    box.wait_registered(workers)
    wait_until(lambda: len(box.runs("tick")) >= 2, timeout=20, message="two runs before the pause")
    r = box.cli("schedules", "pause", "tick")
    assert r.returncode == 0, r.stderr
    paused = time.time()
    [row] = json.loads(box.cli("schedules", "--json").stdout)
    assert row["paused"] is True, row
    time.sleep(3.5)  # three occurrences pass while paused
    assert [j.id for j in box.runs("tick") if j.created_at > paused] == [], "fired while paused"
    count = len(box.runs("tick"))

    resuming = time.time()
    r = box.cli("schedules", "resume", "tick")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(box.cli("schedules", "--json").stdout)
    assert row["paused"] is False and row["next_run"] is not None, row
    wait_until(lambda: len(box.runs("tick")) >= count + 2, timeout=15, message="runs after the resume")
    box.stop(workers)
    new = box.runs("tick")[count:]
    assert all(j.scheduled_for > resuming for j in new), "what was missed while paused is not made up"
    assert_each_occurrence_once(box.runs("tick")[:count], 1)
    assert_each_occurrence_once(new, 1)


# -- 5. the CLI -------------------------------------------------------------------------------------
def test_schedules_cli_lists_runs_now_and_refuses_unknown_names(sqlite_box: Sandbox) -> None:
    """`bgrunner schedules --json` lists every schedule with its fields; `schedules run NAME`
    prints a job id whose record has schedule = NAME (and becomes the last run); pause/resume
    show in the listing; an unknown name is exit 1 with one line."""
    box = sqlite_box
    box.configure(schedule("nightly", "mark", [str(box.marks)], cron="0 3 * * *", timezone="Europe/Berlin"),
                  schedule("often", "mark", [str(box.marks)], every=300))
    r = box.cli("schedules", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"nightly", "often"}
    for row in rows.values():
        assert {"name", "target", "method", "cron", "every", "timezone", "next_run", "last_run",
                "paused"} <= set(row), row
        assert row["target"] == "sjobs:Work" and row["method"] == "mark" and row["paused"] is False
        assert row["last_run"] is None and row["next_run"] is not None
    assert (rows["nightly"]["cron"], rows["nightly"]["every"], rows["nightly"]["timezone"]) == (
        "0 3 * * *", None, "Europe/Berlin")
    assert rows["often"]["cron"] is None and rows["often"]["every"] == 300
    assert rows["often"]["timezone"] == "UTC"

    before = time.time()
    r = box.cli("schedules", "run", "nightly")
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.strip())
    job = box.project.job(job_id)
    assert job.schedule == "nightly" and job.status == "pending"  # autostart is off, no worker
    assert job.scheduled_for is not None and job.scheduled_for >= before - 1
    rows = {row["name"]: row for row in json.loads(box.cli("schedules", "--json").stdout)}
    assert rows["nightly"]["last_run"]["job_id"] in (job_id, str(job_id))
    assert rows["nightly"]["last_run"]["status"] == "pending"
    assert rows["often"]["last_run"] is None

    assert box.cli("schedules", "pause", "often").returncode == 0
    rows = {row["name"]: row for row in json.loads(box.cli("schedules", "--json").stdout)}
    assert rows["often"]["paused"] is True and rows["nightly"]["paused"] is False
    assert box.cli("schedules", "resume", "often").returncode == 0
    rows = {row["name"]: row for row in json.loads(box.cli("schedules", "--json").stdout)}
    assert rows["often"]["paused"] is False
    table = box.cli("schedules")
    assert table.returncode == 0 and "nightly" in table.stdout and "often" in table.stdout

    for action in ("run", "pause", "resume"):
        r = box.cli("schedules", action, "nope")
        err = r.stderr.strip()
        assert r.returncode == 1, (action, r.returncode, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "nope" in err, err
    assert [j.id for j in box.project.jobs()] == [job_id], "nothing else was queued"


# -- 6. bad configuration ------------------------------------------------------------------------
BAD_SCHEDULES = {
    "bad cron": {"cron": "61 * * * *"},
    "unknown timezone": {"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"},
    "cron and every": {"cron": "0 3 * * *", "every": 60},
    "unknown target": {"every": 60, "target": "sjobs:Nope"},
}


@pytest.mark.parametrize("case", list(BAD_SCHEDULES))
def test_a_bad_schedule_is_a_one_line_config_error_naming_it(sqlite_box: Sandbox, case: str) -> None:
    """A bad cron, an unknown timezone, both cron and every, an unlisted target: `bgrunner worker`
    (and `bgrunner schedules`) exit 2 with one line naming the file and the schedule; nothing runs."""
    box = sqlite_box
    keys = dict(BAD_SCHEDULES[case])
    text = schedule("nightly-report", "mark", [str(box.marks)], **keys)
    if "target" in keys:
        text = text.replace('target = "sjobs:Work"\n', "")
    box.configure(text)
    worker = box.worker("host-a", "--burst", stderr=subprocess.PIPE)
    code = worker.wait(timeout=30)
    err = (worker.stderr.read().decode() if worker.stderr else "").strip()
    listing = box.cli("schedules")
    for rc, text_err in ((code, err), (listing.returncode, listing.stderr.strip())):
        assert rc == 2, (case, rc, text_err)
        assert len(text_err.splitlines()) == 1 and "Traceback" not in text_err, text_err
        assert "nightly-report" in text_err and str(box.project.config) in text_err, text_err
    assert box.project.jobs() == [] and not box.marks.exists()
