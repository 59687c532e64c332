"""Job code logging, in real job processes: bgrunner.get_logger() and captured stdlib logging.

A worker (fork mode, then spawn mode) runs jobs from a module written into the
test's own folder (``[runner] import_root``): their lines carry the job's keys
and the current attempt, sit among the job's own events in ``bgrunner logs ID``,
error lines reach the errors file, and a job that never logs has not imported
structlog (nor has the fork template it came from).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project

JOBS = '''
import os
import sys

import bgrunner


class Logs:
    def log_once(self, tag: str) -> int:
        bgrunner.get_logger("logjobs").info("email_sent", tag=tag, to="a@b.c")
        return os.getpid()

    def log_error(self) -> None:
        try:
            raise LookupError("no template")
        except LookupError:
            bgrunner.get_logger().exception("render_failed")

    def never_logs(self) -> dict:
        return {"structlog": "structlog" in sys.modules, "logging": "logging" in sys.modules}



class Flaky:
    def run(self, marker: str) -> str:
        first = not os.path.exists(marker)
        if first:
            open(marker, "w").close()
        bgrunner.get_logger().info("trying", first=first)
        if first:
            raise RuntimeError("the first attempt fails")
        return "ok"


class Stdlib:
    def run(self) -> None:
        import logging

        logging.getLogger("somelib.client").warning("retrying %s", "upstream")
        logging.getLogger("somelib.client").debug("not captured at the default level")
'''

EAGER = '''
import structlog  # at the top, as many job modules do: preload_jobs imports it in the template

import bgrunner

LOG = bgrunner.get_logger("eager")  # made at import: in the template when preloaded


class Eager:
    def run(self, tag: str) -> bool:
        LOG.info("eager_line", tag=tag)
        return "structlog" in __import__("sys").modules
'''

CONFIG = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
launch = "{mode}"
import_root = "{root}"
preload_jobs = {preload}
capture_logging = {capture}
cancel_grace = 1
worker_idle_exit = 5

[jobs."logjobs:Logs"]
methods = ["log_once", "log_error", "never_logs"]

[jobs."logjobs:Flaky"]
methods = ["run"]
max_attempts = 2

[jobs."logjobs:Stdlib"]
methods = ["run"]

[jobs."eagerjobs:Eager"]
methods = ["run"]
"""


@pytest.fixture(params=["fork", "spawn"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def setup(project: Project, mode: str, *, preload: bool = False, capture: bool = False,
          flaky_timeout: bool = False) -> None:
    code = project.root / "code"
    code.mkdir(exist_ok=True)
    (code / "logjobs.py").write_text(textwrap.dedent(JOBS))
    (code / "eagerjobs.py").write_text(textwrap.dedent(EAGER))
    text = CONFIG.format(mode=mode, root=code, preload=str(preload).lower(), capture=str(capture).lower())
    if flaky_timeout:  # a timeout: every attempt in an attempt process of its own
        text = text.replace("max_attempts = 2\n", "max_attempts = 2\ntimeout = 30\n")
    project.write_config(text)
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"  # the worker launches (a direct launch spawns)


def submit(project: Project, *args: str) -> int:
    r = project.cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def run_worker(project: Project) -> None:
    r = project.cli("worker", "--burst", "--concurrency", "2", timeout=180)
    assert r.returncode == 0, r.stderr


def status(project: Project, job_id: int) -> dict[str, Any]:
    r = project.cli("status", str(job_id), "--json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def job_lines(project: Project, job_id: int) -> list[dict[str, Any]]:
    """``bgrunner logs ID --json``: the job's lines, oldest first."""
    r = project.cli("logs", str(job_id), "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_get_logger_lines_carry_the_job_keys_among_its_events(sqlite_project: Project, mode: str) -> None:
    """A job's get_logger() line: job_id, target, method, attempt 1, the pid of the process that
    ran the method (the job's result), the logger name; between job_started and job_completed."""
    setup(sqlite_project, mode)
    job_id = submit(sqlite_project, "logjobs:Logs", "log_once", "t1")
    run_worker(sqlite_project)
    record = status(sqlite_project, job_id)
    assert record["status"] == "completed", record
    lines = job_lines(sqlite_project, job_id)
    assert [e["event"] for e in lines] == ["job_queued", "job_started", "email_sent", "job_completed"]
    line = lines[2]
    assert list(line)[:8] == ["timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid"]
    assert (line["job_id"], line["target"], line["method"], line["attempt"]) == (
        str(job_id), "logjobs:Logs", "log_once", 1)
    assert line["pid"] == record["result"] and line["logger"] == "logjobs"
    assert (line["level"], line["tag"], line["to"]) == ("info", "t1", "a@b.c")
    assert not [e for e in sqlite_project.events(errors=True) if e["event"] == "email_sent"]


def test_error_lines_reach_the_errors_file_with_the_traceback(sqlite_project: Project, mode: str) -> None:
    setup(sqlite_project, mode)
    job_id = submit(sqlite_project, "logjobs:Logs", "log_error")
    run_worker(sqlite_project)
    (line,) = [e for e in sqlite_project.events(errors=True) if e["event"] == "render_failed"]
    assert line["job_id"] == str(job_id) and line["level"] == "error"
    assert "LookupError: no template" in line["traceback"]
    assert line in sqlite_project.events()


@pytest.mark.parametrize("timeout", [False, True], ids=["no-timeout", "timeout"])
def test_a_retry_logs_its_own_attempt_number(sqlite_project: Project, mode: str, timeout: bool) -> None:
    """The first attempt fails, the second completes: each line has its attempt's number. Fork
    mode without a timeout retries in a fresh process; spawn mode and any job with a timeout
    retry in the same supervising process, each attempt in a forked attempt process."""
    setup(sqlite_project, mode, flaky_timeout=timeout)
    marker = sqlite_project.root / f"marker-{mode}-{timeout}"
    job_id = submit(sqlite_project, "logjobs:Flaky", "run", str(marker))
    run_worker(sqlite_project)
    assert status(sqlite_project, job_id)["status"] == "completed"
    lines = job_lines(sqlite_project, job_id)
    tries = [(e["attempt"], e["first"]) for e in lines if e["event"] == "trying"]
    assert tries == [(1, True), (2, False)]
    started = {e["attempt"]: e["pid"] for e in lines if e["event"] == "job_started"}
    assert sorted(started) == [1, 2]
    writers = {e["attempt"]: e["pid"] for e in lines if e["event"] == "trying"}
    if mode == "spawn" or timeout:  # the method ran in an attempt process below the supervisor
        assert writers[1] != started[1] and writers[2] != started[2] and started[1] == started[2]
    else:  # inline: the job process itself wrote, a new one for the retry
        assert writers == started and started[1] != started[2]


def test_a_foreground_run_job_logs_with_its_job_id(sqlite_project: Project) -> None:
    """python run_job.py (no worker): the job is recorded, and its lines carry that job's id."""
    setup(sqlite_project, "spawn")
    r = sqlite_project.run_job("logjobs:Logs", "log_once", "fg")
    assert r.returncode == 0, r.stderr
    (line,) = [e for e in sqlite_project.events() if e["event"] == "email_sent"]
    (started,) = [e for e in sqlite_project.events() if e["event"] == "job_started"]
    assert line["job_id"] == started["job_id"] is not None and line["attempt"] == 1


@pytest.mark.parametrize("capture", [True, False], ids=["capture", "no-capture"])
def test_stdlib_logging_is_captured_when_the_runner_says_so(sqlite_project: Project, mode: str,
                                                            capture: bool) -> None:
    """[runner] capture_logging = true: a library's warning is a line with the job's keys and the
    logger's name (debug is below the default level); off, nothing of it reaches the log."""
    setup(sqlite_project, mode, capture=capture)
    job_id = submit(sqlite_project, "logjobs:Stdlib", "run")
    run_worker(sqlite_project)
    assert status(sqlite_project, job_id)["status"] == "completed"
    lines = job_lines(sqlite_project, job_id)
    captured = [e for e in lines if e.get("logger") == "somelib.client"]
    if not capture:
        assert captured == []
        return
    (line,) = captured
    assert (line["event"], line["level"], line["attempt"], line["method"]) == (
        "retrying upstream", "warning", 1, "run")
    assert [e["event"] for e in lines] == ["job_queued", "job_started", "retrying upstream", "job_completed"]


@pytest.mark.parametrize("preload", [False, True], ids=["cold", "preload"])
def test_a_job_that_never_logs_imports_no_structlog(sqlite_project: Project, mode: str,
                                                    preload: bool) -> None:
    """Neither the job process nor (fork mode) the template it was forked from imported structlog
    or logging, preload_jobs or not, as long as no job module does."""
    if preload and mode == "spawn":
        pytest.skip("preload_jobs is a fork-mode setting")
    setup(sqlite_project, mode, preload=preload)
    sqlite_project.write_config(sqlite_project.config.read_text().replace(
        '[jobs."eagerjobs:Eager"]\nmethods = ["run"]\n', ""))  # the one module that imports structlog
    job_id = submit(sqlite_project, "logjobs:Logs", "never_logs")
    run_worker(sqlite_project)
    record = status(sqlite_project, job_id)
    assert record["status"] == "completed", record
    assert record["result"] == {"structlog": False, "logging": False}


def test_a_logger_made_in_the_template_writes_the_job_keys(sqlite_project: Project) -> None:
    """preload_jobs with a module that imports structlog and makes its logger at import time (in
    the template): each job's line carries that job's id, read at the line, not at import."""
    setup(sqlite_project, "fork", preload=True)
    ids = [submit(sqlite_project, "eagerjobs:Eager", "run", tag) for tag in ("a", "b")]
    run_worker(sqlite_project)
    for job_id, tag in zip(ids, ("a", "b"), strict=True):
        record = status(sqlite_project, job_id)
        assert record["status"] == "completed" and record["result"] is True
        (line,) = [e for e in job_lines(sqlite_project, job_id) if e["event"] == "eager_line"]
        assert (line["job_id"], line["tag"], line["logger"]) == (str(job_id), tag, "eager")


def test_outside_a_job_get_logger_writes_the_same_files_without_job_keys(sqlite_project: Project,
                                                                          tmp_path: Path) -> None:
    """An application's script (no job): its line is in background_jobs.log with null job keys."""
    setup(sqlite_project, "fork")
    r = sqlite_project.python("""
        import bgrunner
        bgrunner.get_logger("app").warning("cache_cold", size=0)
    """)
    assert r.returncode == 0, r.stderr
    (line,) = [e for e in sqlite_project.events() if e["event"] == "cache_cold"]
    assert [line[k] for k in ("job_id", "target", "method", "attempt")] == [None] * 4
    assert (line["level"], line["logger"], line["size"]) == ("warning", "app", 0)


def test_log_compress_and_log_backups_from_the_allowlist(sqlite_project: Project) -> None:
    """[runner] log_compress with log_backups = 2: after many rotations by job processes (and the
    CLI), exactly background_jobs.log.1.gz and .2.gz are left beside the current file, whole gzip
    files of whole JSON lines, each line once; the newest jobs' lines are all there."""
    import gzip

    setup(sqlite_project, "fork")
    sqlite_project.write_config(sqlite_project.config.read_text().replace(
        "[runner]\n", "[runner]\nlog_max_bytes = 3000\nlog_backups = 2\nlog_compress = true\n"))
    ids = [submit(sqlite_project, "logjobs:Logs", "log_once", f"t{i}") for i in range(16)]
    run_worker(sqlite_project)
    folder = sqlite_project.log_dir
    rotated = sorted(p.name for p in folder.iterdir()
                     if p.name.startswith("background_jobs.log.") and not p.name.endswith(".lock"))
    assert rotated == ["background_jobs.log.1.gz", "background_jobs.log.2.gz"]
    text = "".join(gzip.decompress((folder / name).read_bytes()).decode()
                   for name in reversed(rotated)) + (folder / "background_jobs.log").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    keys = [(e["timestamp"], e["pid"], e["event"], e["job_id"]) for e in lines]
    assert len(keys) == len(set(keys))
    sent = [e["job_id"] for e in lines if e["event"] == "email_sent"]
    assert {str(i) for i in ids[-4:]} <= set(sent)  # two at a time: the newest jobs, in any order
