"""Queues, several workers on one host, and unique jobs (CONTRACT §10), with real processes.

Every worker here is a real ``bgrunner worker`` process. Workers of one "host" share its
``BGRUNNER_HOST_ID`` and its private run folder (``XDG_RUNTIME_DIR``: lock file and wake-up
socket), as workers on one machine do. Jobs prove they ran by appending their id to a file
(``O_APPEND``: one write per line, so lines from concurrent jobs never mix). Synchronisation
is by polling the store and those files, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Project, stop_workers, wait_until

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

#: The jobs of these tests, written to a folder put on PYTHONPATH (tests/fixtures.py is shared).
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
        """Append this job's id to PATH."""
        _append(path, os.environ["BGRUNNER_JOB_ID"] + "\\n")

    def hold(self, path: str, seconds: float) -> None:
        """Append this job's id to PATH, then sleep (a job that is seen running)."""
        _append(path, os.environ["BGRUNNER_JOB_ID"] + "\\n")
        time.sleep(seconds)

    def noop(self) -> None:
        """Nothing."""
'''

CONFIG = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
launch = "fork"

[jobs."qjobs:Work"]
methods = ["mark", "hold", "noop"]
"""


# -- the sandbox ---------------------------------------------------------------------
class Sandbox:
    """A project plus the processes a test starts in it (all stopped at teardown)."""

    def __init__(self, project: Project, tmp_path: Path, backend: str) -> None:
        self.project = project
        self.tmp_path = tmp_path
        self.backend = backend
        self.procs: list[subprocess.Popen[bytes]] = []

    def host_env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of a process of "host" ``host``: its id and its own run folder."""
        run = self.tmp_path / f"run-{host}"
        if not run.exists():
            run.mkdir(mode=0o700)
            os.chmod(run, stat.S_IRWXU)
        return {**self.project.env, "BGRUNNER_HOST_ID": host, "XDG_RUNTIME_DIR": str(run),
                "BGRUNNER_AUTOSTART": "0", **extra}

    def worker(self, host: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT,
                                env=self.host_env(host))
        self.procs.append(proc)
        return proc

    def cli(self, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bgrunner", *args], cwd=ROOT, env=self.host_env(host),
                              capture_output=True, text=True, timeout=timeout)

    def python(self, host: str, code: str, timeout: float = 120) -> Any:
        """Run ``code`` in a fresh interpreter of ``host``; the JSON its last stdout line holds."""
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                           env=self.host_env(host), capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def submit(self, host: str, specs: list[tuple[str, list[Any], dict[str, Any]]]) -> list[int]:
        """Record jobs (method, params, options) through the API, autostart off; their ids."""
        ids = self.python(host, f"""
            import json
            from bgrunner import run_background_job
            print(json.dumps([run_background_job("qjobs:Work", m, p, **kw) for m, p, kw in {specs!r}]))
        """)
        return [int(i) for i in ids]

    def workers_json(self, host: str = "host-a") -> list[dict[str, Any]]:
        r = self.cli(host, "workers", "--json")
        assert r.returncode == 0, r.stderr
        rows: list[dict[str, Any]] = json.loads(r.stdout)
        return rows

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
    (mods / "qjobs.py").write_text(JOBS_MODULE)
    p = Project(root=tmp_path, database_url=url, extra_env={"PYTHONPATH": f"{mods}{os.pathsep}{ROOT}"})
    p.write_config(CONFIG)
    return p


@pytest.fixture(params=BACKENDS)
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(make_project(request, tmp_path, request.param), tmp_path, request.param)
    yield sandbox
    sandbox.stop_all()


def ids_in(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def worker_id_of(box: Sandbox, pid: int) -> str:
    """The id the worker with ``pid`` registered under, once it has."""
    def registered() -> str | None:
        store = box.project.store()
        try:
            return next((w.id for w in store.workers() if w.pid == pid), None)
        finally:
            store.close()

    found: str = wait_until(registered, timeout=30, message=f"worker {pid} to register")
    return found


# -- 1. queues ---------------------------------------------------------------------------
def test_two_workers_on_one_host_each_run_only_their_queue(box: Sandbox, tmp_path: Path) -> None:
    """Two workers of one host id, on queues a and b: each job is claimed by its queue's worker
    (its record's ``worker``); `bgrunner workers --json` lists both with their queues and running
    job ids; `list --queue` filters; a job for a queue nothing serves stays pending and
    `bgrunner list --queue nobody` shows it."""
    marks, held = tmp_path / "marks", tmp_path / "held"
    worker_a = box.worker("host-a", "--queue", "a", "--concurrency", "2")
    worker_b = box.worker("host-a", "--queue", "b", "--concurrency", "2")
    id_a, id_b = worker_id_of(box, worker_a.pid), worker_id_of(box, worker_b.pid)
    assert id_a != id_b

    # One long job per queue, to be seen running; then 20 short ones per queue.
    [hold_a, hold_b] = box.submit("host-a", [("hold", [str(held), 30], {"queue": "a"}),
                                             ("hold", [str(held), 30], {"queue": "b"})])
    specs = [("mark", [str(marks)], {"queue": "ab"[i % 2]}) for i in range(40)]
    short = box.submit("host-a", specs)
    [nobody] = box.submit("host-a", [("mark", [str(marks)], {"queue": "nobody"})])
    wait_until(lambda: sorted(ids_in(held)) == sorted([hold_a, hold_b]), timeout=30,
               message="both long jobs to start")
    wait_until(lambda: sorted(ids_in(marks)) == sorted(short), timeout=30,
               message="the 40 short jobs to run")

    def both_listed() -> dict[str, dict[str, Any]] | None:
        found = {w["id"]: w for w in box.workers_json()}
        return found if set(found) >= {id_a, id_b} else None

    rows = wait_until(both_listed, timeout=10, message="both workers in `bgrunner workers --json`")
    assert set(rows) == {id_a, id_b}, rows
    assert rows[id_a]["queues"] == ["a"] and rows[id_b]["queues"] == ["b"], rows
    running = {w: [str(i) for i in rows[w]["running"]] for w in rows}
    assert running == {id_a: [str(hold_a)], id_b: [str(hold_b)]}, rows
    for w in rows.values():
        assert w["host"] == "host-a" and w["concurrency"] == 2, w
        assert {"pid", "started_at", "last_heartbeat"} <= set(w), w
    assert rows[id_a]["pid"] == worker_a.pid and rows[id_b]["pid"] == worker_b.pid

    store = box.project.store()
    try:
        for job_id, (_, _, kw) in zip(short, specs, strict=True):
            job = store.get(job_id)
            assert job.queue == kw["queue"] and job.status == "completed", job
            assert job.worker == {"a": id_a, "b": id_b}[kw["queue"]], (job.id, job.queue, job.worker)
        assert store.get(hold_a).worker == id_a and store.get(hold_b).worker == id_b
        waiting = store.get(nobody)
        assert waiting.status == "pending" and waiting.queue == "nobody" and waiting.worker is None
    finally:
        store.close()
    listed = box.cli("host-a", "list", "--queue", "nobody", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["status"], j["queue"]) for j in json.loads(listed.stdout)] == [
        (str(nobody), "pending", "nobody")]
    for queue, expect in (("a", {hold_a} | {j for j, s in zip(short, specs, strict=True) if s[2]["queue"] == "a"}),
                          ("b", {hold_b} | {j for j, s in zip(short, specs, strict=True) if s[2]["queue"] == "b"})):
        r = box.cli("host-a", "list", "--queue", queue, "--limit", "100", "--json")
        assert r.returncode == 0, r.stderr
        assert {int(j["id"]) for j in json.loads(r.stdout)} == expect
    table = box.cli("host-a", "workers")
    assert table.returncode == 0 and id_a in table.stdout and id_b in table.stdout, table
    assert ids_in(marks).count(nobody) == 0
    for job_id in (hold_a, hold_b):
        assert box.cli("host-a", "cancel", str(job_id)).returncode == 0


def test_two_workers_on_one_queue_run_each_of_500_jobs_exactly_once(box: Sandbox, tmp_path: Path) -> None:
    """500 no-op jobs, two workers of one host id on the same queue (--burst): every job ran
    exactly once (its id appended once), all completed, and both workers took some."""
    marks = tmp_path / "marks"
    n = 500
    ids = box.python("host-a", f"""
        import json
        from bgrunner.api import context
        from bgrunner.jobs import prepare, submit
        ctx = context()
        ctx.autostart = False
        print(json.dumps([submit(ctx, prepare(ctx, "qjobs:Work", "mark", [{str(marks)!r}], queue="bulk"))
                          for _ in range({n})]))
    """)
    assert len(set(ids)) == n
    workers = [box.worker("host-a", "--queue", "bulk", "--concurrency", "2", "--burst") for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=120) == 0
    ran = Counter(ids_in(marks))
    assert sorted(ran) == sorted(ids), "every job ran"
    assert [j for j, c in ran.items() if c != 1] == [], "no job ran twice"
    jobs = box.project.jobs()
    assert len(jobs) == n and {j.status for j in jobs} == {"completed"}
    by_worker = Counter(j.worker for j in jobs)
    assert set(by_worker) == {f"host-a:{w.pid}" for w in workers}, by_worker
    assert {j.host for j in jobs} == {"host-a"} and {j.queue for j in jobs} == {"bulk"}


# -- 2. unique jobs ------------------------------------------------------------------------
def test_concurrent_unique_submits_record_one_job_per_key(box: Sandbox, tmp_path: Path) -> None:
    """8 processes × 50 submits over 10 keys, released at once: exactly 10 jobs recorded, every
    returned id is its key's job, `job_deduplicated` logged for the other 390; once a key's job
    has ended, a submit with that key records a new job (CLI `--unique-key` too)."""
    go = tmp_path / "go"
    procs_n, per_proc, keys = 8, 50, 10
    code = textwrap.dedent(f"""
        import json, os, sys, time
        from bgrunner import run_background_job
        from bgrunner.api import context
        context()  # store opened and its schema in place before the start line
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        me = int(sys.argv[1])
        got = []
        for i in range({per_proc}):
            key = f"k{{(i + me) % {keys}}}"
            got.append([key, run_background_job("qjobs:Work", "noop", unique_key=key)])
        print(json.dumps(got))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, env=box.host_env("host-a"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(procs_n)]
    for p in procs:  # every process is up before any submits
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    returned: list[tuple[str, int]] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        returned += [(k, int(i)) for k, i in json.loads(out.strip().splitlines()[-1])]
    assert len(returned) == procs_n * per_proc

    jobs = box.project.jobs()
    assert len(jobs) == keys, [(j.id, j.unique_key) for j in jobs]
    by_key = {j.unique_key: j.id for j in jobs}
    assert set(by_key) == {f"k{i}" for i in range(keys)}
    assert all(job_id == by_key[key] for key, job_id in returned), "every submit got its key's job"
    events = box.project.events()
    deduped = [e for e in events if e["event"] == "job_deduplicated"]
    queued = [e for e in events if e["event"] == "job_queued"]
    assert len(queued) == keys and len(deduped) == procs_n * per_proc - keys
    assert all(int(e["job_id"]) == by_key[e["unique_key"]] for e in deduped)

    # While k0's job is pending the CLI gets its id too; once it has ended, the key is free.
    r = box.cli("host-a", "submit", "qjobs:Work", "noop", "--unique-key", "k0")
    assert r.returncode == 0 and int(r.stdout) == by_key["k0"], (r.stdout, r.stderr)
    worker = box.worker("host-a", "--burst", "--concurrency", "4")
    assert worker.wait(timeout=60) == 0
    assert {j.status for j in box.project.jobs()} == {"completed"}
    [again] = box.submit("host-a", [("noop", [], {"unique_key": "k0"})])
    assert again not in by_key.values()
    r = box.cli("host-a", "submit", "qjobs:Work", "noop", "--unique-key", "k1")
    assert r.returncode == 0, r.stderr
    cli_again = int(r.stdout)
    assert cli_again not in by_key.values() and cli_again != again
    jobs = {j.id: j for j in box.project.jobs()}
    assert len(jobs) == keys + 2
    assert (jobs[again].unique_key, jobs[again].status) == ("k0", "pending")
    assert (jobs[cli_again].unique_key, jobs[cli_again].status) == ("k1", "pending")
    # ...and holds the key again.
    [same] = box.submit("host-a", [("noop", [], {"unique_key": "k0"})])
    assert same == again and len(box.project.jobs()) == keys + 2
