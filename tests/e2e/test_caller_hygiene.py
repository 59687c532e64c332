"""A long-lived caller (a web server, a daemon) that launches many jobs stays clean."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Project


@pytest.mark.timeout(900)  # 1,000 spawned jobs one after another: minutes on a busy 2-CPU host
def test_no_zombies_or_fd_leaks_in_a_long_lived_caller(sqlite_project: Project) -> None:
    """A caller that launches 1,000 jobs itself is left with no zombie children and no leaked fds."""
    project = sqlite_project
    n = int(os.environ.get("BGRUNNER_TEST_LAUNCHES", "1000"))
    code = f"""
        import os, time, psutil, bgrunner
        me = psutil.Process()
        for i in range({n}):
            job_id = bgrunner.run_background_job("tests.fixtures:Probe", "noop")
            bgrunner.wait_for(job_id, timeout=60)
            if i == 0:
                fds = me.num_fds()
        deadline = time.time() + 30
        while time.time() < deadline:
            kids = me.children()
            if not kids:
                break
            time.sleep(0.05)
        zombies = [c.pid for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
        print(len(zombies), me.num_fds() - fds, len(kids))
    """
    r = project.python(code, timeout=900)
    assert r.returncode == 0, r.stderr
    zombies, fd_growth, children = map(int, r.stdout.split())
    assert zombies == 0 and children == 0
    assert fd_growth <= 2, fd_growth
    jobs = project.jobs()
    assert len(jobs) == n and {j.status for j in jobs} == {"completed"}
