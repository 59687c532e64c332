"""Dashboard fixtures: the real server (``python -m bgrunner dashboard``) on a free loopback port.

Each server gets its own SQLite store, log folder and allowlist in a temporary
folder, runs with the repository as its working directory (so ``examples``
imports) and launches jobs itself (``BGRUNNER_AUTOSTART=1``). The project's
``BGRUNNER_*`` variables are cleared first so the developer's shell cannot leak in:
the server's environment starts from ``tests.conftest.clean_environ()``, the
suite's one rule (``BGRUNNER_TEST_*`` kept), and the root conftest's autouse
``clean_env`` clears the test process itself.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import clean_environ, stop_workers, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token-0123456789"
READONLY = "test-readonly-token-9876543210"

ALLOWLIST = """\
[defaults]
max_attempts = 1
retry_delay = 0
timeout = 0

[runner]
cancel_grace = 1
worker_idle_exit = 3

[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]

[jobs."examples.jobs:SlowJob"]
methods = ["run"]
timeout = 120

[jobs."examples.jobs:FlakyJob"]
methods = ["fail"]
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def poll(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
         what: str = "condition") -> Any:
    """Call ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    return wait_until(condition, timeout=timeout, interval=interval, message=what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running dashboard and what it works on."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    token: str = TOKEN
    readonly: str | None = READONLY
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return self.env["BGRUNNER_DATABASE_URL"]

    @property
    def log_dir(self) -> Path:
        return Path(self.env["BGRUNNER_LOG_DIR"])

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        """An HTTP client; with ``token``, every request carries it as a bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)
        self.clients.append(c)
        return c

    @functools.cached_property
    def api(self) -> httpx.Client:
        """A client with the admin bearer token."""
        return self.client(self.token)

    def dispatch(self, method: str, params: Any, target: str = "examples.jobs:SampleJob",
                 **extra: Any) -> str:
        r = self.api.post("/api/jobs", json={"target": target, "method": method,
                                             "params": params, **extra})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.api.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return dict(poll(lambda: (j := self.job(job_id))["status"] in statuses and j,
                         timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}"))

    def login(self, token: str | None = None) -> tuple[httpx.Client, str]:
        """A browser-like client logged in through the form; also its CSRF token."""
        c = self.client(follow_redirects=False)
        page = c.get("/login")
        r = c.post("/login", data={"token": token or self.token, "next": "/jobs",
                                   "csrf_token": form_value(page.text, "csrf_token")})
        assert r.status_code == 303, r.text
        jobs_page = c.get("/jobs")
        return c, form_value(jobs_page.text, "csrf_token")

    def stderr(self) -> str:
        return (self.root / "server.err").read_text(errors="replace")

    def stop(self) -> None:
        try:
            api = self.api
            for status in ("pending", "retrying", "running"):
                for job in api.get("/api/jobs", params={"status": status, "limit": 500}).json()["jobs"]:
                    api.post(f"/api/jobs/{job['id']}/cancel")
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        stop_workers(self.database_url)


def form_value(html: str, name: str) -> str:
    """The value of the first hidden input called ``name`` in a page."""
    import re

    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert found, f"no {name} in the page"
    return found.group(1)



def start_server(root: Path, extra_env: dict[str, str] | None = None,
                 readonly: str | None = READONLY, token: str | None = TOKEN,
                 allowlist: str = ALLOWLIST) -> Server:
    """Start ``bgrunner dashboard`` for a fresh store under ``root``; wait until it answers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "allowed_jobs.toml").write_text(allowlist)
    env = clean_environ()
    env.update({
        "BGRUNNER_CONFIG": str(root / "allowed_jobs.toml"),
        "BGRUNNER_LOG_DIR": str(root / "logs"),
        "BGRUNNER_DATABASE_URL": f"sqlite:///{root / 'jobs.db'}",
        "BGRUNNER_AUTOSTART": "1",
        "PYTHONPATH": str(ROOT),
    })
    if token:
        env["BGRUNNER_DASHBOARD_TOKEN"] = token
    if readonly:
        env["BGRUNNER_DASHBOARD_READONLY_TOKEN"] = readonly
    env.update(extra_env or {})
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        with open(root / "server.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bgrunner", "dashboard", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        server = Server(root, port, proc, env, token=token or "", readonly=readonly)
        if _answers(server):
            return server
        server.stop()
    pytest.fail(f"the dashboard did not start:\n{(root / 'server.err').read_text()}")


def _answers(server: Server, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            if httpx.get(server.url + "/login", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One dashboard shared by the tests of a session (each test makes its own jobs)."""
    s = start_server(tmp_path_factory.mktemp("dashboard"))
    yield s
    s.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory of dashboards of the test's own (stopped at the end of the test)."""
    started: list[Server] = []

    def make(**kw: Any) -> Server:
        s = start_server(tmp_path / f"server{len(started)}", **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
