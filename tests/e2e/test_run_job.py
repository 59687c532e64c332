"""``python run_job.py`` as a real subprocess against a real SQLite file and real log files."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Project, gone, wait_until


def test_completed_job_is_recorded_and_logged(project: Project, tmp_path: Path) -> None:
    """A job that succeeds exits 0, is stored as completed with its result, and logs start/completion."""
    sentinel = tmp_path / "s"
    r = project.run_job("tests.fixtures:Probe", "mark", f"{sentinel},hello")
    assert r.returncode == 0, r.stderr
    assert sentinel.read_text() == "hello\n"
    [job] = project.jobs()
    assert (job.status, job.attempts, job.result) == ("completed", 1, "hello")
    assert job.params == [str(sentinel), "hello"]
    events = [e for e in project.events() if e["job_id"] == str(job.id)]
    assert [e["event"] for e in events] == ["job_started", "job_completed"]
    for e in events:
        for key in ("timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid"):
            assert key in e
        assert e["timestamp"].endswith("Z")
    assert events[-1]["duration_ms"] >= 0
    assert project.events(errors=True) == []


def test_params_are_converted_to_annotated_types(project: Project) -> None:
    """Comma-separated params become int, float and bool per the method's annotations."""
    r = project.run_job("tests.fixtures:Probe", "typed", "7,2.5,yes")
    assert r.returncode == 0, r.stderr
    [job] = project.jobs()
    assert job.result == {"n": 7, "ratio": 2.5, "flag": True, "types": ["int", "float", "bool"]}


def test_json_params_and_escaped_commas(project: Project, tmp_path: Path) -> None:
    """--json gives keyword params; a backslash-comma is a literal comma."""
    sentinel = tmp_path / "s"
    r = project.run_job("tests.fixtures:Probe", "mark", "--json",
                        json.dumps({"sentinel": str(sentinel), "text": "a,b"}))
    assert r.returncode == 0, r.stderr
    r = project.run_job("tests.fixtures:Probe", "mark", f"{sentinel},c\\,d")
    assert r.returncode == 0, r.stderr
    assert sentinel.read_text() == "a,b\nc,d\n"


def test_failed_job_retries_then_exits_1(project: Project, tmp_path: Path) -> None:
    """A job that keeps failing is tried max_attempts times, logged, and exits 1."""
    sentinel = tmp_path / "count"
    r = project.run_job("tests.fixtures:Probe", "fail_until", f"{sentinel},99",
                        "--max-attempts", "3", "--retry-delay", "0")
    assert r.returncode == 1
    assert len(sentinel.read_text().splitlines()) == 3
    [job] = project.jobs()
    assert job.status == "failed" and job.attempts == 3
    assert "ConnectionError: attempt 3 fails" in job.error
    assert "Traceback" in job.traceback
    names = [e["event"] for e in project.events() if e["job_id"] == str(job.id)]
    assert names.count("job_retrying") == 2 and names[-1] == "job_failed"
    errors = project.events(errors=True)
    assert [e["event"] for e in errors] == ["job_failed"]
    assert "Traceback" in errors[0]["traceback"]


def test_retry_then_success(project: Project, tmp_path: Path) -> None:
    """A job that fails twice then succeeds completes on attempt 3 with exit 0."""
    sentinel = tmp_path / "count"
    r = project.run_job("tests.fixtures:Probe", "fail_until", f"{sentinel},2",
                        "--max-attempts", "5", "--retry-delay", "0")
    assert r.returncode == 0, r.stderr
    [job] = project.jobs()
    assert (job.status, job.attempts, job.result) == ("completed", 3, 3)
    store = project.store()
    outcomes = [a.outcome for a in store.attempts(job.id)]
    assert outcomes == ["error", "error", "completed"]


def test_retry_on_gives_up_at_once_for_listed_exception(project: Project) -> None:
    """retry_on = 1 for ValueError fails the job on its first attempt despite max_attempts."""
    project.write_config(project.config.read_text().replace(
        "[runner]", '[defaults.retry_on]\n"ValueError" = 1\n\n[runner]'))
    r = project.run_job("tests.fixtures:Probe", "value_error", "--max-attempts", "4",
                        "--retry-delay", "0")
    assert r.returncode == 1
    [job] = project.jobs()
    assert job.attempts == 1 and job.status == "failed"


@pytest.mark.parametrize("args, code, fragment", [
    ([], 2, "required"),
    (["tests.fixtures:Probe"], 2, "required"),
    (["tests.fixtures:Nope", "mark"], 3, "not in the allowlist"),
    (["tests.fixtures:Probe", "unlisted"], 3, "not allowed"),
    (["tests.fixtures:Probe", "_hidden"], 3, "private"),
    (["tests.fixtures:Probe", "__init__"], 3, "private"),
    (["tests.fixtures:Probe", "__class__"], 3, "private"),
    (["os:system", "ls"], 3, "not in the allowlist"),
    (["builtins:eval", "x"], 3, "not in the allowlist"),
    (["../x:Y", "run"], 3, "invalid target"),
    (["tests.fixtures:Pro be", "mark"], 3, "invalid target"),
    (["tests.fixtures:Probe", "not a name"], 3, "invalid method"),
    (["tests.fixtures:Probe", "typed", "1,2"], 2, "missing"),
    (["tests.fixtures:Probe", "typed", "1,2,yes,x,extra"], 2, "too many"),
    (["tests.fixtures:Probe", "typed", "one,2,yes"], 2, "'n'"),
    (["tests.fixtures:Probe", "typed", "1,2,maybe"], 2, "'flag'"),
    (["tests.fixtures:Probe", "typed", "--json", "[1, 2"], 2, "invalid JSON"),
    (["tests.fixtures:Probe", "typed", "--json", "5"], 2, "array or object"),
    (["tests.fixtures:Probe", "noop", "--max-attempts", "0"], 2, "max_attempts"),
    (["tests.fixtures:Probe", "noop", "--retry-delay", "-1"], 2, "retry_delay"),
    (["tests.fixtures:Probe", "noop", "--timeout", "abc"], 2, "invalid float"),
])
def test_bad_input_is_one_line_and_records_nothing(project: Project, args: list[str], code: int,
                                                   fragment: str) -> None:
    """Each bad input: one line on stderr, the contract's exit code, no traceback, nothing stored."""
    r = project.run_job(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0]
    assert "Traceback" not in r.stderr
    assert project.jobs() == []


def test_rejections_are_logged_to_both_files(project: Project) -> None:
    """A target that is not allowed is logged as job_rejected with the reason, in both files."""
    r = project.run_job("os:system", "ls")
    assert r.returncode == 3
    [event] = project.events(errors=True)
    assert event["event"] == "job_rejected" and "not in the allowlist" in event["reason"]
    assert event["target"] == "os:system"


@pytest.mark.parametrize("config, fragment", [
    (None, "config file not found"),
    ("[defaults\nmax_attempts = 3\n", "line 1"),
    ('[defaults]\nmax_attempts = "three"\n', "max_attempts"),
    ("[defaults]\nretry_delay = -5\n", "retry_delay"),
    ('[jobs."tests.fixtures:Probe"]\nmethods = ["_x"]\n', "_x"),
])
def test_config_errors_exit_2_and_run_nothing(project: Project, tmp_path: Path,
                                              config: str | None, fragment: str) -> None:
    """A missing, malformed or invalid allowlist is a one-line error naming the file; nothing runs."""
    if config is None:
        project.config.unlink()
    else:
        project.config.write_text(config)
    sentinel = tmp_path / "s"
    r = project.run_job("tests.fixtures:Probe", "mark", str(sentinel))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert fragment in r.stderr and "allowed_jobs.toml" in r.stderr
    assert not sentinel.exists()
    assert project.jobs() == []


def test_module_that_fails_to_import_is_a_recorded_failed_job(project: Project) -> None:
    """An allow-listed module that cannot be imported fails the job (exit 1) with the import error."""
    r = project.run_job("tests.broken_module:Anything", "run")
    assert r.returncode == 1
    [job] = project.jobs()
    assert job.status == "failed"
    assert "broken on purpose" in job.error
    assert project.events(errors=True)[0]["event"] == "job_failed"


def test_timeout_kills_the_whole_tree(project: Project, tmp_path: Path) -> None:
    """Past its timeout an attempt's tree is killed, grandchild in its own session included."""
    sentinel = tmp_path / "pids"
    started = time.monotonic()
    r = project.run_job("tests.fixtures:Stubborn", "with_grandchild", str(sentinel),
                        "--timeout", "1")
    assert r.returncode == 1
    assert time.monotonic() - started < 15
    job_pid, grandchild = map(int, sentinel.read_text().split())
    for pid in (job_pid, grandchild):
        assert gone(pid)
    [job] = project.jobs()
    assert job.status == "failed" and "timed out after 1 s" in job.error


@pytest.mark.parametrize("method", ["ignore_term", "busy_c"])
def test_timeout_kills_a_job_that_ignores_sigterm(project: Project, tmp_path: Path,
                                                  method: str) -> None:
    """A job that ignores SIGTERM (or spins in C code holding the GIL) is still killed at its timeout."""
    sentinel = tmp_path / "pid"
    r = project.run_job("tests.fixtures:Stubborn", method, str(sentinel), "--timeout", "0.5")
    assert r.returncode == 1
    pid = int(sentinel.read_text().split()[0])
    assert gone(pid)
    assert "timed out" in project.jobs()[0].error


def test_foreground_job_cancelled_from_another_process_exits_4(project: Project,
                                                               tmp_path: Path) -> None:
    """`bgrunner cancel` on a running foreground job stops it; run_job.py exits 4; status stays cancelled."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    sentinel = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_job.py"), "tests.fixtures:Probe",
                             "sleep", f"30,{sentinel}"], cwd=ROOT, env=project.env,
                            stderr=subprocess.PIPE, text=True)
    wait_until(sentinel.exists, message="job start")
    [job] = project.jobs()
    r = project.cli("cancel", str(job.id))
    assert r.returncode == 0, r.stderr
    assert proc.wait(timeout=20) == 4
    assert project.job(job.id).status == "cancelled"
    assert project.cli("cancel", str(job.id)).returncode == 1
    assert [e["event"] for e in project.events()].count("job_cancelled") == 1


def test_sigint_cancels_a_foreground_job(project: Project, tmp_path: Path) -> None:
    """Ctrl-C on a foreground job records it as cancelled and exits 4."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    sentinel = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_job.py"), "tests.fixtures:Probe",
                             "sleep", f"30,{sentinel}"], cwd=ROOT, env=project.env)
    wait_until(sentinel.exists, message="job start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 4
    assert project.jobs()[0].status == "cancelled"


def test_result_too_big_or_not_json_is_explained(project: Project) -> None:
    """A result over the cap, or not JSON-serialisable, is not stored and the reason is kept."""
    assert project.run_job("tests.fixtures:Probe", "big_result", "100000").returncode == 0
    assert project.run_job("tests.fixtures:Probe", "unserialisable").returncode == 0
    unser, big = project.jobs()
    assert big.result is None and "exceeds result_max_bytes" in big.error
    assert unser.result is None and "not JSON-serialisable" in unser.error


def test_unwritable_log_dir_warns_once_and_job_still_runs(project: Project, tmp_path: Path) -> None:
    """A log folder that can't be written is one warning line; the job runs and is recorded."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    project.extra_env["BGRUNNER_LOG_DIR"] = str(blocker / "logs")
    r = project.run_job("tests.fixtures:Probe", "noop")
    assert r.returncode == 0
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cannot write logs" in warnings[0]
    assert project.jobs()[0].status == "completed"


def test_store_and_logs_are_private(sqlite_project: Project) -> None:
    """The SQLite file and the log files are created readable by their owner only."""
    project = sqlite_project
    assert project.run_job("tests.fixtures:Probe", "noop").returncode == 0
    db = project.database_url[len("sqlite:///"):]
    for path in (db, project.log_dir / "background_jobs.log"):
        assert os.stat(path).st_mode & 0o077 == 0, path


def test_status_list_logs_and_jobs_commands(project: Project, tmp_path: Path) -> None:
    """status/list/logs/jobs show what happened, as text and as JSON; an unknown id is exit 1."""
    assert project.run_job("tests.fixtures:Probe", "mark", f"{tmp_path / 's'},hi").returncode == 0
    [job] = project.jobs()
    r = project.cli("status", str(job.id), "--json")
    record = json.loads(r.stdout)
    for key in ("id", "target", "method", "params", "status", "priority", "attempts",
                "max_attempts", "run_at", "created_at", "started_at", "finished_at", "pid",
                "error", "result", "progress"):
        assert key in record
    assert record["status"] == "completed" and record["id"] == str(job.id)
    assert "completed" in project.cli("status", str(job.id)).stdout
    assert project.cli("status", "999").returncode == 1
    assert project.cli("status", "abc").returncode == 1
    listed = json.loads(project.cli("list", "--json").stdout)
    assert [j["id"] for j in listed] == [str(job.id)]
    assert json.loads(project.cli("list", "--status", "failed", "--json").stdout) == []
    assert "Probe" in project.cli("list").stdout
    lines = project.cli("logs", str(job.id), "--json").stdout.splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["job_started", "job_completed"]
    assert "job_completed" in project.cli("logs").stdout
    assert project.cli("logs", "--errors", "--json").stdout == ""
    jobs_text = project.cli("jobs").stdout
    assert "typed(n: int, ratio: float, flag: bool" in jobs_text
    assert "cannot load" in jobs_text  # the broken module is reported, not fatal


def test_a_queued_job_stopped_while_waiting_to_retry_is_released(project: Project, tmp_path: Path) -> None:
    """SIGTERM to a queued job's process during its retry wait hands the job to the workers (no dead pid kept)."""
    import subprocess
    import sys

    from bgrunner.context import host_id
    from bgrunner.model import NewJob
    from tests.conftest import ROOT

    store = project.store()
    try:
        job_id = store.create(NewJob(target="tests.fixtures:Probe", method="fail_until",
                                     params=[str(tmp_path / "count"), 5], max_attempts=3,
                                     retry_delay=60.0, timeout=30.0))  # a timeout: not inline
        assert store.claim(job_id, now=time.time(), cap=10, host=host_id()) is not None
    finally:
        store.close()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_job.py"), "tests.fixtures:Probe",
                             "fail_until", "--job-id", str(job_id)], cwd=ROOT, env=project.env)
    wait_until(lambda: project.job(job_id).status == "retrying", message="the first attempt to fail")
    assert project.job(job_id).pid == proc.pid  # kept by its process for the next attempt
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 1
    job = project.job(job_id)
    assert (job.status, job.attempts, job.pid) == ("retrying", 1, None)
    store = project.store()
    try:
        assert [a.outcome for a in store.attempts(job_id)] == ["error"]  # nothing more recorded
    finally:
        store.close()
