"""Fire-and-forget: run_background_job(), detached processes, the worker, cancellation, recovery.

Real processes, real signals, a real SQLite file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bgrunner.context import host_id
from tests.conftest import ROOT, Project, gone, wait_until


@pytest.fixture(autouse=True, params=["fork", "spawn"])
def launch_mode(request: pytest.FixtureRequest, project: Project) -> str:
    """Every test here runs with the worker in both launch modes (direct launches always spawn)."""
    project.write_config(project.config.read_text().replace(
        "[runner]", f'[runner]\nlaunch = "{request.param}"'))
    return str(request.param)


def submit(project: Project, *args: str) -> int:
    r = project.cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def status(project: Project, job_id: int) -> dict:
    r = project.cli("status", str(job_id), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def final(project: Project, job_id: int, timeout: float = 30) -> dict:
    return wait_until(lambda: (s := status(project, job_id))["status"] in
                      ("completed", "failed", "cancelled") and s, timeout=timeout,
                      interval=0.1, message=f"job {job_id} to end")


def test_fire_and_forget_from_a_script_that_exits_at_once(project: Project, tmp_path: Path) -> None:
    """A script submits a job and exits; the job runs anyway, in its own session, with the caller's env and cwd."""
    sentinel = tmp_path / "ran"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    project.extra_env["PROBE_VALUE"] = "inherited"
    code = f"""
        import os, sys, bgrunner
        os.chdir({str(workdir)!r})
        print(bgrunner.run_background_job("tests.fixtures:Probe", "record_pid", [{str(sentinel)!r}]))
    """
    started = time.monotonic()
    r = project.python(code)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 5
    job_id = int(r.stdout.strip())
    job = final(project, job_id)
    assert job["status"] == "completed", job
    pid, sid, cwd, value = sentinel.read_text().split()
    assert int(sid) == job["pid"] != os.getsid(0), "the job's process leads a session of its own"
    assert int(pid) != job["pid"], "each attempt runs in a process of its own"
    assert cwd == str(workdir) and value == "inherited"


def test_params_never_appear_on_the_command_line(project: Project, tmp_path: Path) -> None:
    """The job process reads its params from the store: a secret param is not in its argv."""
    sentinel = tmp_path / "started"
    code = f"""
        import bgrunner
        print(bgrunner.run_background_job("tests.fixtures:Probe", "sleep", [5, {str(sentinel)!r}]))
    """
    job_id = int(project.python(code).stdout)
    wait_until(sentinel.exists, message="job start")
    pid = int(sentinel.read_text().split()[0])
    record = status(project, job_id)
    cmdlines = [" ".join(psutil.Process(p).cmdline()) for p in (pid, record["pid"])]
    assert all(str(sentinel) not in c for c in cmdlines), cmdlines
    assert any("--job-id" in c for c in cmdlines)
    assert project.cli("cancel", str(job_id)).returncode == 0


def test_bad_submissions_raise_and_record_nothing(project: Project) -> None:
    """Not allowed, private, unserialisable or ill-fitting params raise a JobError subclass; nothing is stored."""
    code = """
        import bgrunner
        cases = [
            ("tests.fixtures:Nope", "mark", []),
            ("tests.fixtures:Probe", "_x", []),
            ("tests.fixtures:Probe", "mark", [object()]),
            ("tests.fixtures:Probe", "mark", "not a list"),
        ]
        for target, method, params in cases:
            try:
                bgrunner.run_background_job(target, method, params)
            except bgrunner.JobError as exc:
                print(type(exc).__name__)
        from tests.fixtures import Probe
        try:
            bgrunner.run_background_job(Probe, "typed", [1])
        except bgrunner.JobError as exc:
            print(type(exc).__name__)
    """
    r = project.python(code)
    assert r.stdout.split() == ["NotAllowedError", "NotAllowedError", "ParamsError",
                                "ParamsError", "ParamsError"], r.stderr
    assert project.jobs() == []
    r = project.cli("submit", "tests.fixtures:Probe", "typed", "x,1,yes")
    assert r.returncode == 2 and "'n'" in r.stderr and len(r.stderr.splitlines()) == 1
    assert project.cli("submit", "os:system", "ls").returncode == 3
    assert project.jobs() == []


def test_delay_is_honoured(project: Project, tmp_path: Path) -> None:
    """A delayed job waits for its run_at and is launched within 100 ms of it (auto-started worker)."""
    sentinel = tmp_path / "ran"
    job_id = submit(project, "tests.fixtures:Probe", "mark", str(sentinel), "--delay", "3")
    job = project.job(job_id)
    assert job.status == "pending" and job.run_at - job.created_at > 2
    assert final(project, job_id)["status"] == "completed"
    job = project.job(job_id)
    lateness = job.started_at - job.run_at
    assert 0 <= lateness <= 0.1, f"launched {lateness:.3f} s after its run_at"


def test_priority_order_with_one_slot(project: Project, tmp_path: Path) -> None:
    """With --concurrency 1 the worker runs higher priority first, then earlier run_at, then older."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    sentinel = tmp_path / "order"
    for name, prio in [("low", 0), ("high", 10), ("mid", 5), ("high2", 10), ("low2", 0)]:
        submit(project, "tests.fixtures:Probe", "mark", f"{sentinel},{name}", "--priority", str(prio))
    assert not sentinel.exists(), "autostart off: nothing runs until a worker does"
    r = project.cli("worker", "--concurrency", "1", "--burst", timeout=120)
    assert r.returncode == 0, r.stderr
    assert sentinel.read_text().split() == ["high", "high2", "mid", "low", "low2"]


def test_cap_holds_with_200_quick_submits(project: Project, tmp_path: Path) -> None:
    """200 submits in a loop never run more than max_concurrent jobs at once; all complete."""
    project.write_config(project.config.read_text().replace(
        "[runner]", "[runner]\nmax_concurrent = 3"))
    marks = tmp_path / "marks"
    marks.mkdir()
    code = f"""
        import bgrunner
        ids = [bgrunner.run_background_job("tests.fixtures:Probe", "sleep",
               [0.05, {str(marks)!r} + f"/{{i}}"]) for i in range(200)]
        print(" ".join(ids))
    """
    r = project.python(code, timeout=120)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(set(ids)) == 200
    peaks: list[int] = []

    def all_completed() -> dict[str, int] | None:
        """Sample the store (every 10 ms: the running count is watched for its peak)."""
        store = project.store()
        try:
            counts = store.counts()
        finally:
            store.close()
        peaks.append(counts["running"])
        return counts if counts["completed"] == 200 else None

    counts = wait_until(all_completed, timeout=180, interval=0.01, message="200 jobs completed")
    assert counts["completed"] == 200, counts
    assert 1 <= max(peaks) <= 3


def test_cancel_pending_job_never_runs(project: Project, tmp_path: Path) -> None:
    """A pending job cancelled before its time never runs; cancel again is exit 1."""
    sentinel = tmp_path / "ran"
    job_id = submit(project, "tests.fixtures:Probe", "mark", str(sentinel), "--delay", "3")
    r = project.cli("cancel", str(job_id))
    assert r.returncode == 0, r.stderr
    # Proving a negative needs the time to pass: wait until well past its run_at.
    time.sleep(max(0.0, project.job(job_id).run_at + 1.0 - time.time()))
    assert not sentinel.exists()
    assert status(project, job_id)["status"] == "cancelled"
    assert project.cli("cancel", str(job_id)).returncode == 1
    assert project.cli("cancel", "424242").returncode == 1


@pytest.mark.parametrize("method", ["with_grandchild", "ignore_term"])
def test_cancel_running_kills_the_tree(project: Project, tmp_path: Path, method: str) -> None:
    """Cancelling a running job kills its tree (grandchild in its own session, SIGTERM ignored); status stays cancelled."""
    sentinel = tmp_path / "pids"
    job_id = submit(project, "tests.fixtures:Stubborn", method, str(sentinel))
    wait_until(lambda: sentinel.exists() and sentinel.read_text().endswith("\n"),
               message="job start")
    pids = [int(p) for p in sentinel.read_text().split()]
    supervisor = status(project, job_id)["pid"]
    r = project.cli("cancel", str(job_id))
    assert r.returncode == 0, r.stderr
    # `cancel` wrote the status and its event before returning; once every process of the job
    # has exited (a zombie writes nothing), nothing is left that could overwrite either.
    wait_until(lambda: all(gone(p) for p in [*pids, supervisor]), timeout=15,
               message="the job's processes to die")
    record = status(project, job_id)
    assert record["status"] == "cancelled"
    events = [e["event"] for e in project.events() if e["job_id"] == str(job_id)]
    assert events.count("job_cancelled") == 1


def test_kill_9_of_a_job_is_noticed_and_retried(project: Project, tmp_path: Path) -> None:
    """A job process killed with SIGKILL is recorded as a failed attempt with how it died, then retried."""
    sentinel = tmp_path / "started"
    # 3 s: the job must still run when `status` (a CLI process) has answered, on a busy host too.
    job_id = submit(project, "tests.fixtures:Probe", "sleep", f"3,{sentinel}",
                    "--max-attempts", "2", "--retry-delay", "0")
    wait_until(sentinel.exists, message="job start")
    running = status(project, job_id)
    assert running["status"] == "running", running
    os.kill(running["pid"], signal.SIGKILL)
    record = final(project, job_id)
    assert record["status"] == "completed" and record["attempts"] == 2
    store = project.store()
    [first, second] = store.attempts(job_id)
    # Its launcher (the `submit` command) has exited, so no parent saw the signal: the next
    # status check found the process gone.
    assert first.outcome == "crashed" and "is gone" in (first.error or ""), first
    assert second.outcome == "completed"


def test_crash_inside_the_attempt_is_retried(project: Project, tmp_path: Path) -> None:
    """An attempt whose own process is SIGKILLed (OOM-killer style) is retried by its supervisor."""
    sentinel = tmp_path / "count"
    r = project.run_job("tests.fixtures:Probe", "crash", str(sentinel), "--max-attempts", "2",
                        "--retry-delay", "0")
    assert r.returncode == 0, r.stderr
    [job] = project.jobs()
    store = project.store()
    [first, _] = store.attempts(job.id)
    assert "killed by signal 9 (SIGKILL)" in first.error


def test_dead_job_is_noticed_without_any_worker(project: Project, tmp_path: Path) -> None:
    """With no worker, `status` notices a job whose process is gone and never shows it running."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    job_id = submit(project, "tests.fixtures:Probe", "noop")
    store = project.store()
    job = store.claim(job_id, now=time.time(), cap=10, host=host_id())
    # The victim only has to exist until killed below: its sleep is not a wait on anything.
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    from bgrunner import procs

    store.set_process(job_id, job.attempts, pid=victim.pid, pid_ctime=procs.start_time(victim.pid))
    victim.kill()
    victim.wait()
    record = status(project, job_id)
    assert record["status"] == "failed"
    assert "gone" in record["error"]


INNOCENT = """
    import signal, sys
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    print("ready", flush=True)
    for _ in sys.stdin:
        pending = sorted(s.name for s in signal.sigpending() & stop)
        print("pending:", " ".join(pending), flush=True)
"""


def test_pid_reuse_is_never_signalled(project: Project) -> None:
    """A recorded pid whose start time differs is not the job: cancel does not signal it."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    job_id = submit(project, "tests.fixtures:Probe", "noop")
    # The innocent process blocks the stop signals, so one sent to it stays pending (a SIGKILL
    # kills it): asked after `cancel` has exited, it tells at once whether it was signalled.
    innocent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(INNOCENT)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert innocent.stdout is not None and innocent.stdin is not None
        assert innocent.stdout.readline() == "ready\n"
        store = project.store()
        job = store.claim(job_id, now=time.time(), cap=10, host=host_id())
        from bgrunner import procs

        store.set_process(job_id, job.attempts, pid=innocent.pid,
                          pid_ctime=procs.start_time(innocent.pid) - 1000)
        assert project.cli("cancel", str(job_id)).returncode == 0
        try:
            innocent.stdin.write("pending?\n")
            innocent.stdin.flush()
        except BrokenPipeError:
            pass  # killed: it answers nothing
        assert innocent.stdout.readline() == "pending: \n", "the innocent process was signalled"
        assert innocent.poll() is None, "an innocent process with a reused pid was signalled"
    finally:
        innocent.kill()
        innocent.communicate(timeout=10)  # reaped, its pipes closed


def test_kill_9_of_the_worker_loses_no_job(project: Project, tmp_path: Path) -> None:
    """Killing the worker mid-batch loses nothing: every job completes exactly once after a restart."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    marks = tmp_path / "marks"
    for i in range(30):
        submit(project, "tests.fixtures:Probe", "mark", f"{marks},{i}")
    worker = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "2"],
                              cwd=ROOT, env=project.env)
    wait_until(lambda: marks.exists() and len(marks.read_text().split()) >= 5, timeout=60,
               message="some jobs done")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    r = project.cli("worker", "--concurrency", "2", "--burst", timeout=180)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: all(j.is_final for j in project.jobs()), timeout=60, message="all final")
    done = marks.read_text().split()
    assert sorted(done, key=int) == [str(i) for i in range(30)], "each job ran exactly once"
    assert {j.status for j in project.jobs()} == {"completed"}


def test_concurrent_submitters_get_unique_ids_and_each_job_runs_once(project: Project,
                                                                    tmp_path: Path) -> None:
    """4 processes x 50 submits at once: 200 unique ids, each job run exactly once."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    marks = tmp_path / "marks"
    go = tmp_path / "go"
    # The submitters' starting line: each polls for `go` (a barrier in the child processes,
    # where wait_until is not available; it waits for a condition, not for a fixed time).
    code = f"""
        import os, sys, time, bgrunner
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        n = sys.argv[1]
        print(" ".join(bgrunner.run_background_job("tests.fixtures:Probe", "mark",
              [{str(marks)!r}, f"{{n}}-{{i}}"]) for i in range(50)))
    """
    procs_ = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(n)], cwd=ROOT,
                               env=project.env, stdout=subprocess.PIPE, text=True)
              for n in range(4)]
    go.write_text("")
    ids = [i for p in procs_ for i in p.communicate(timeout=60)[0].split()]
    assert len(ids) == 200 and len(set(ids)) == 200
    r = project.cli("worker", "--concurrency", "4", "--burst", timeout=300)
    assert r.returncode == 0, r.stderr
    done = marks.read_text().split()
    assert len(done) == 200 and len(set(done)) == 200


def test_progress_and_result_are_visible(project: Project) -> None:
    """A running job's progress shows in status; its return value is kept as the result."""
    job_id = submit(project, "tests.fixtures:Probe", "progress", "20,0.05")
    wait_until(lambda: (status(project, job_id).get("progress") or {}).get("done", 0) >= 2,
               message="progress")
    record = final(project, job_id)
    assert record["result"] == 20
    assert record["progress"]["done"] == 20 and record["progress"]["total"] == 20


def test_chained_jobs_run_after_completion(project: Project, tmp_path: Path) -> None:
    """then=[...] follow-ups are queued when the job completes, and not when it fails."""
    sentinel = tmp_path / "chain"
    code = f"""
        import bgrunner
        a = bgrunner.run_background_job("tests.fixtures:Probe", "mark", [{str(sentinel)!r}, "first"],
            then=[("tests.fixtures:Probe", "mark", [{str(sentinel)!r}, "second"])])
        b = bgrunner.run_background_job("tests.fixtures:Probe", "value_error",
            then=[("tests.fixtures:Probe", "mark", [{str(sentinel)!r}, "never"])])
        try:
            bgrunner.run_background_job("tests.fixtures:Probe", "noop", then=[("os:system", "x", [])])
        except bgrunner.NotAllowedError:
            print("rejected")
        print(bgrunner.wait_for(a, 30)["status"], bgrunner.wait_for(b, 30)["status"])
    """
    r = project.python(code)
    assert r.stdout.split() == ["rejected", "completed", "failed"], r.stderr
    wait_until(lambda: sentinel.exists() and "second" in sentinel.read_text(), message="chain")
    jobs = project.jobs()
    child = [j for j in jobs if j.parent_id is not None]
    assert len(child) == 1 and child[0].params[1] == "second"
    assert "never" not in sentinel.read_text()


@pytest.mark.parametrize("preload", [False, True])
def test_preload_jobs_imports_job_modules_in_the_template(project: Project, tmp_path: Path,
                                                         launch_mode: str, preload: bool) -> None:
    """Fork mode with preload_jobs: the job module was imported by the template, not the job."""
    if launch_mode != "fork":
        pytest.skip("preload_jobs is a fork-mode setting")
    project.write_config(project.config.read_text().replace(
        "[runner]", f"[runner]\npreload_jobs = {'true' if preload else 'false'}"))
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"  # the worker launches it (direct launches spawn)
    sentinel = tmp_path / "pids"
    job_id = submit(project, "tests.fixtures:Probe", "import_pid", str(sentinel))
    r = project.cli("worker", "--burst", timeout=120)
    assert r.returncode == 0, r.stderr
    assert status(project, job_id)["status"] == "completed"
    imported_in, pid = map(int, sentinel.read_text().split())
    # No timeout: the method runs in the job process, which imported the module unless preloaded.
    assert (imported_in != pid) is preload


def test_output_is_captured_per_job(project: Project) -> None:
    """A background job's stdout goes to its own output file, shown by `bgrunner logs ID --output`."""
    job_id = submit(project, "examples.jobs:SampleJob", "process", "world,2")
    assert final(project, job_id)["status"] == "completed"
    r = project.cli("logs", str(job_id), "--output")
    assert r.stdout == "hello world\nhello world\n"


def first_sigterm_handled(project: Project, pid: int) -> bool:
    """The worker logged ``worker_stopping``: it has taken the first SIGTERM (it does so before
    the event), so the next one counts as a second rather than merging into the first."""
    return any(e["event"] == "worker_stopping" and e.get("worker_pid") == pid for e in project.events())


def test_worker_warm_shutdown_lets_running_jobs_finish(project: Project, tmp_path: Path) -> None:
    """One SIGTERM: the worker stops claiming, waits for the running job, and exits 0."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    sentinel = tmp_path / "started"
    first = submit(project, "tests.fixtures:Probe", "sleep", f"1,{sentinel}")
    second = submit(project, "tests.fixtures:Probe", "noop", "--delay", "0")
    worker = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "1"],
                              cwd=ROOT, env=project.env)
    wait_until(sentinel.exists, message="job start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert project.job(first).status == "completed"
    assert project.job(second).status == "pending"


def test_worker_second_sigterm_cancels_running_jobs(project: Project, tmp_path: Path) -> None:
    """A second SIGTERM cancels the running jobs and the worker exits."""
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    sentinel = tmp_path / "started"
    job_id = submit(project, "tests.fixtures:Probe", "sleep", f"60,{sentinel}")
    worker = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "1"],
                              cwd=ROOT, env=project.env)
    wait_until(sentinel.exists, message="job start")
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: first_sigterm_handled(project, worker.pid), timeout=30,
               message="the worker to handle the first SIGTERM")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert project.job(job_id).status == "cancelled"
