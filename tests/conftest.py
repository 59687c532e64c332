"""Shared fixtures: every test gets its own store, log folder and allowlist.

The project's BGRUNNER_* variables are cleared so the developer's shell cannot
leak into a test; :func:`clean_environ` is the one rule for which variables go,
used for the test process (``clean_env``) and for every child environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWLIST = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
worker_idle_exit = 5

[jobs."tests.fixtures:Probe"]
methods = ["mark", "record_pid", "import_pid", "typed", "noop", "sleep", "fail_until", "value_error",
           "crash", "big_result", "unserialisable", "progress"]
max_attempts = 1

[jobs."tests.fixtures:Stubborn"]
methods = ["ignore_term", "with_grandchild", "busy_c"]

[jobs."tests.broken_module:Anything"]
methods = ["run"]

[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]
"""


def clean_environ() -> dict[str, str]:
    """A copy of ``os.environ`` without the project's settings: every ``BGRUNNER_*`` variable
    except the test suite's own ``BGRUNNER_TEST_*`` ones.

    ``BGRUNNER_TEST_*`` (e.g. ``BGRUNNER_TEST_PG_URL``, read by ``tests/backends.py``) is kept
    on purpose: it configures the tests, not bgrunner, so it must reach the test process and
    the processes a test starts alike. This is the only place that decides what is cleared;
    the autouse ``clean_env`` fixture and every child environment (``Project.env``, the
    dashboard's ``start_server``) build on it.
    """
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("BGRUNNER_") and not k.startswith("BGRUNNER_TEST_"))}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's BGRUNNER_* settings must not leak into a test (see :func:`clean_environ`)."""
    kept = clean_environ()
    for name in list(os.environ):
        if name not in kept:
            monkeypatch.delenv(name)


@dataclass
class Project:
    """A sandboxed bgrunner installation: its own allowlist, logs and SQLite store."""

    root: Path
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "allowed_jobs.toml"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def env(self) -> dict[str, str]:
        env = clean_environ()
        env.update({
            "BGRUNNER_CONFIG": str(self.config),
            "BGRUNNER_LOG_DIR": str(self.log_dir),
            "BGRUNNER_DATABASE_URL": self.database_url,
            "PYTHONPATH": str(ROOT),
        })
        env.update(self.extra_env)
        return env

    def write_config(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text))

    def run_job(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "run_job.py"), *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout, **kw)

    def cli(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bgrunner", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)

    def python(self, code: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout, **kw)

    def events(self, errors: bool = False) -> list[dict[str, Any]]:
        name = "background_jobs_errors.log" if errors else "background_jobs.log"
        path = self.log_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def store(self) -> Any:
        from bgrunner.store.factory import open_store

        return open_store(self.database_url)

    def job(self, job_id: int | str) -> Any:
        store = self.store()
        try:
            return store.get(int(job_id))
        finally:
            store.close()

    def jobs(self) -> list[Any]:
        store = self.store()
        try:
            return store.list(limit=100000)
        finally:
            store.close()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _make_project(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Project:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        from tests.backends import fresh_postgres_url, require_postgres

        require_postgres()
        url = fresh_postgres_url(request)
    p = Project(root=tmp_path, database_url=url)
    p.write_config(ALLOWLIST)
    return p


@pytest.fixture(params=BACKENDS)
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A sandbox on each store: a fresh SQLite file, and a fresh PostgreSQL schema."""
    p = _make_project(request, tmp_path, request.param)
    yield p
    stop_workers(p.database_url)


@pytest.fixture
def sqlite_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A sandbox on SQLite only, for tests about processes rather than the store."""
    p = _make_project(request, tmp_path, "sqlite")
    yield p
    stop_workers(p.database_url)


def stop_workers(database_url: str) -> None:
    """Stop any worker a test left running for this store (auto-started ones included)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = proc.info["cmdline"] or []
            env = proc.info["environ"] or {}
        except (psutil.Error, KeyError):
            continue
        if "bgrunner" in cmd and "worker" in cmd and env.get("BGRUNNER_DATABASE_URL") == database_url:
            try:
                proc.kill()
            except psutil.Error:
                pass


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts); never raises if it ends while being looked at."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], Any], timeout: float = 20, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; its value. Fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
