"""Several hosts on one store: shared queue, cross-host cancellation, recovery when a host dies.

Two "hosts" run on this machine by giving each worker its own BGRUNNER_HOST_ID.
A host only ever signals its own processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, Project, gone, wait_until


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def launch_mode(request: pytest.FixtureRequest, project: Project) -> str:
    """Every test here runs with the workers in both launch modes."""
    project.write_config(project.config.read_text().replace(
        "[runner]", f'[runner]\nlaunch = "{request.param}"'))
    return str(request.param)


def start_worker(project: Project, host: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**project.env, "BGRUNNER_HOST_ID": host, "BGRUNNER_AUTOSTART": "0"}
    return subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT, env=env)


def submit_many(project: Project, n: int, code_args: str) -> None:
    r = project.python(f"""
        import bgrunner
        from bgrunner.api import context
        from bgrunner.jobs import prepare
        ctx = context()
        ctx.autostart = False
        for i in range({n}):
            {code_args}
    """, timeout=300)
    assert r.returncode == 0, r.stderr


def test_two_hosts_drain_a_queue_each_job_once_in_priority_order(project: Project, tmp_path: Path,
                                                                  launch_mode: str) -> None:
    """Two workers on different hosts drain 1,000 jobs: each runs exactly once, by both hosts, in priority order per claim."""
    n = 1000 if launch_mode == "fork" else 300  # spawn pays a whole interpreter per job
    marks = tmp_path / "marks"
    marks.mkdir()
    submit_many(project, n, f"""ctx.store.create(prepare(ctx, "tests.fixtures:Probe", "mark",
                [{str(marks)!r} + "/" + str(i % 10), str(i)], priority=i % 3))""")
    workers = [start_worker(project, host, "--concurrency", "3", "--burst")
               for host in ("host-a", "host-b")]
    for w in workers:
        assert w.wait(timeout=600) == 0
    done = [line for f in marks.iterdir() for line in f.read_text().split()]
    assert sorted(done, key=int) == [str(i) for i in range(n)], "each job exactly once"
    jobs = project.jobs()
    assert {j.status for j in jobs} == {"completed"}
    assert {j.host for j in jobs} == {"host-a", "host-b"}
    # Claims are serialised by the store and taken in priority order, whichever host claims:
    # every priority-2 job was claimed before any priority-1 job, and those before priority 0.
    # A claim's timestamp is read just before it waits for the store's lock, so two claims
    # racing for it may carry times out of order by that wait: allow it, nothing more.
    lock_wait = 0.5
    by_prio = {p: sorted(j.started_at for j in jobs if j.priority == p) for p in (0, 1, 2)}
    assert by_prio[2][-1] <= by_prio[1][0] + lock_wait
    assert by_prio[1][-1] <= by_prio[0][0] + lock_wait


def test_cancel_from_another_host_stops_the_job_on_its_host(project: Project,
                                                            tmp_path: Path) -> None:
    """`bgrunner cancel` on host A stops a job running on host B within cancel_grace + 1 s; only B signals it."""
    sentinel = tmp_path / "pids"
    worker_b = start_worker(project, "host-b", "--concurrency", "1")
    try:
        r = subprocess.run([sys.executable, "-m", "bgrunner", "submit", "tests.fixtures:Stubborn",
                            "with_grandchild", str(sentinel)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60,
                           env={**project.env, "BGRUNNER_HOST_ID": "host-b", "BGRUNNER_AUTOSTART": "0"})
        assert r.returncode == 0, r.stderr
        job_id = int(r.stdout)
        wait_until(lambda: sentinel.exists() and sentinel.read_text().endswith("\n"),
                   message="job start")
        pids = [int(p) for p in sentinel.read_text().split()]
        assert project.job(job_id).host == "host-b"
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "bgrunner", "cancel", str(job_id)], cwd=ROOT,
                           env={**project.env, "BGRUNNER_HOST_ID": "host-a"}, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr

        def dead() -> bool:
            return all(gone(p) for p in pids)

        wait_until(dead, timeout=10, message="job tree to die")
        assert time.monotonic() - started <= 1.0 + 1.0 + 0.5  # cancel_grace (1 s) + 1 s
        assert project.job(job_id).status == "cancelled"
    finally:
        worker_b.terminate()
        worker_b.wait(timeout=30)


def test_dead_host_jobs_are_recovered_and_late_writes_fenced(project: Project,
                                                             tmp_path: Path) -> None:
    """kill -9 a host's worker and its jobs: after the heartbeat timeout another host retries them; the dead attempt cannot write."""
    text = project.config.read_text().replace("[runner]", "[runner]\nhost_timeout = 2")
    project.write_config(text.replace('max_attempts = 1\n\n[jobs."tests.fixtures:Stubborn"]',
                                      'max_attempts = 2\n\n[jobs."tests.fixtures:Stubborn"]'))
    started = tmp_path / "started"
    started.mkdir()
    submit_many(project, 3, f"""ctx.store.create(prepare(ctx, "tests.fixtures:Probe", "sleep",
                [60 if i < 3 else 0, {str(started)!r} + "/" + str(i)]))""")
    worker_b = start_worker(project, "host-b", "--concurrency", "3")
    wait_until(lambda: len(list(started.iterdir())) == 3, timeout=30, message="3 jobs running on B")
    running = [j for j in project.jobs() if j.status == "running"]
    assert len(running) == 3 and {j.host for j in running} == {"host-b"}
    # Host B dies: its worker and every job process, all at once.
    victims = [worker_b.pid] + [j.pid for j in running]
    for j in running:
        for child in psutil.Process(j.pid).children(recursive=True):
            victims.append(child.pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker_b.wait()
    # The jobs' processes were children of B's worker: reap nothing else; host A takes over.
    for p in started.iterdir():
        p.unlink()
    worker_a = start_worker(project, "host-a", "--concurrency", "3")
    try:
        wait_until(lambda: all(j.attempts == 2 and j.host == "host-a" and j.status == "running"
                               for j in project.jobs()), timeout=30,
                   message="host A to retry the lost jobs")
        store = project.store()
        for old in running:
            [first] = [a for a in store.attempts(old.id) if a.attempt == 1]
            assert first.outcome == "crashed" and "lease expired" in first.error
            # The "dead" host comes back and writes for its old attempt: rejected.
            assert not store.finish(old.id, old.attempts, status="completed", now=time.time())
            assert not store.set_progress(old.id, old.attempts, {"done": 1})
            assert store.get(old.id).status == "running"
        for j in project.jobs():
            assert project.cli("cancel", str(j.id)).returncode == 0
    finally:
        worker_a.terminate()
        worker_a.wait(timeout=30)
