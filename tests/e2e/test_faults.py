"""Faults: skewed clocks, two hosts under one id, hosts that die, database restarts, locks, full disks.

Every "host" is a set of real processes on this machine with its own
``BGRUNNER_HOST_ID``; a dead host is one whose processes were all SIGKILLed.
``[runner] host_timeout`` is small (2 s) so a lost lease is noticed quickly.
Synchronisation is by polling the store and sentinel files, never by sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ALLOWLIST, ROOT, Project, gone, stop_workers, wait_until

HOST_TIMEOUT = 2.0
SKEW = -120.0

#: The jobs these tests run, written to a folder put on PYTHONPATH (tests/fixtures.py is shared).
JOBS_MODULE = '''
import os
import time


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _lines(path):
    try:
        with open(path) as f:
            return f.read().split("\\n")
    except FileNotFoundError:
        return []


def attempt_number(job_id):
    """The attempt (fence) the store shows for this job now: the one this process runs."""
    from bgrunner.store.factory import open_store

    store = open_store(os.environ["BGRUNNER_DATABASE_URL"])
    try:
        job = store.get(job_id)
        return -1 if job is None else job.attempts
    finally:
        store.close()


class Work:
    def run(self, marks: str, seconds: float = 0.0, started: str = "") -> int:
        """Note the start in STARTED (if given), sleep, then append "job attempt" to MARKS."""
        job = int(os.environ["BGRUNNER_JOB_ID"])
        attempt = attempt_number(job)
        if started:
            _append(started, f"{job} {attempt} {os.getpid()} {time.time()}\\n")
        time.sleep(seconds)
        _append(marks, f"{job} {attempt}\\n")
        return job

    def hang_once(self, started: str, marks: str) -> int:
        """The first run of a job notes itself in STARTED and hangs; a later run ends at once."""
        job = int(os.environ["BGRUNNER_JOB_ID"])
        before = [line for line in _lines(started) if line.split(" ")[0] == str(job)]
        _append(started, f"{job} {os.getpid()}\\n")
        if not before:
            time.sleep(600)
        _append(marks, f"{job}\\n")
        return job
'''

#: Shifts this interpreter's wall clock (time.time, time.time_ns); its children inherit it.
SKEW_MODULE = '''
import time as _time

_SHIFT = {shift!r}
_real_time, _real_time_ns = _time.time, _time.time_ns
_time.time = lambda: _real_time() + _SHIFT
_time.time_ns = lambda: _real_time_ns() + int(_SHIFT * 1e9)
'''

FAULT_JOBS = """
[jobs."faultjobs:Work"]
methods = ["run", "hang_once"]
max_attempts = 1
"""

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# -- the sandbox ---------------------------------------------------------------------
def make_project(request: pytest.FixtureRequest, tmp_path: Path, backend: str, *,
                 launch: str = "fork", host_timeout: float = HOST_TIMEOUT) -> Project:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        from tests.backends import fresh_postgres_url, require_postgres

        require_postgres()
        url = fresh_postgres_url(request)
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "faultjobs.py").write_text(JOBS_MODULE)
    p = Project(root=tmp_path, database_url=url,
                extra_env={"PYTHONPATH": f"{mods}{os.pathsep}{ROOT}"})
    p.write_config(ALLOWLIST.replace(
        "[runner]", f'[runner]\nhost_timeout = {host_timeout}\nlaunch = "{launch}"') + FAULT_JOBS)
    return p


@pytest.fixture(params=BACKENDS)
def fproject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, request.param)
    yield p
    kill_everything(p)


@pytest.fixture
def pg_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, "postgres")
    yield p
    kill_everything(p)


@pytest.fixture
def sqlite_fproject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, "sqlite")
    yield p
    kill_everything(p)


def skewed(project: Project, tmp_path: Path, shift: float = SKEW) -> dict[str, str]:
    """Environment additions giving a process (and its children) a wall clock off by ``shift`` s."""
    folder = tmp_path / f"skew{int(shift)}"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SKEW_MODULE.format(shift=shift))
    return {"PYTHONPATH": f"{folder}{os.pathsep}{project.env['PYTHONPATH']}"}


def host_env(project: Project, host: str | None, **extra: str) -> dict[str, str]:
    env = {**project.env, "BGRUNNER_AUTOSTART": "0", **extra}
    if host is None:
        env.pop("BGRUNNER_HOST_ID", None)
    else:
        env["BGRUNNER_HOST_ID"] = host
    return env


def start_worker(env: dict[str, str], *args: str, stderr: Any = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT, env=env,
                            stderr=stderr)


def run_python(env: dict[str, str], code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(env: dict[str, str], specs: list[tuple[str, list[Any], dict[str, Any]]]) -> list[int]:
    """Record jobs (method, params, options) through the API in one process; their ids."""
    r = run_python(env, f"""
        import json
        from bgrunner import run_background_job
        ids = [run_background_job("faultjobs:Work", m, p, **kw) for m, p, kw in {specs!r}]
        print(json.dumps(ids))
    """)
    assert r.returncode == 0, r.stderr
    return [int(i) for i in json.loads(r.stdout.strip().splitlines()[-1])]


def processes_of(project: Project, host: str | None = None) -> list[psutil.Process]:
    """Every live process of this store (of one host id, if given), found by its environment."""
    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, KeyError):
            continue
        if env.get("BGRUNNER_DATABASE_URL") != project.database_url or proc.pid == os.getpid():
            continue
        if host is None or env.get("BGRUNNER_HOST_ID") == host:
            found.append(proc)
    return found


def kill_host(project: Project, host: str) -> list[int]:
    """The host dies: SIGKILL every process of it, all at once.

    Its processes: those whose environment names the host, their descendants (a fork-mode
    job process rewrites its command line over its environment), and the recorded job
    processes of the host.
    """
    found = {p.pid: p for p in processes_of(project, host)}
    for job in project.jobs():
        if job.host == host and job.pid is not None and job.status == "running":
            with contextlib.suppress(psutil.Error):
                found.setdefault(job.pid, psutil.Process(job.pid))
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    victims = [p for p in found.values() if p.pid != os.getpid()]
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    return [p.pid for p in victims]


def kill_everything(project: Project) -> None:
    stop_workers(project.database_url)
    for proc in processes_of(project):
        try:
            proc.kill()
        except psutil.Error:
            pass


def hosts(project: Project) -> dict[str, int]:
    """Host id -> pid of its most recently seen worker."""
    store = project.store()
    try:
        found: dict[str, int] = {}
        for w in store.workers():  # most recently seen first
            found.setdefault(w.host, w.pid)
        return found
    finally:
        store.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


# -- 3. clock skew ---------------------------------------------------------------------
def test_a_host_with_a_skewed_clock_is_not_taken_for_dead(fproject: Project, tmp_path: Path) -> None:
    """Host A's clock is 120 s behind: host B never declares A's long job lost; it runs once."""
    project = fproject
    marks, started = tmp_path / "marks", tmp_path / "started"
    env_a = host_env(project, "host-a", **skewed(project, tmp_path))
    worker_a = start_worker(env_a, "--concurrency", "1")
    worker_b = None
    try:
        # Submitted from A (its clock), so A sees it due at once; B is not up yet to take it.
        seconds = 4 * HOST_TIMEOUT
        [job_id] = submit(env_a, [("run", [str(marks), seconds, str(started)], {"max_attempts": 2})])
        wait_until(started.exists, timeout=30, message="the job to start on A")
        job = project.job(job_id)
        assert job.host == "host-a" and job.status == "running"
        assert job.started_at < time.time() + SKEW / 2, "A's processes do run 120 s behind"
        worker_b = start_worker(host_env(project, "host-b"), "--concurrency", "2")
        wait_until(lambda: "host-b" in hosts(project), timeout=30, message="B to register")
        done = wait_until(lambda: (j := project.job(job_id)).status in ("completed", "failed",
                                                                         "cancelled") and j,
                          timeout=seconds + 30, message="the job to end")
        assert worker_b.poll() is None and worker_a.poll() is None
        assert done.status == "completed" and done.tries == 1, done.error
        assert marks.read_text().split("\n") == [f"{job_id} {done.attempts}", ""], "one run"
        assert [a.outcome for a in project.store().attempts(job_id)] == ["completed"]
        lost = [e for e in project.events() if e["event"] in ("lease_expired", "worker_lost")]
        assert lost == []
    finally:
        for w in (worker_a, worker_b):
            if w is not None:
                stop(w)


# -- 4. two hosts, one id ------------------------------------------------------------
def machine(tmp_path: Path, name: str) -> dict[str, str]:
    """Another "machine": its own private run folder (lock file and wake-up socket)."""
    run = tmp_path / f"run-{name}"
    run.mkdir(mode=0o700)
    os.chmod(run, stat.S_IRWXU)
    return {"XDG_RUNTIME_DIR": str(run)}


def test_a_second_live_worker_under_one_host_id_is_refused(fproject: Project, tmp_path: Path) -> None:
    """Same BGRUNNER_HOST_ID on two machines: the second is refused (exit 1, one line); a worker
    restarted after its predecessor was kill -9'd (derived id) is not."""
    project = fproject
    first = start_worker(host_env(project, "shared", **machine(tmp_path, "one")))
    try:
        wait_until(lambda: hosts(project).get("shared") == first.pid, timeout=30,
                   message="the first worker to register")
        second = start_worker(host_env(project, "shared", **machine(tmp_path, "two")),
                              stderr=subprocess.PIPE)
        try:
            code = second.wait(timeout=30)
        finally:
            if second.poll() is None:
                second.kill()
        err = second.stderr.read().decode() if second.stderr else ""
        assert code == 1, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "shared" in err and "BGRUNNER_HOST_ID" in err, err
        assert first.poll() is None and hosts(project).get("shared") == first.pid
    finally:
        assert stop(first) == 0

    # kill -9, restart at once (its row is still fresh): a derived id (no BGRUNNER_HOST_ID) is
    # taken over at once; a hand-set one once the dead row has gone stale (within host_timeout).
    from bgrunner.context import host_id

    for name, host in (("derived", None), ("hand-set", "shared")):
        me = host or host_id()
        env = host_env(project, host, **machine(tmp_path, f"restart-{name}"))
        victim = start_worker(env)
        wait_until(lambda me=me, v=victim: hosts(project).get(me) == v.pid, timeout=30,
                   message="registration")
        victim.kill()
        victim.wait()
        successor = start_worker(env, stderr=subprocess.PIPE)
        try:
            wait_until(lambda me=me, s=successor: hosts(project).get(me) == s.pid or s.poll() is not None,
                       timeout=HOST_TIMEOUT + 10, message=f"the restarted worker ({name} id) to register")
            assert successor.poll() is None, (name, successor.stderr.read().decode()
                                              if successor.stderr else "")
        finally:
            assert stop(successor) == 0


# -- 5. no job running forever after its host died ---------------------------------------
def test_no_job_stays_running_after_its_host_died(fproject: Project, tmp_path: Path) -> None:
    """Four ways a host dies with a job on it; another host's worker settles each within
    host_timeout + a few seconds (retried or failed per policy)."""
    project = fproject
    started, marks = tmp_path / "started", tmp_path / "marks"
    args = [str(started), str(marks)]

    def running_on(host: str) -> Any:
        return wait_until(lambda: next((j for j in project.jobs() if j.host == host
                                        and j.status == "running" and j.pid is not None
                                        and started.exists()
                                        and str(j.id) in started.read_text().split()), None),
                          timeout=30, message=f"a job running on {host}")

    # (a) A worker's job: the worker and the whole job tree are SIGKILLed.
    ghost_w = start_worker(host_env(project, "ghost-worker"), "--concurrency", "1")
    submit(host_env(project, "ghost-worker"), [("hang_once", args, {"max_attempts": 2})])
    by_worker = running_on("ghost-worker")
    # (b) An auto-started job: the caller launched it and exited; nothing else of its host runs.
    submit(host_env(project, "ghost", BGRUNNER_AUTOSTART="1"), [("hang_once", args, {})])
    by_caller = running_on("ghost")
    # (c) A foreground run_job.py.
    foreground = subprocess.Popen(
        [sys.executable, str(ROOT / "run_job.py"), "faultjobs:Work", "hang_once", "--json",
         json.dumps(args), "--max-attempts", "2"], cwd=ROOT,
        env=host_env(project, "ghost-fg"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    by_foreground = running_on("ghost-fg")
    # (d) A host that stopped its worker cleanly (its row is gone) before its job's process died.
    submit(host_env(project, "ghost-clean", BGRUNNER_AUTOSTART="1"), [("hang_once", args, {})])
    after_clean_stop = running_on("ghost-clean")
    clean = start_worker(host_env(project, "ghost-clean"))
    wait_until(lambda: "ghost-clean" in hosts(project), timeout=30, message="ghost-clean's worker")
    assert stop(clean) == 0
    assert "ghost-clean" not in hosts(project)

    survivor = start_worker(host_env(project, "survivor"), "--concurrency", "4")
    wait_until(lambda: "survivor" in hosts(project), timeout=30, message="the survivor to register")
    cases = {"worker": by_worker, "autostart": by_caller, "foreground": by_foreground,
             "clean stop": after_clean_stop}
    try:
        died = time.monotonic()
        for host in ("ghost-worker", "ghost", "ghost-fg", "ghost-clean"):
            kill_host(project, host)
        ghost_w.wait()
        foreground.wait()
        wait_until(lambda: all(gone(j.pid) for j in cases.values()), timeout=10,
                   message="the dead hosts' job processes to die")
        settled: dict[str, float] = {}
        store = project.store()
        deadline = died + HOST_TIMEOUT + 30
        while len(settled) < len(cases) and time.monotonic() < deadline:
            for name, job in cases.items():
                now = store.get(job.id)
                if name not in settled and not (now.status == "running" and now.attempts == job.attempts):
                    settled[name] = time.monotonic() - died
            time.sleep(0.02)
        worst = max(settled.values(), default=float("inf"))
        print("\ndead-host jobs shown running after their host died (s): "
              + ", ".join(f"{n} {t:.2f}" for n, t in settled.items()) + f"; worst {worst:.2f}")
        assert set(settled) == set(cases), f"still running: {set(cases) - set(settled)}"
        assert worst <= HOST_TIMEOUT + 4
        # Per policy: max_attempts 2 is retried (by the survivor) and completes; 1 fails.
        final = {n: wait_until(lambda j=j: (r := project.job(j.id)).status in ("completed", "failed")
                               and r, timeout=30, message=f"{n} to end") for n, j in cases.items()}
        assert {n: (r.status, r.tries) for n, r in final.items()} == {
            "worker": ("completed", 2), "autostart": ("failed", 1),
            "foreground": ("completed", 2), "clean stop": ("failed", 1)}
        for n, r in final.items():
            first = store.attempts(r.id)[0]
            assert first.outcome == "crashed" and "lease expired" in (first.error or ""), (n, first)
        assert survivor.poll() is None
    finally:
        stop(survivor)


# -- 17. database restarts, a locked SQLite file, a full disk -------------------------------
def store_client_ports(project: Project) -> list[int]:
    """Local ports of this store's processes' connections to PostgreSQL (not the test's own)."""
    from urllib.parse import urlsplit

    from tests.backends import PG_URL

    server_port = urlsplit(PG_URL).port or 5432
    procs = {p.pid: p for p in processes_of(project)}
    for proc in list(procs.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                procs.setdefault(child.pid, child)
    ports = set()
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            for c in proc.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == server_port:
                    ports.add(c.laddr.port)
    return sorted(ports)


def terminate_backends(project: Project) -> int:
    """What a database restart does to this store's clients: every backend of theirs is terminated.

    The query the operators run, scoped to the connections of this test's processes (other
    test sessions share the server).
    """
    import psycopg

    from tests.backends import _server_url

    ports = store_client_ports(project)
    with psycopg.connect(_server_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND client_port = ANY(%s)", (ports,)).fetchone()
    return int(row[0]) if row else 0


def test_database_restarts_mid_run_every_job_ends_exactly_once(pg_project: Project,
                                                               tmp_path: Path) -> None:
    """PostgreSQL backends are terminated six times while 120 jobs run and wait: every job
    completes exactly once, and no worker dies."""
    project = pg_project
    marks = tmp_path / "marks"
    rng = random.Random(17)
    n = 120
    specs = [("run", [str(marks), rng.choice([0, 0, 0.05, 0.2, 0.5, 1.0])], {}) for _ in range(n)]
    ids = submit(host_env(project, "db-a"), specs)
    workers = [start_worker(host_env(project, host), "--concurrency", "4")
               for host in ("db-a", "db-b")]
    kills: list[tuple[int, int]] = []
    try:
        def ended() -> int:
            counts = project.store().counts()
            return sum(counts[s] for s in ("completed", "failed", "cancelled"))

        wait_until(lambda: ended() >= 5, timeout=60, message="the first jobs to end")
        while len(kills) < 6 and ended() < n:
            running = project.store().counts()["running"]
            kills.append((terminate_backends(project), running))
            time.sleep(rng.uniform(0.3, 0.8))  # pacing the outages, not synchronisation
        wait_until(lambda: ended() == n, timeout=120, message="every job to end")
        print(f"\nbackends terminated (count, jobs running then): {kills}")
        assert len(kills) >= 5 and sum(k for k, _ in kills) > 0
        assert [w.poll() for w in workers] == [None, None], "no worker died"
        jobs = {j.id: j for j in project.jobs()}
        assert {j.status for j in jobs.values()} == {"completed"}
        runs = [int(line.split()[0]) for line in marks.read_text().splitlines()]
        assert sorted(runs) == sorted(ids), "every job ran to its end exactly once"
    finally:
        for w in workers:
            assert stop(w) == 0


def test_sqlite_locked_beyond_the_busy_timeout_is_a_one_line_error(sqlite_fproject: Project,
                                                                  tmp_path: Path) -> None:
    """Another connection holds the write lock past ``?timeout=``: submit and run_job.py fail
    with one line (exit 2, no traceback), reads still work, nothing is half-written."""
    project = sqlite_fproject
    db = tmp_path / "jobs.db"
    project.database_url = f"sqlite:///{db}?timeout=0.5"
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    marks = str(tmp_path / "marks")
    assert project.cli("submit", "faultjobs:Work", "run", "--json", json.dumps([marks])).returncode == 0
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for r in (project.cli("submit", "faultjobs:Work", "run", "--json", json.dumps([marks])),
                  project.run_job("faultjobs:Work", "run", "--json", json.dumps([marks])),
                  project.cli("cancel", "1")):
            err = r.stderr.strip()
            assert r.returncode == 2, (r.returncode, err)
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert "locked" in err and "?timeout=" in err, err
        listed = project.cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [str(j["id"]) for j in json.loads(listed.stdout)] == ["1"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [(j.id, j.status) for j in project.jobs()] == [(1, "pending")]
    events = project.events()
    assert [e["event"] for e in events] == ["job_queued", "job_rejected"]  # run_job.py says why
    assert "locked" in events[1]["reason"]
    assert project.cli("submit", "faultjobs:Work", "run", "--json", json.dumps([marks])).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (we are root in CI); skipped where mounting is not permitted."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_a_one_line_error_and_nothing_half_written(sqlite_fproject: Project,
                                                                 tiny_disk: Path) -> None:
    """The store's disk fills up: a submit fails with one line (exit 2), the store stays whole
    and holds no part of the job; once there is room, submits work again."""
    project = sqlite_fproject
    db = tiny_disk / "jobs.db"
    project.database_url = f"sqlite:///{db}"
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    small = json.dumps(["x"])
    assert project.cli("submit", "faultjobs:Work", "run", "--json", small).returncode == 0
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    big = json.dumps(["y" * 100_000])
    r = project.cli("submit", "faultjobs:Work", "run", "--json", big)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "full" in err, err
    filler.unlink()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert check.execute("SELECT id, length(params) FROM jobs").fetchall() == [(1, len(small))]
    finally:
        check.close()
    assert [e["event"] for e in project.events()] == ["job_queued"]
    assert project.cli("submit", "faultjobs:Work", "run", "--json", big).returncode == 0
    assert len(project.jobs()) == 2
