"""The fork server: job processes forked from a warm template behave like spawned ones.

Real processes, real signals, a real SQLite file; the jobs are claimed exactly
as the worker claims them (``store.claim_next``) before they are launched.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bgrunner import jobs
from bgrunner.context import Context, host_id
from bgrunner.errors import ForkServerError
from bgrunner.jobs import launch_forked
from bgrunner.launch.forkserver import ForkServer
from tests.conftest import ROOT, Project, gone, wait_until

PROBE = "tests.fixtures:Probe"


@pytest.fixture
def ctx(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    """The project's context, as a worker has it (the template inherits this environment)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(ROOT)
    context = Context.resolve(str(project.config), str(project.log_dir), project.database_url)
    context.autostart = False  # nothing may be launched behind the test's back
    yield context
    context.store.close()


@pytest.fixture
def server(ctx: Context) -> Iterator[ForkServer]:
    fs = ForkServer(ctx)
    fs.start()
    yield fs
    fs.close()


@pytest.fixture(autouse=True)
def no_leftover_jobs(project: Project) -> Iterator[None]:
    """Kill the job processes a failing test may leave behind (they live in sessions of their own)."""
    yield
    for job in project.jobs():
        if job.pid and job.status == "running" and psutil.pid_exists(job.pid):
            try:
                psutil.Process(job.pid).kill()
            except psutil.Error:
                pass


def queue(ctx: Context, method: str, params: list[object] | None = None,
          target: str = PROBE, **options: object) -> int:
    return jobs.submit(ctx, jobs.prepare(ctx, target, method, params or [], **options))


def claim_and_launch(ctx: Context, server: ForkServer) -> tuple[int, int]:
    """What the worker's _fill_slots does: claim the next ready job, fork its process."""
    job = ctx.store.claim_next(now=time.time(), cap=1000, host=host_id())
    assert job is not None
    return job.id, launch_forked(ctx, server, job).pid


def collect_exits(server: ForkServer, pids: set[int], timeout: float = 30) -> dict[int, int]:
    """Wait on the server's fileno, as the worker's selector does, until these pids are reported."""
    selector = selectors.DefaultSelector()
    selector.register(server.fileno(), selectors.EVENT_READ)
    found: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while not pids <= found.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no exit reported for {pids - found.keys()} after {timeout}s")
            selector.select(min(left, 1.0))
            found.update(server.exits())
    finally:
        selector.close()
    return found


def open_files(pid: int) -> set[str]:
    """What the process's descriptors point at (one closed while listing is left out)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return found


def final(ctx: Context, job_id: int, timeout: float = 30):  # type: ignore[no-untyped-def]
    return jobs.wait_for(ctx, job_id, timeout=timeout)


def test_a_forked_job_runs_completes_and_is_reported(ctx: Context, server: ForkServer,
                                                     tmp_path: Path) -> None:
    """The job runs in its own process and session, recorded with its pid; exits() gives 0."""
    sentinel = tmp_path / "pid"
    queue(ctx, "record_pid", [str(sentinel)])
    job_id, pid = claim_and_launch(ctx, server)
    assert pid != server.pid and pid != os.getpid()
    assert collect_exits(server, {pid}) == {pid: 0}
    record = final(ctx, job_id)
    assert record.status == "completed"
    assert record.pid == pid
    seen_pid, seen_sid, cwd, _ = (sentinel.read_text().split(" ") + [""])[:4]
    # No timeout: the method runs in the job process itself (inline), which leads its session.
    assert int(seen_sid) == pid
    assert int(seen_pid) == pid
    assert cwd == str(ROOT)


def test_a_job_with_a_timeout_runs_its_method_in_an_attempt_process(
        ctx: Context, server: ForkServer, tmp_path: Path) -> None:
    """A deadline is enforced from outside the method's process: the job process forks an attempt."""
    sentinel = tmp_path / "pid"
    queue(ctx, "record_pid", [str(sentinel)], timeout=30)
    job_id, pid = claim_and_launch(ctx, server)
    assert collect_exits(server, {pid}) == {pid: 0}
    assert final(ctx, job_id).status == "completed"
    seen_pid, seen_sid = map(int, sentinel.read_text().split(" ")[:2])
    assert seen_sid == pid and seen_pid != pid


def test_a_forked_job_past_its_timeout_is_killed_with_its_tree(
        ctx: Context, server: ForkServer, tmp_path: Path) -> None:
    """Fork mode keeps timeouts: a method spinning in C code, ignoring SIGTERM, is killed at the deadline."""
    sentinel = tmp_path / "started"
    queue(ctx, "busy_c", [str(sentinel)], target="tests.fixtures:Stubborn", timeout=1,
          max_attempts=1)
    job_id, pid = claim_and_launch(ctx, server)
    wait_until(sentinel.exists, message="the job to start")
    attempt_pid = int(sentinel.read_text().split()[0])
    assert attempt_pid != pid
    assert collect_exits(server, {pid}, timeout=60) == {pid: 1}
    record = final(ctx, job_id)
    assert record.status == "failed" and "timed out after 1 s" in (record.error or "")
    assert gone(attempt_pid)


def test_a_failed_inline_attempt_is_released_for_a_fresh_process(
        ctx: Context, server: ForkServer, tmp_path: Path) -> None:
    """Inline retries are not slept on in-process: the job goes back to the queue, no pid kept."""
    queue(ctx, "value_error", max_attempts=2, retry_delay=0)
    job_id, pid = claim_and_launch(ctx, server)
    assert collect_exits(server, {pid}) == {pid: 1}
    record = ctx.store.get(job_id)
    assert (record.status, record.pid, record.attempts) == ("retrying", None, 1)
    second_id, second = claim_and_launch(ctx, server)
    assert second_id == job_id and second != pid
    assert collect_exits(server, {second}) == {second: 1}
    record = ctx.store.get(job_id)
    assert (record.status, record.attempts) == ("failed", 2)
    assert [a.outcome for a in ctx.store.attempts(job_id)] == ["error", "error"]


def test_the_job_process_leads_its_session_and_names_the_job(ctx: Context, server: ForkServer,
                                                             tmp_path: Path) -> None:
    """While running: own session and group, child of the template, title names the job."""
    pytest.importorskip("setproctitle")
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [5, str(sentinel)])
    job_id, pid = claim_and_launch(ctx, server)
    wait_until(sentinel.exists, message="the job to start")
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    proc = psutil.Process(pid)
    assert proc.ppid() == server.pid
    assert " ".join(proc.cmdline()).startswith(f"bgrunner job {job_id} {PROBE}.sleep")
    record = ctx.store.get(job_id)
    assert record.pid == pid and record.status == "running"
    assert psutil.Process(pid).create_time() == pytest.approx(record.pid_ctime, abs=0.05)
    output = ctx.output_dir + f"/{job_id}.out"
    assert os.path.exists(output) and os.stat(output).st_mode & 0o777 == 0o600
    assert not open_files(pid) & {f for f in open_files(server.pid) if f.startswith("socket:")}
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    assert os.readlink(f"/proc/{pid}/fd/1") == output
    proc.kill()
    collect_exits(server, {pid})


def test_a_job_killed_with_sigkill_is_reported_as_minus_9(ctx: Context, server: ForkServer,
                                                          tmp_path: Path) -> None:
    """exits() gives the return code as subprocess would: -9; the worker's record_death fails it."""
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [30, str(sentinel)])
    job_id, pid = claim_and_launch(ctx, server)
    wait_until(sentinel.exists, message="the job to start")
    os.kill(pid, signal.SIGKILL)
    assert collect_exits(server, {pid}) == {pid: -9}
    job = ctx.store.get(job_id)
    assert jobs.record_death(ctx, job, "killed by signal 9 (SIGKILL)", relaunch=False)
    assert ctx.store.get(job_id).status == "failed"


def test_cancel_kills_a_forked_job_tree(ctx: Context, server: ForkServer, tmp_path: Path) -> None:
    """jobs.cancel (pid + start time, kill_tree) works on a forked job as on a spawned one."""
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [30, str(sentinel)])
    job_id, pid = claim_and_launch(ctx, server)
    wait_until(sentinel.exists, message="the job to start")
    attempt_pid = int(sentinel.read_text().split()[0])
    assert jobs.cancel(ctx, job_id)
    assert ctx.store.get(job_id).status == "cancelled"
    exits = collect_exits(server, {pid})
    assert exits[pid] in (4, -signal.SIGTERM, -signal.SIGKILL)
    wait_until(lambda: gone(attempt_pid), message="the attempt process to die")


def test_allowlist_is_read_by_every_job_and_makes_the_template_stale(
        ctx: Context, server: ForkServer, project: Project) -> None:
    """A target removed from the allowlist is refused at once, before the template is renewed."""
    queue(ctx, "noop")
    job = ctx.store.claim_next(now=time.time(), cap=1000, host=host_id())
    assert not server.stale()
    text = project.config.read_text().replace('"noop", ', "")
    project.config.write_text(text)
    os.utime(project.config, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    assert server.stale()
    pid = launch_forked(ctx, server, job).pid
    assert collect_exits(server, {pid}) == {pid: 3}  # not allowed
    record = ctx.store.get(job.id)
    assert record.status == "failed" and "not allowed" in (record.error or "")
    server.renew()
    assert not server.stale()


def _write_module(path: Path, version: int) -> None:
    path.write_text(textwrap.dedent(f"""
        import os
        IMPORTED_IN = os.getpid()

        class Versioned:
            def which(self, sentinel: str) -> int:
                with open(sentinel, "w") as f:
                    f.write(f"{version} {{IMPORTED_IN}} {{os.getppid()}}")
                return {version}
    """))
    # Two writes in one clock tick could keep the mtime: move it on explicitly.
    bump = time.time_ns() + version * 1_000_000_000
    os.utime(path, ns=(bump, bump))


def test_preloaded_job_module_changed_on_disk_is_picked_up(
        project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """preload_jobs: the template imports the job module; an edit makes it stale, then is run."""
    modules = tmp_path / "mods"
    modules.mkdir()
    name = f"fsjob_{uuid.uuid4().hex[:8]}"
    source = modules / f"{name}.py"
    _write_module(source, 1)
    target = f"{name}:Versioned"
    with project.config.open("a") as f:
        f.write(f'\n[jobs."{target}"]\nmethods = ["which"]\n')
    monkeypatch.setenv("PYTHONPATH", f"{modules}{os.pathsep}{ROOT}")
    monkeypatch.chdir(ROOT)
    ctx = Context.resolve(str(project.config), str(project.log_dir), project.database_url)
    ctx.autostart = False
    sentinel = tmp_path / "which"

    def run() -> tuple[int, int, int]:
        queue(ctx, "which", [str(sentinel)], target=target)
        job_id, pid = claim_and_launch(ctx, server)
        assert collect_exits(server, {pid}) == {pid: 0}
        assert final(ctx, job_id).status == "completed"
        version, imported_in, _parent = map(int, sentinel.read_text().split())
        return version, imported_in, pid

    server = ForkServer(ctx, preload_jobs=True)
    server.start()
    try:
        # A broken allow-listed module is skipped (its jobs fail as usual), the rest preloaded.
        assert [n for n in server.notes if "tests.broken_module" not in n] == []
        first_template = server.pid
        assert run()[:2] == (1, first_template)  # imported once, in the template
        assert not server.stale()

        _write_module(source, 2)
        assert server.stale()
        # Not renewed yet: the child notices the edit and re-executes as run_job.py.
        version, imported_in, pid = run()
        assert version == 2 and imported_in == pid

        server.renew()
        assert not server.stale()
        assert server.pid != first_template
        assert run()[:2] == (2, server.pid)

        # The same after close + a new ForkServer.
        _write_module(source, 3)
        assert server.stale()
        server.close()
        server = ForkServer(ctx, preload_jobs=True)
        server.start()
        assert run()[:2] == (3, server.pid)
    finally:
        server.close()
        ctx.store.close()


def test_renew_keeps_reporting_the_retired_templates_jobs(ctx: Context, server: ForkServer,
                                                          tmp_path: Path) -> None:
    """After renew() the old template reports its running job's exit, then exits by itself."""
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [1.5, str(sentinel)])
    _, old_pid = claim_and_launch(ctx, server)
    old_template = psutil.Process(server.pid)
    server.renew()
    assert server.pid != old_template.pid
    queue(ctx, "sleep", [1.0, str(tmp_path / "second")])  # alive while its parent is looked up
    _, new_pid = claim_and_launch(ctx, server)
    assert psutil.Process(new_pid).ppid() == server.pid
    assert collect_exits(server, {old_pid, new_pid}) == {old_pid: 0, new_pid: 0}
    old_template.wait(10)
    assert server.exits() == []
    assert server.orphans() == []
    assert server.running() == 0


def test_max_jobs_makes_the_template_stale(ctx: Context) -> None:
    """After max_jobs forks the template asks to be renewed (bounded memory growth)."""
    with ForkServer(ctx, max_jobs=3) as server:
        pids = set()
        for _ in range(3):
            assert not server.stale()
            queue(ctx, "noop")
            pids.add(claim_and_launch(ctx, server)[1])
        assert server.stale()
        collect_exits(server, pids)


def test_closing_the_worker_side_leaves_running_jobs_alone(ctx: Context, server: ForkServer,
                                                           tmp_path: Path) -> None:
    """close(): the template exits, the running job keeps running and records its own end."""
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [2, str(sentinel)])
    job_id, pid = claim_and_launch(ctx, server)
    wait_until(sentinel.exists, message="the job to start")
    template = psutil.Process(server.pid)
    server.close()
    template.wait(10)
    assert psutil.Process(pid).is_running()
    assert final(ctx, job_id).status == "completed"
    assert server.orphans() == [pid]


def test_a_dead_worker_makes_the_template_exit_but_not_the_job(project: Project,
                                                               tmp_path: Path) -> None:
    """SIGKILL the process holding the ForkServer: EOF ends the template; the job finishes."""
    sentinel = tmp_path / "started"
    code = f"""
        import sys, time
        from bgrunner import jobs
        from bgrunner.context import Context, host_id
        from bgrunner.jobs import launch_forked
        from bgrunner.launch.forkserver import ForkServer
        ctx = Context.resolve()
        ctx.autostart = False
        jobs.submit(ctx, jobs.prepare(ctx, {PROBE!r}, "sleep", [2, {str(sentinel)!r}]))
        server = ForkServer(ctx)
        server.start()
        job = ctx.store.claim_next(now=time.time(), cap=10, host=host_id())
        proc = launch_forked(ctx, server, job)
        print(job.id, server.pid, proc.pid, flush=True)
        time.sleep(120)
    """
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                              env=project.env, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        job_id, template_pid, pid = map(int, worker.stdout.readline().split())
        template = psutil.Process(template_pid)
        wait_until(sentinel.exists, message="the job to start")
        worker.kill()
        worker.wait()
        template.wait(10)
        assert psutil.Process(pid).is_running()
        wait_until(lambda: (j := project.job(job_id)) and j.status == "completed",
                   message="the orphaned job to complete")
    finally:
        worker.kill()
        worker.wait()


def test_a_dead_template_is_stale_and_its_jobs_become_orphans(ctx: Context, server: ForkServer,
                                                              tmp_path: Path) -> None:
    """The template killed: launch raises (the claim goes back), stale() is True, renew() works."""
    sentinel = tmp_path / "started"
    queue(ctx, "sleep", [1, str(sentinel)])
    _, running = claim_and_launch(ctx, server)
    template = psutil.Process(server.pid)
    template.kill()
    template.wait(10)
    queue(ctx, "noop")
    job = ctx.store.claim_next(now=time.time(), cap=1000, host=host_id())
    with pytest.raises(Exception, match="cannot start job"):
        launch_forked(ctx, server, job)
    assert ctx.store.get(job.id).status == "pending"  # unclaimed
    with pytest.raises(ForkServerError):
        server.launch(job.id, job.target, job.method, job.attempts)
    assert server.stale()
    server.renew()
    assert server.orphans() == [running]
    assert not server.stale()
    _, pid = claim_and_launch(ctx, server)
    assert collect_exits(server, {pid}) == {pid: 0}


def test_many_launches_leave_no_zombie_and_no_leaked_descriptor(ctx: Context,
                                                                server: ForkServer) -> None:
    """Every child is reaped by the template; its descriptors stay as they were."""
    template = psutil.Process(server.pid)
    spares = wait_until(lambda: len(template.children()) == server.spares and template.children(),
                        message="the spare job processes")
    fds_before = template.num_fds()
    pids = set()
    for _ in range(60):
        queue(ctx, "noop")
        pids.add(claim_and_launch(ctx, server)[1])
    exits = collect_exits(server, pids, timeout=120)
    assert set(exits.values()) == {0}
    # What is left are spares, each waiting for a job (not one of those that ran).
    wait_until(lambda: len(template.children()) == server.spares, message="the spares again")
    assert not {p.pid for p in template.children()} & pids
    assert {p.pid for p in spares} <= pids  # the first spares ran jobs
    zombies = [p for p in psutil.process_iter(["ppid", "status"])
               if p.info["ppid"] == template.pid and p.info["status"] == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert template.num_fds() == fds_before
    assert server.running() == 0
    assert ctx.store.counts()["completed"] == 60


def test_a_job_process_that_dies_before_its_start_is_a_failed_attempt(
        ctx: Context, server: ForkServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handed its job, the process dies before go: a failed attempt, not an endless re-claim."""
    real_hand = server.hand

    def hand_then_die(*args: object) -> int:
        pid = real_hand(*args)  # type: ignore[arg-type]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(pid), message="the template to reap it")
        return pid

    monkeypatch.setattr(server, "hand", hand_then_die)
    queue(ctx, "noop")
    job = ctx.store.claim_next(now=time.time(), cap=1000, host=host_id())
    with pytest.raises(Exception, match=f"cannot start job {job.id}"):
        launch_forked(ctx, server, job)
    record = ctx.store.get(job.id)
    assert record.status == "failed" and "died before its start" in (record.error or ""), record
    assert ctx.store.claim_next(now=time.time(), cap=1000, host=host_id()) is None


def hand_a_marking_job(ctx: Context, server: ForkServer, sentinel: Path) -> tuple[Any, int]:
    """Queue and claim a job that creates ``sentinel``, hand it to a process, no go yet: (job, pid)."""
    queue(ctx, "mark", [str(sentinel)])
    job = ctx.store.claim_next(now=time.time(), cap=1000, host=host_id())
    return job, server.hand(job.id, job.target, job.method, job.attempts)


def test_a_recorded_job_runs_even_if_its_worker_dies_before_go(ctx: Context, server: ForkServer,
                                                               tmp_path: Path) -> None:
    """The pipe closes after the pid was recorded: the job is the process's own, and it runs."""
    from bgrunner import procs

    sentinel = tmp_path / "ran"
    job, pid = hand_a_marking_job(ctx, server, sentinel)
    assert ctx.store.set_process(job.id, job.attempts, pid=pid, pid_ctime=procs.start_time(pid))
    server.close()  # as a worker killed here: the template exits, the pipe closes, no go
    assert final(ctx, job.id).status == "completed"
    assert sentinel.exists()


def test_an_unrecorded_job_never_runs_when_the_pipe_closes(ctx: Context, server: ForkServer,
                                                           tmp_path: Path) -> None:
    """Handed but never recorded (the worker died first): the process exits, nothing runs."""
    sentinel = tmp_path / "ran"
    job, pid = hand_a_marking_job(ctx, server, sentinel)
    waiting = psutil.Process(pid)
    server.close()
    waiting.wait(10)
    assert not sentinel.exists()
    record = ctx.store.get(job.id)
    assert (record.status, record.pid) == ("running", None)  # reconcile gives it back later


def test_the_template_imports_nothing_that_runs_at_every_fork(ctx: Context) -> None:
    """threading, logging and random register at-fork handlers: a template on SQLite imports none."""
    if not ctx.database_url.startswith("sqlite"):
        pytest.skip("the PostgreSQL driver imports threading and logging itself")
    script = textwrap.dedent("""
        import json, socket, sys
        from bgrunner.launch.template import Template
        template = Template(*socket.socketpair(), 1, spares=1)
        template.warm_up(False)
        print(json.dumps({"modules": sorted(sys.modules), "notes": template.notes}))
    """)
    r = subprocess.run([sys.executable, "-c", script], env=ctx.child_env(), capture_output=True,
                       text=True, timeout=60, check=True)
    found = json.loads(r.stdout)
    assert found["notes"] == []
    assert {"bgrunner.store.sqlite", "bgrunner.job.supervisor", "setproctitle._setproctitle"} <= set(found["modules"])
    assert {"threading", "logging", "random", "subprocess"} & set(found["modules"]) == set()
