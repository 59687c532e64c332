"""Per-target limits (CONTRACT §10): ``max_running`` and ``rate_limit`` across workers and hosts.

Real ``bgrunner worker`` processes; a "host" is a ``BGRUNNER_HOST_ID`` with its own run
folder (``XDG_RUNTIME_DIR``). The store is sampled while jobs run; jobs also note their own
start and end times, so what the store says is checked against what the processes did.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


class _Base:
    def run(self, path: str, seconds: float = 0.0) -> None:
        """Note "id start t" in PATH, sleep, note "id end t"."""
        job = os.environ["BGRUNNER_JOB_ID"]
        _append(path, f"{job} start {time.time()!r}\\n")
        time.sleep(seconds)
        _append(path, f"{job} end {time.time()!r}\\n")


class One(_Base):
    """max_running = 1."""


class Rated(_Base):
    """rate_limit = "5/s"."""


class Free(_Base):
    """No limit."""
'''

CONFIG = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
launch = "fork"

[jobs."ljobs:One"]
methods = ["run"]
max_running = 1

[jobs."ljobs:Rated"]
methods = ["run"]
rate_limit = "5/s"

[jobs."ljobs:Free"]
methods = ["run"]
"""


class Sandbox:
    """A project plus the processes a test starts in it (all stopped at teardown)."""

    def __init__(self, project: Project, tmp_path: Path, backend: str) -> None:
        self.project = project
        self.tmp_path = tmp_path
        self.backend = backend
        self.procs: list[subprocess.Popen[bytes]] = []

    def host_env(self, host: str) -> dict[str, str]:
        run = self.tmp_path / f"run-{host}"
        if not run.exists():
            run.mkdir(mode=0o700)
            os.chmod(run, stat.S_IRWXU)
        return {**self.project.env, "BGRUNNER_HOST_ID": host, "XDG_RUNTIME_DIR": str(run),
                "BGRUNNER_AUTOSTART": "0"}

    def worker(self, host: str, *args: str, stderr: Any = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT,
                                env=self.host_env(host), stderr=stderr)
        self.procs.append(proc)
        return proc

    def submit(self, host: str, specs: list[tuple[str, list[Any], dict[str, Any]]]) -> list[int]:
        """Record jobs (target, params, options) of method ``run`` through the API; their ids."""
        code = f"""
            import json
            from bgrunner import run_background_job
            print(json.dumps([run_background_job(t, "run", p, **kw) for t, p, kw in {specs!r}]))
        """
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=self.host_env(host),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return [int(i) for i in json.loads(r.stdout.strip().splitlines()[-1])]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
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
    (mods / "ljobs.py").write_text(JOBS_MODULE)
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


def running_of(store: Any, target: str) -> int:
    return len(store.list(status="running", target=target, limit=1000))


# -- max_running -------------------------------------------------------------------------
def test_max_running_one_holds_across_four_workers(box: Sandbox, tmp_path: Path) -> None:
    """max_running = 1, four workers (PostgreSQL: two hosts of two; SQLite: one host), 12 jobs of
    0.3 s: the store, sampled every 20 ms, never shows two running; the jobs' own run times never
    overlap; all complete."""
    stamps = tmp_path / "stamps"
    n = 12
    ids = box.submit("host-a", [("ljobs:One", [str(stamps), 0.3], {}) for _ in range(n)])
    hosts = ["host-a", "host-a", "host-b", "host-b"] if box.backend == "postgres" else ["host-a"] * 4
    for host in hosts:
        box.worker(host, "--concurrency", "3")
    store = box.project.store()
    samples: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples.append(running_of(store, "ljobs:One"))
            if store.counts()["completed"] == n:
                break
            time.sleep(0.02)
        jobs = [store.get(i) for i in ids]
    finally:
        store.close()
    assert [j.status for j in jobs] == ["completed"] * n, [(j.id, j.status, j.error) for j in jobs]
    assert max(samples) == 1, f"running counts seen: {sorted(set(samples))}"
    assert len(samples) >= 50, "the store was sampled while the jobs ran"
    ran = sorted(spans(stamps).values(), key=lambda s: s["start"])
    assert len(ran) == n
    for before, after in zip(ran, ran[1:], strict=False):
        assert after["start"] >= before["end"], "two jobs of a max_running = 1 target ran at once"
    if box.backend == "postgres":
        assert {j.host for j in jobs} == {"host-a", "host-b"}, "both hosts took some"


# -- rate_limit ----------------------------------------------------------------------------
#: A job's ``claimed_at`` is the claiming worker's clock read just before its claim waits for the
#: store's write lock; the limit counts starts on the store's clock inside that lock. A claim time
#: may so be earlier than the start the limit saw by that wait (a worker descheduled between the
#: two on a busy machine): allowed for here, and nothing more. The store's own log of starts (read
#: below on its clock) is checked to the clock's resolution (SQLite's julianday('now'): 1 ms).
CLAIM_SLACK = 0.1


def test_rate_limit_no_sliding_second_holds_more_than_five_claims(sqlite_box: Sandbox) -> None:
    """rate_limit = "5/s", 50 jobs, two workers of concurrency 8: by each job's claim time
    (``claimed_at``), no 1-second window (sliding) holds more than 5 claims, nor by the store
    clock's log of starts; all 50 ran, one claim each."""
    import sqlite3

    box = sqlite_box
    stamps = box.tmp_path / "stamps"
    n = 50
    ids = box.submit("host-a", [("ljobs:Rated", [str(stamps)], {}) for _ in range(n)])
    for _ in range(2):
        box.worker("host-a", "--concurrency", "8")
    store = box.project.store()
    logged: set[tuple[int, float]] = set()  # the starts the limit counted: (rowid, store clock)
    db = sqlite3.connect(f"file:{box.tmp_path / 'jobs.db'}?mode=ro", uri=True, timeout=10)
    try:
        def read_log() -> None:
            # A logged start is kept for at least its window (1 s): reading every 50 ms sees each.
            # (A rowid comes back once the table has emptied: with its time, it names one start.)
            logged.update(db.execute("SELECT rowid, at FROM starts WHERE target = 'ljobs:Rated'").fetchall())

        deadline = time.monotonic() + 40
        while store.counts()["completed"] < n and time.monotonic() < deadline:
            read_log()
            time.sleep(0.05)
        read_log()  # the last starts: no later claim has dropped them
        jobs = [store.get(i) for i in ids]
    finally:
        db.close()
        store.close()
    assert [j.status for j in jobs] == ["completed"] * n, [(j.id, j.status) for j in jobs]
    assert all(j.tries == 1 for j in jobs) and len(spans(stamps)) == n, "every job ran once"

    def tightest(times: list[float]) -> float:
        """The shortest span of 6 consecutive starts: under 1 s means a 1 s window holds 6."""
        times = sorted(times)
        return min(later - first for first, later in zip(times, times[5:], strict=False))

    claims = [j.claimed_at for j in jobs]
    assert tightest(claims) >= 1.0 - CLAIM_SLACK, f"6 claims within {tightest(claims):.3f} s"
    assert len(logged) == n, f"the store logged {len(logged)} starts for {n} claims"
    at = [t for _, t in logged]
    assert tightest(at) >= 1.0 - 0.002, f"6 logged starts within {tightest(at):.3f} s"
    assert max(claims) - min(claims) >= (n // 5 - 1) - CLAIM_SLACK


# -- a limited target never blocks another ---------------------------------------------------
def test_a_target_at_its_limit_does_not_hold_up_another_target(sqlite_box: Sandbox) -> None:
    """ljobs:One (max_running = 1) has a long job running and three more waiting, with a higher
    priority: jobs of ljobs:Free submitted after them start at once and complete while One's wait
    (pending, never failed)."""
    box = sqlite_box
    stamps = box.tmp_path / "stamps"
    box.worker("host-a", "--concurrency", "6")
    held = box.submit("host-a", [("ljobs:One", [str(stamps), 30], {"priority": 10}) for _ in range(4)])
    wait_until(lambda: len(spans(stamps)) == 1, timeout=30, message="one job of ljobs:One to run")
    submitted = time.time()
    free = box.submit("host-a", [("ljobs:Free", [str(stamps)], {}) for _ in range(5)])
    wait_until(lambda: all(box.project.job(i).status == "completed" for i in free), timeout=10,
               message="the free target's jobs to complete")
    ran = spans(stamps)
    assert max(ran[i]["start"] for i in free) - submitted < 5.0, "they started at once"
    statuses = sorted(str(box.project.job(i).status) for i in held)
    assert statuses == ["pending", "pending", "pending", "running"], statuses
    for job_id in held:
        assert box.project.cli("cancel", str(job_id)).returncode == 0


# -- bad configuration -------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [("rate_limit", '"5/x"'), ("max_running", "0"),
                                            ("queue", '"a b"')])
def test_a_bad_limit_or_queue_is_a_one_line_config_error(sqlite_box: Sandbox, key: str, value: str) -> None:
    """rate_limit = "5/x", max_running = 0, queue = "a b": `bgrunner worker` exits 2 with one line
    naming the file and the key, and runs nothing."""
    box = sqlite_box
    box.project.write_config(CONFIG.replace('[jobs."ljobs:Free"]\nmethods = ["run"]',
                                            f'[jobs."ljobs:Free"]\nmethods = ["run"]\n{key} = {value}'))
    worker = box.worker("host-a", "--burst", stderr=subprocess.PIPE)
    code = worker.wait(timeout=30)
    err = worker.stderr.read().decode() if worker.stderr else ""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(box.project.config) in lines[0] and key in lines[0] and "ljobs:Free" in lines[0], err
