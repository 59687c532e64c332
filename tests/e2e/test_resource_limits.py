"""``memory_limit_mb`` and ``cpu_limit_s`` (CONTRACT §10): real jobs over their limits, in both launch modes.

Each job runs under the real entry points (``bgrunner worker --burst`` in fork
and spawn mode, ``run_job.py`` in the foreground) from a module this file
writes into the test's folder; a job allocates with ``bytearray`` (memory
filled in C), in its attempt's process or in a child of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bgrunner.job import limits
from tests.conftest import ROOT, Project, gone, wait_until

JOBS = '''
"""Jobs for tests/e2e/test_resource_limits.py."""

import os
import subprocess
import sys
import time

MB = 1024 * 1024


def note(sentinel, text):
    if sentinel:
        with open(sentinel, "a") as f:
            f.write(f"{text}\\n")


def hold(mb):
    """``mb`` MB filled in C, and every page touched again: all of it resident."""
    block = bytearray(mb * MB)
    block[::4096] = b"\\x01" * len(range(0, len(block), 4096))
    return block


def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def child_main(mb, sentinel):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note(sentinel, os.getpid())
    block = hold(mb)
    time.sleep(60)
    return block


class Hog:
    def allocate(self, mb: int, seconds: float, sentinel: str = "") -> int:
        note(sentinel, os.getpid())
        block = hold(mb)
        time.sleep(seconds)
        return len(block)

    def child_allocates(self, mb: int, sentinel: str) -> int:
        """A child in a session of its own, ignoring SIGTERM, holds the memory."""
        code = f"import limitjobs; limitjobs.child_main({mb}, {sentinel!r})"
        return subprocess.Popen([sys.executable, "-c", code], start_new_session=True).wait()

    def spin(self, seconds: float) -> float:
        spin(seconds)
        return round(time.process_time(), 2)

    def spin_children(self, count: int, seconds: float, then_sleep: float) -> int:
        """Children that burn CPU one after another and exit (waited for), then a sleep."""
        for _ in range(count):
            subprocess.run([sys.executable, "-c", f"import limitjobs; limitjobs.spin({seconds})"], check=True)
        time.sleep(then_sleep)
        return count
'''

MEMORY_ERROR = re.compile(r"^memory limit exceeded: (\d+) MB used, limit 100 MB \(memory_limit_mb\); "
                          r"its process tree was killed$")
CPU_ERROR = re.compile(r"^CPU limit exceeded: ([\d.]+) s used, limit 1 s \(cpu_limit_s\); "
                       r"its process tree was killed$")


@pytest.fixture
def limited(sqlite_project: Project, tmp_path: Path) -> Project:
    """A project whose allowlist lists ``limitjobs:Hog``, a module in the test's own folder."""
    folder = tmp_path / "jobmodules"
    folder.mkdir()
    (folder / "limitjobs.py").write_text(JOBS)
    sqlite_project.extra_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(folder)])
    sqlite_project.extra_env["BGRUNNER_AUTOSTART"] = "0"  # the worker launches, in the mode under test
    return sqlite_project


def configure(project: Project, mode: str, **keys: Any) -> None:
    """``[runner] launch = mode`` and a ``[jobs."limitjobs:Hog"]`` entry with ``keys`` (TOML values)."""
    retry_on = keys.pop("retry_on", None)
    lines = [f"{key} = {value}" for key, value in keys.items()]
    entry = "\n".join(['[jobs."limitjobs:Hog"]',
                       'methods = ["allocate", "child_allocates", "spin", "spin_children"]', *lines])
    if retry_on:
        entry += '\n\n[jobs."limitjobs:Hog".retry_on]\n' + "\n".join(f"{k} = {v}" for k, v in retry_on.items())
    from tests.conftest import ALLOWLIST

    project.write_config(ALLOWLIST.replace("[runner]", f'[runner]\nlaunch = "{mode}"') + "\n" + entry + "\n")


def run(project: Project, method: str, params: str) -> tuple[Any, float]:
    """Submit one job and run a burst worker until it has ended: the job's record, and how long it took."""
    r = project.cli("submit", "limitjobs:Hog", method, params)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout)
    started = time.monotonic()
    r = project.cli("worker", "--burst", timeout=120)
    assert r.returncode == 0, r.stderr
    job = project.job(job_id)
    assert job.status in ("completed", "failed"), job
    return job, time.monotonic() - started


def pids(sentinel: Path) -> list[int]:
    return [int(line) for line in sentinel.read_text().split()] if sentinel.exists() else []


MODES = ["fork", "spawn"]


@pytest.mark.parametrize("mode", MODES)
def test_a_job_over_its_memory_limit_is_killed_and_fails_saying_so(limited: Project, tmp_path: Path,
                                                                   mode: str) -> None:
    """300 MB under memory_limit_mb = 100: the tree is killed at once, the attempt fails with the
    limit and the measured value (not after the job's 60 s sleep)."""
    configure(limited, mode, memory_limit_mb=100)
    sentinel = tmp_path / "pids"
    job, took = run(limited, "allocate", f"300,60,{sentinel}")
    assert job.status == "failed" and job.attempts == 1
    match = MEMORY_ERROR.match(job.error)
    assert match, job.error
    assert 100 < int(match.group(1)) <= 400
    assert took < 30
    [pid] = pids(sentinel)
    assert gone(pid)
    [attempt] = limited.store().attempts(job.id)
    assert attempt.outcome == "error" and attempt.error == job.error
    [failed] = [e for e in limited.events() if e["event"] == "job_failed"]
    assert failed["error"] == job.error


@pytest.mark.parametrize("mode", MODES)
def test_memory_held_by_a_child_process_counts(limited: Project, tmp_path: Path, mode: str) -> None:
    """A child in a session of its own, ignoring SIGTERM, allocates: the tree's sum catches it and
    the child is killed with the rest."""
    configure(limited, mode, memory_limit_mb=100)
    sentinel = tmp_path / "child"
    job, took = run(limited, "child_allocates", f"300,{sentinel}")
    assert job.status == "failed" and MEMORY_ERROR.match(job.error), job.error
    assert took < 30
    [child] = pids(sentinel)
    wait_until(lambda: gone(child), timeout=10, message="the child to be killed")


@pytest.mark.parametrize("mode", MODES)
def test_retry_on_the_memory_limit_gives_a_second_attempt(limited: Project, tmp_path: Path, mode: str) -> None:
    """``retry_on = {JobMemoryLimit = 2}`` with max_attempts = 1: two attempts, both over the limit."""
    configure(limited, mode, memory_limit_mb=100, max_attempts=1, retry_on={"JobMemoryLimit": 2})
    sentinel = tmp_path / "pids"
    job, _ = run(limited, "allocate", f"300,60,{sentinel}")
    assert (job.status, job.attempts) == ("failed", 2)
    assert len(set(pids(sentinel))) == 2
    attempts = limited.store().attempts(job.id)
    assert [a.outcome for a in attempts] == ["error", "error"]
    assert all(MEMORY_ERROR.match(a.error or "") for a in attempts)
    assert [e["event"] for e in limited.events() if e["event"] in ("job_retrying", "job_failed")] == [
        "job_retrying", "job_failed"]


def test_retry_on_the_other_limit_does_not_match(limited: Project, tmp_path: Path) -> None:
    """``retry_on = {JobCpuLimit = 3}`` says nothing about memory: max_attempts = 1 holds."""
    configure(limited, "fork", memory_limit_mb=100, max_attempts=1, retry_on={"JobCpuLimit": 3})
    job, _ = run(limited, "allocate", "300,60")
    assert (job.status, job.attempts) == ("failed", 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_busy_loop_over_its_cpu_limit_fails_within_seconds(limited: Project, mode: str) -> None:
    configure(limited, mode, cpu_limit_s=1)
    job, took = run(limited, "spin", "60")
    assert job.status == "failed"
    match = CPU_ERROR.match(job.error)
    assert match, job.error
    assert 1.0 < float(match.group(1)) < 2.0
    assert took < 30  # wall time, worker start included, on a loaded host: the CPU value above is the check


@pytest.mark.parametrize("mode", MODES)
def test_cpu_of_children_that_already_exited_counts(limited: Project, mode: str) -> None:
    """Two children burn 0.7 s each and exit: 1.4 s for the tree, over cpu_limit_s = 1, though no
    process ever used 1 s and the attempt itself then only sleeps."""
    configure(limited, mode, cpu_limit_s=1)
    job, took = run(limited, "spin_children", "2,0.7,60")
    assert job.status == "failed" and CPU_ERROR.match(job.error), job.error
    assert took < 30


@pytest.mark.parametrize("mode", MODES)
def test_jobs_under_their_limits_complete(limited: Project, mode: str) -> None:
    configure(limited, mode, memory_limit_mb=100, cpu_limit_s=5)
    job, _ = run(limited, "allocate", "20,0.3")
    assert (job.status, job.result, job.error) == ("completed", 20 * limits.MB, None)
    job, _ = run(limited, "spin", "0.3")
    assert job.status == "completed" and 0.3 <= job.result < 5


def test_a_foreground_run_job_enforces_the_limit_too(limited: Project) -> None:
    configure(limited, "spawn", memory_limit_mb=100)
    r = limited.run_job("limitjobs:Hog", "allocate", "300,60")
    assert r.returncode == 1
    assert "memory limit exceeded: " in r.stderr and "limit 100 MB (memory_limit_mb)" in r.stderr
    [job] = limited.jobs()
    assert job.status == "failed" and MEMORY_ERROR.match(job.error)


# -- the pieces on real processes -----------------------------------------------------------------
def test_the_tree_sampler_sees_a_grandchild_allocate(tmp_path: Path) -> None:
    """ProcTree on a real tree: a child whose own child (in a new session) holds 64 MB."""
    sentinel = tmp_path / "grandchild"
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        inner = "b = bytearray(64 * 1024 * 1024); open({str(sentinel)!r}, 'w').write('x'); import time; time.sleep(60)"
        subprocess.Popen([sys.executable, "-c", inner], start_new_session=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    tree = limits.ProcTree(child.pid)
    try:
        wait_until(sentinel.exists, message="the grandchild's allocation")
        usage = wait_until(lambda: (u := tree.sample()).processes == 1 and u, message="the grandchild")
        assert usage.rss_bytes >= 64 * limits.MB
        assert child.pid not in tree.members
    finally:
        for pid in tree.members:
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_the_rlimit_backstop_kills_a_process_and_reads_as_the_cpu_limit() -> None:
    """The kernel's RLIMIT_CPU backstop (for a supervisor that stalls) ends a spinning process at
    ``cpu_backstop`` seconds with SIGKILL, and the supervisor records that as JobCpuLimit."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            limits.apply_cpu_backstop(0.5)
            while True:
                pass
        finally:
            os._exit(3)
    _, status, usage = os.wait4(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    cpu = usage.ru_utime + usage.ru_stime
    assert cpu >= limits.cpu_backstop(0.5) - 0.5  # rusage and the kernel's timer differ by a tick or so
    exceeded = limits.backstop_hit(limits.Limits(cpu_s=0.5), status, cpu, 1)
    assert exceeded is not None and exceeded.names[0] == "JobCpuLimit"
