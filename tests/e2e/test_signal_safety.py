"""A store row cannot steer a worker's signals (issue #15, item 1).

Whoever can write the store (a bug, a restored backup, a hostile tenant) could
put any pid on a job row. A worker or a cancel signals a pid only when the
process proves it is that job's process: same start time as recorded, and its
name (``bgjob:<id>``) or command line (``--job-id <id>``) names the job; never
pid 1, itself or its ancestors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgrunner import procs
from bgrunner.model import NewJob
from tests.conftest import ROOT, Project, gone, wait_until

HOST = "signal-host"


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process (its own session, like a job's) that nobody may signal."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def forged_row(project: Project, pid: int, pid_ctime: float | None, *, cancelled: bool) -> int:
    """A job row claiming to run as ``pid`` on this worker's host."""
    store = project.store()
    try:
        job_id = store.create(NewJob(target="tests.fixtures:Probe", method="noop", params=[]))
        assert store.claim(job_id, now=9e9, cap=1000, host=HOST) is not None
        store._change(f"UPDATE {store.prefix}jobs SET pid = ?, pid_ctime = ? WHERE id = ?",
                      (pid, pid_ctime, job_id))
        if cancelled:
            assert store.cancel(job_id, now=9e9) is not None
        return int(job_id)
    finally:
        store.close()


@pytest.fixture
def sqlite_project(sqlite_project: Project) -> Project:
    """Every process of the test (worker, CLI) on one host id."""
    sqlite_project.extra_env["BGRUNNER_HOST_ID"] = HOST
    return sqlite_project


def start_worker(project: Project) -> subprocess.Popen[bytes]:
    env = {**project.env, "BGRUNNER_AUTOSTART": "0"}
    return subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "2"],
                            cwd=ROOT, env=env)


def real_job_cancelled(project: Project, tmp_path: Path) -> None:
    """Run a real job on the worker, cancel it and wait for its process to stop.

    The worker checks every cancelled job of its host in one pass: once the real
    one is stopped, the forged rows were seen too.
    """
    sentinel = tmp_path / "started"
    r = project.python(f"""
        from bgrunner.api import context
        from bgrunner.jobs import prepare, submit
        ctx = context()
        ctx.autostart = False
        print(submit(ctx, prepare(ctx, "tests.fixtures:Probe", "sleep", [60, {str(sentinel)!r}])))
    """)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    wait_until(sentinel.exists, timeout=30, message="the real job to start")
    pid = int(sentinel.read_text())
    assert project.cli("cancel", job_id).returncode == 0
    wait_until(lambda: gone(pid), timeout=30, message="the real job's process to be stopped")


@pytest.mark.parametrize("with_start_time", [False, True], ids=["no-start-time", "matching-start-time"])
def test_a_worker_never_signals_an_unrelated_pid_from_a_cancelled_row(
        sqlite_project: Project, tmp_path: Path, victim: subprocess.Popen[bytes],
        with_start_time: bool) -> None:
    """A cancelled row naming an unrelated process (with or without its true start time): never signalled."""
    project = sqlite_project
    ctime = procs.start_time(victim.pid) if with_start_time else None
    forged = forged_row(project, victim.pid, ctime, cancelled=True)
    worker = start_worker(project)
    try:
        real_job_cancelled(project, tmp_path)
        assert victim.poll() is None, "the unrelated process was signalled"
        assert project.job(forged).status == "cancelled"
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_cancel_of_a_running_row_with_a_foreign_pid_cancels_without_signalling(
        sqlite_project: Project, victim: subprocess.Popen[bytes]) -> None:
    """`bgrunner cancel` of a running row whose pid is another process (start time matching): cancelled, not signalled."""
    project = sqlite_project
    forged = forged_row(project, victim.pid, procs.start_time(victim.pid), cancelled=False)
    r = project.cli("cancel", str(forged))
    assert r.returncode == 0, r.stderr
    assert project.job(forged).status == "cancelled"
    assert victim.poll() is None


def test_is_job_process_needs_the_start_time_and_the_jobs_name(victim: subprocess.Popen[bytes]) -> None:
    """Proof of a job process: start time recorded and equal, and the process names the job."""
    ctime = procs.start_time(victim.pid)
    assert ctime is not None
    assert not procs.is_job_process(victim.pid, None, 7)
    assert not procs.is_job_process(victim.pid, ctime, 7)  # alive, right start time, not a job
    named = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; from bgrunner import procs; procs.mark_job_process(7);"
                              " print(flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert named.stdout is not None and named.stdout.readline() == b"\n"
        named_ctime = procs.start_time(named.pid)
        assert procs.is_job_process(named.pid, named_ctime, 7)
        assert not procs.is_job_process(named.pid, named_ctime, 8)
        assert not procs.is_job_process(named.pid, (named_ctime or 0) - 5, 7)
    finally:
        named.kill()
        named.wait()


def test_pid_one_this_process_and_its_ancestors_are_never_job_processes() -> None:
    me = os.getpid()
    for pid in (0, 1, me, os.getppid()):
        assert not procs.is_job_process(pid, procs.start_time(pid), 1)
        assert not procs.stop_job_tree(pid, procs.start_time(pid), 1, grace=0)
