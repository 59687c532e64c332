"""Helpers for the unit tests of the decisions: a memory store, a context over it, its events.

Nothing here launches a process: contexts are built with ``autostart=False``, and
"dead" or "alive" job processes are pids checked with their start times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgrunner import procs
from bgrunner.context import Context
from bgrunner.eventlog import ERROR_LOG, MAIN_LOG, EventLog, read_events
from bgrunner.model import JobRecord, JobStatus, NewJob
from bgrunner.store.memory import MemoryStore, drop_memory_store

#: The host name every unit test's context runs as (``BGRUNNER_HOST_ID``).
HOST = "unit-host"
#: A job class in :data:`UNIT_ALLOWLIST`.
PROBE = "tests.fixtures:Probe"

UNIT_ALLOWLIST = """
[defaults]
max_attempts = 3
retry_delay = 7
backoff = "fixed"
timeout = 0

[defaults.retry_on]
ValueError = 1
ConnectionError = 5

[runner]
max_concurrent = 4

[jobs."tests.fixtures:Probe"]
methods = ["noop", "mark", "value_error", "fail_until"]

[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]
"""


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A memory store URL of the test's own, forgotten when the test ends."""
    url = f"memory://unit-{uuid.uuid4().hex}"
    yield url
    drop_memory_store(url)


@pytest.fixture
def store(memory_url: str) -> MemoryStore:
    """A handle on the test's own memory store."""
    return MemoryStore(memory_url)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's host name in the store, fixed for the test."""
    monkeypatch.setenv("BGRUNNER_HOST_ID", HOST)
    return HOST


def make_ctx(tmp_path: Path, database_url: str, allowlist: str = UNIT_ALLOWLIST,
             name: str = "allowed_jobs.toml") -> Context:
    """A context over ``database_url`` with its own allowlist file; it never launches anything."""
    config = tmp_path / name
    config.write_text(textwrap.dedent(allowlist))
    return Context(config_path=str(config), log_dir=str(tmp_path / "logs"),
                   database_url=database_url, autostart=False)


@pytest.fixture
def ctx(tmp_path: Path, memory_url: str, host: str) -> Context:
    """A context over the test's memory store, with :data:`UNIT_ALLOWLIST`."""
    return make_ctx(tmp_path, memory_url)


def events(log_dir: str | Path, *names: str, errors: bool = False) -> list[dict[str, Any]]:
    """The events logged in ``log_dir`` (only those called ``names``, if given), in order."""
    path = os.path.join(log_dir, ERROR_LOG if errors else MAIN_LOG)
    return [e for e in read_events(path) if not names or e["event"] in names]


def job_log(log: EventLog, job: JobRecord) -> EventLog:
    """``log`` bound to the job, as every caller of ``settle_attempt`` binds it."""
    return log.bind(job_id=str(job.id), target=job.target, method=job.method)


def new_job(target: str = PROBE, method: str = "noop", **fields: Any) -> NewJob:
    """A job to record directly in a store (``params`` empty unless given)."""
    fields.setdefault("params", [])
    return NewJob(target=target, method=method, **fields)


def start(store: MemoryStore, job_id: int, *, now: float, host: str = HOST,
          pid: int | None = None, pid_ctime: float | None = None) -> JobRecord:
    """Claim the job (it must be ready at ``now``) and, if ``pid`` is given, record its process."""
    job = store.claim(job_id, now=now, cap=100, host=host)
    assert job is not None, f"job {job_id} could not be claimed"
    if pid is not None:
        assert store.set_process(job_id, job.attempts, pid=pid, pid_ctime=pid_ctime or 0.0)
    current = store.get(job_id)
    assert current is not None and current.status == JobStatus.RUNNING
    return current


def current(store: MemoryStore, job_id: int) -> JobRecord:
    """The job as stored now (it must exist)."""
    job = store.get(job_id)
    assert job is not None, f"no job {job_id}"
    return job


@pytest.fixture(scope="session")
def dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procs.start_time(proc.pid)
    proc.wait()
    assert not procs.is_alive(proc.pid, started)
    return proc.pid, started or 1.0


@pytest.fixture
def live_pid() -> tuple[int, float]:
    """This test process: a pid that is alive with its true start time."""
    pid = os.getpid()
    started = procs.start_time(pid)
    assert started is not None
    return pid, started
