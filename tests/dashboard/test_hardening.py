"""Hardening against a hostile client: guessing, spoofing, huge or odd input, acting on a read.

Every test runs the real server (``python -m bgrunner dashboard``) and talks to
it over HTTP, with httpx or, where the timing of a request's parts matters, a
raw socket.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from bgrunner.context import host_id
from bgrunner.model import NewJob
from bgrunner.store.factory import open_store

from .conftest import ALLOWLIST, READONLY, ROOT, TOKEN, Server, clean_environ, form_value, free_port, poll

MiB = 1 << 20


def audit_entries(server: Server) -> list[Any]:
    store = open_store(server.database_url)
    try:
        return list(store.audit(limit=500))
    finally:
        store.close()


def login_form(server: Server) -> tuple[str, str]:
    """(cookie header, csrf field) of a fresh login form."""
    page = httpx.get(server.url + "/login", timeout=10)
    return f"bgrunner_login={page.cookies['bgrunner_login']}", form_value(page.text, "csrf_token")


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def read_response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- 1. guessing ------------------------------------------------------------------------------
def test_concurrent_slow_logins_are_counted_before_their_bodies(fresh_server: Callable[..., Server]) -> None:
    """50 logins whose bodies arrive slowly, all started before any finishes: at most 5 are checked, the rest 429."""
    server = fresh_server()
    cookie, csrf = login_form(server)
    bodies = [f"token=guess-{i}&csrf_token={csrf}".encode() for i in range(50)]
    with ExitStack() as stack:
        socks = []
        for body in bodies:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=30))
            sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie.encode()
                         + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
            socks.append(sock)
        # A request sent after all 50 is answered only once the server has taken theirs up:
        # by then every one of them has started (and awaits the rest of its body).
        assert httpx.get(server.url + "/login", timeout=30).status_code == 200
        for sock, body in zip(socks, bodies, strict=True):
            try:
                sock.sendall(body[5:])
            except OSError:
                pass  # already answered 429 and closed
        statuses = [status_of(read_response_head(sock)) for sock in socks]
    assert statuses.count(401) <= 5, statuses
    assert statuses.count(429) >= 45, statuses


def test_wrong_bearer_tokens_are_rate_limited(fresh_server: Callable[..., Server]) -> None:
    """After 10 wrong bearer tokens from an address every bearer request from it gets 429, and the failures are audited."""
    server = fresh_server()
    c = server.client()
    statuses = [c.get("/api/jobs", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
                for i in range(40)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    r = c.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    failed = [e for e in audit_entries(server) if e.action == "login_failed"]
    assert len(failed) == 10 and all(e.address == "127.0.0.1" for e in failed)


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(fresh_server: Callable[..., Server]) -> None:
    """X-Forwarded-For cannot pick a new address per guess; with the proxy trusted it names the client."""
    server = fresh_server()
    c = server.client()
    statuses = []
    for i in range(30):
        cookie, csrf = login_form(server)
        statuses.append(c.post("/login", data={"token": "guess", "csrf_token": csrf},
                               headers={"X-Forwarded-For": f"203.0.113.{i}", "Cookie": cookie}).status_code)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    assert {e.address for e in audit_entries(server) if e.action == "login_failed"} == {"127.0.0.1"}

    proxied = fresh_server(extra_env={"BGRUNNER_DASHBOARD_TRUSTED_PROXIES": "127.0.0.1/32"})
    c = proxied.client()
    for i in range(3):
        cookie, csrf = login_form(proxied)
        r = c.post("/login", data={"token": "guess", "csrf_token": csrf},
                   headers={"X-Forwarded-For": f"198.51.100.7, 203.0.113.{i}", "Cookie": cookie})
        assert r.status_code == 401
    addresses = {e.address for e in audit_entries(proxied) if e.action == "login_failed"}
    assert addresses == {"203.0.113.0", "203.0.113.1", "203.0.113.2"}


# -- 2. weak secrets ----------------------------------------------------------------------------
@pytest.mark.parametrize("env", [
    {"BGRUNNER_DASHBOARD_TOKEN": "a"},
    {"BGRUNNER_DASHBOARD_TOKEN": "0123456789abcdef0123456789abcde"},  # 31 hex digits: 124 bits
    {"BGRUNNER_DASHBOARD_TOKEN": "x" * 64},  # long, but one character
    {"BGRUNNER_DASHBOARD_TOKEN": TOKEN, "BGRUNNER_DASHBOARD_READONLY_TOKEN": "readonly"},
])
def test_weak_tokens_are_refused_at_start(tmp_path: Any, env: dict[str, str]) -> None:
    """A configured token under 128 bits of estimated entropy: one clear line naming it, exit 2."""
    full = clean_environ()
    full.update({"BGRUNNER_DATABASE_URL": f"sqlite:///{tmp_path / 'j.db'}",
                 "BGRUNNER_LOG_DIR": str(tmp_path / "logs"), **env})
    r = subprocess.run([sys.executable, "-m", "bgrunner", "dashboard", "--port", str(free_port())],
                       cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    weak = "BGRUNNER_DASHBOARD_READONLY_TOKEN" if "BGRUNNER_DASHBOARD_READONLY_TOKEN" in env else "BGRUNNER_DASHBOARD_TOKEN"
    assert len(lines) == 1 and weak in lines[0] and "too weak" in lines[0], lines


def test_entropy_estimate_accepts_generated_tokens() -> None:
    """22 base64url characters or 32 hex digits reach 128 bits; the generated token has far more."""
    import secrets

    from bgrunner.dashboard.settings import estimated_bits

    assert estimated_bits(secrets.token_urlsafe(16)) >= 128
    assert estimated_bits(secrets.token_hex(16)) >= 128
    assert estimated_bits(secrets.token_urlsafe(32)) >= 256
    assert estimated_bits("a" * 21) < 128


# -- 3. odd numbers in queries and paths --------------------------------------------------------------
def test_bad_numbers_in_queries_and_paths_never_give_a_5xx(server: Server) -> None:
    """Non-ASCII digits and 5,000-digit numbers in any query or path param: a 4xx or the page, never a 5xx."""
    server.dispatch("handle", [])
    bad = ["²", "١٢", "9" * 5000, "1_0", " 1", "-1"]
    pages = ["/", "/jobs", "/jobs/1", "/allowed", "/audit", "/api/jobs", "/api/jobs/1", "/no-such-page",
             "/dispatch/examples.jobs:SampleJob/process", "/login", "/schedules", "/workers",
             "/api/schedules", "/api/workers", "/metrics"]
    streams = ["/events", "/jobs/1/stream"]
    anonymous = server.client(follow_redirects=False)
    for value in bad:
        for key in ("n", "limit", "before_id", "top", "offset", "watch", "queue"):
            params = {"notice": "bulk", key: value}
            for path in pages:
                assert server.api.get(path, params=params).status_code < 500, (path, key, value)
            for path in streams:
                with server.api.stream("GET", path, params=params) as r:
                    assert r.status_code < 500, (path, key, value)
            r = anonymous.get("/static/nope", params=params)
            assert r.status_code == 404, (key, value)
        for path in (f"/jobs/{value}", f"/api/jobs/{value}", f"/api/jobs/{value}/cancel"):
            r = server.api.request("POST" if path.endswith("cancel") else "GET", path)
            assert r.status_code == 404, (path, r.status_code)


# -- 4. deep JSON ----------------------------------------------------------------------------------
def test_deeply_nested_json_is_a_usage_error(server: Server) -> None:
    """A body or form field nested 100,000 deep, or params 101 deep, is a 400 naming the problem, not a 500."""
    deep = "[" * 100_000 + "]" * 100_000
    r = server.api.post("/api/jobs", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "deeper" in r.json()["error"]
    body = '{"target": "examples.jobs:SampleJob", "method": "handle", "params": ' + deep + "}"
    r = server.api.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = server.api.post("/api/jobs", content='{"target": "examples.jobs:SampleJob", "params": [NaN]}')
    assert r.status_code == 400
    params: Any = []
    for _ in range(101):
        params = [params]
    r = server.api.post("/api/jobs", json={"target": "examples.jobs:SampleJob", "method": "handle",
                                           "params": params})
    assert r.status_code in (400, 422) and "deep" in r.json()["error"]
    assert "Traceback" not in server.stderr()


def test_deeply_nested_json_in_a_form_field_is_a_field_error() -> None:
    """A dispatch form's JSON field nested 100,000 deep is an error beside the field, not a crash."""
    from bgrunner.dashboard.forms import Field, MethodInfo, parse_form

    info = MethodInfo("m:C", "run", "run(items)", "", "", (Field("items", "json", "list", True),))
    parsed = parse_form(info, {"p.items": "[" * 100_000 + "]" * 100_000})
    assert "deeper" in parsed.errors["items"]
    parsed = parse_form(info, {"p.items": "[1, NaN]", "priority": "²", "delay": "١"})
    assert set(parsed.errors) == {"items", "priority", "delay"}


# -- 5. sizes ----------------------------------------------------------------------------------------
def test_oversized_bodies_are_refused_without_reading_them(server: Server) -> None:
    """A body over 2 MiB is 413: at once by its Content-Length, and while it arrives when chunked."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Length: " + str(50 * MiB).encode() + b"\r\n\r\n{")
        assert status_of(read_response_head(sock)) == 413
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        sent = 0
        while sent < 50 * MiB and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server stopped reading: closed, or our buffer is full
                break
            sent += len(chunk)
        head = read_response_head(sock)
    assert status_of(head) == 413
    assert sent < 50 * MiB


def test_event_streams_are_capped_per_identity(fresh_server: Callable[..., Server]) -> None:
    """A read-only token may hold 8 event streams; the 9th is 429 until one closes; the admin is not affected."""
    server = fresh_server()
    ro = server.client(READONLY)
    with ExitStack() as stack:
        opened = [stack.enter_context(ro.stream("GET", "/events")) for _ in range(8)]
        assert all(r.status_code == 200 for r in opened)
        with ro.stream("GET", "/events") as extra:
            assert extra.status_code == 429
        with server.api.stream("GET", "/events") as admin:
            assert admin.status_code == 200
        opened[0].close()

        def one_more() -> bool:
            with ro.stream("GET", "/events") as r:
                return r.status_code == 200

        poll(one_more, what="a stream slot to be given back")


# -- 6. reading does not act ------------------------------------------------------------------------------
@pytest.fixture
def dead_running_job(server: Server) -> Iterator[int]:
    """A job recorded as running on this host whose process is gone (as after a crash)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store = open_store(server.database_url)
    try:
        job_id = store.create_running(
            NewJob(target="examples.jobs:SampleJob", method="handle", params=[], max_attempts=3,
                   retry_delay=0), pid=proc.pid, pid_ctime=time.time() - 1, host=host_id())
        yield job_id
    finally:
        store.close()


def test_reading_a_job_never_reconciles_or_relaunches_it(server: Server, dead_running_job: int) -> None:
    """The job page, GET /api/jobs/{id}, the streams and the overview leave a dead "running" job as stored."""
    job_id = dead_running_job
    ro = server.client(READONLY)
    assert ro.get(f"/api/jobs/{job_id}").json()["status"] == "running"
    assert ro.get(f"/jobs/{job_id}").status_code == 200
    assert ro.get("/").status_code == 200
    for path in (f"/jobs/{job_id}/stream", "/events"):
        with ro.stream("GET", path, params={"watch": str(job_id)}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break
    store = open_store(server.database_url)
    try:
        job = store.get(job_id)
        assert job is not None and job.status == "running" and job.attempts == 1
    finally:
        store.close()


# -- 7. audit of refusals ----------------------------------------------------------------------------------
def test_refused_actions_are_audited_with_actor_and_address(fresh_server: Callable[..., Server]) -> None:
    """Read-only acting, a CSRF failure, a target not allowed, bad params: each on the audit log, actor and address named."""
    server = fresh_server()
    job_id = server.dispatch("handle", [])
    ro = server.client(READONLY)
    assert ro.post(f"/api/jobs/{job_id}/cancel").status_code == 403
    c, csrf = server.login()
    assert c.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "wrong"}).status_code == 403
    assert server.api.post("/api/jobs", json={"target": "os:System", "method": "run"}).status_code == 403
    assert server.api.post("/api/jobs", json={"target": "examples.jobs:SampleJob", "method": "process",
                                              "params": {"nope": 1}}).status_code == 400
    assert server.api.post("/api/jobs", json={"target": "examples.jobs:SampleJob",
                                              "priority": "high"}).status_code == 400
    r = c.post("/dispatch/examples.jobs:SampleJob/process", data={"csrf_token": csrf, "p.times": "x"})
    assert r.status_code == 400
    entries = [(e.actor, e.action, e.detail or "", e.address) for e in audit_entries(server)]
    assert all(address == "127.0.0.1" for *_, address in entries)

    def has(actor: str, action: str, text: str) -> bool:
        return any(a.startswith(actor) and act == action and text in d for a, act, d, _ in entries)

    assert has("api:read-only", "denied", "read-only")
    assert has("session ", "denied", "CSRF")
    assert has("api:admin", "dispatch_refused", "os:System.run")
    assert has("api:admin", "dispatch_refused", "nope")
    assert has("api:admin", "dispatch_refused", "priority")
    assert has("session ", "dispatch_refused", "times")
    assert has("api:admin", "dispatch", "examples.jobs:SampleJob.handle")


# -- 8. logout survives a restart --------------------------------------------------------------------------
def test_logged_out_session_stays_out_after_a_restart(fresh_server: Callable[..., Server]) -> None:
    """A logged-out cookie, replayed to a restarted dashboard on the same store and tokens, opens nothing."""
    from .conftest import start_server

    server = fresh_server()
    c, csrf = server.login()
    stale = c.cookies.get("bgrunner_session")
    kept, _ = server.login()
    assert c.post("/logout", data={"csrf_token": csrf}).status_code == 303
    server.proc.terminate()
    server.proc.wait(10)
    again = start_server(server.root)
    try:
        replay = again.client(follow_redirects=False, cookies={"bgrunner_session": stale})
        assert replay.get("/jobs").status_code == 302
        live = again.client(follow_redirects=False,
                            cookies={"bgrunner_session": kept.cookies.get("bgrunner_session")})
        assert live.get("/jobs").status_code == 200  # other sessions survive the restart
    finally:
        again.stop()


# -- 9. Secure cookies --------------------------------------------------------------------------------------
def session_cookie_header(server: Server, **headers: str) -> str:
    c = server.client(follow_redirects=False)
    page = c.get("/login", headers=headers)
    login = page.headers["set-cookie"].split(";")[0]  # a Secure cookie is not sent back over http
    r = c.post("/login", data={"token": TOKEN, "csrf_token": form_value(page.text, "csrf_token")},
               headers={**headers, "Cookie": login})
    assert r.status_code == 303
    return next(v for v in r.headers.get_list("set-cookie") if v.startswith("bgrunner_session="))


def test_session_cookie_is_secure_when_configured_or_behind_a_trusted_https_proxy(
        fresh_server: Callable[..., Server]) -> None:
    """BGRUNNER_DASHBOARD_SECURE_COOKIES=1 always; X-Forwarded-Proto: https only from a trusted proxy."""
    def secure(cookie: str) -> bool:
        return "secure" in cookie.lower().replace("samesite", "")

    plain = fresh_server()
    assert not secure(session_cookie_header(plain, **{"X-Forwarded-Proto": "https"}))
    forced = fresh_server(extra_env={"BGRUNNER_DASHBOARD_SECURE_COOKIES": "1"})
    assert secure(session_cookie_header(forced))
    proxied = fresh_server(extra_env={"BGRUNNER_DASHBOARD_TRUSTED_PROXIES": "127.0.0.1"})
    assert secure(session_cookie_header(proxied, **{"X-Forwarded-Proto": "https"}))
    assert not secure(session_cookie_header(proxied))


# -- 10. Host header ----------------------------------------------------------------------------------------
def test_host_header_must_be_an_allowed_name(fresh_server: Callable[..., Server]) -> None:
    """DNS rebinding: any Host but the loopback names (and the configured ones) is 400, before the login."""
    server = fresh_server()
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        assert server.api.get("/api/jobs", headers={"Host": host}).status_code == 400, host
        assert httpx.get(server.url + "/login", headers={"Host": host}).status_code == 400, host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "LOCALHOST"):
        assert server.api.get("/api/jobs", headers={"Host": host}).status_code == 200, host
    named = fresh_server(extra_env={"BGRUNNER_DASHBOARD_ALLOWED_HOSTS": "dash.example, 127.0.0.1"})
    assert named.api.get("/api/jobs", headers={"Host": "dash.example"}).status_code == 200
    assert named.api.get("/api/jobs", headers={"Host": "localhost"}).status_code == 400


# -- 11. allowlist changes --------------------------------------------------------------------------------------
def test_a_target_removed_from_the_allowlist_can_no_longer_be_dispatched(
        fresh_server: Callable[..., Server]) -> None:
    """The dashboard sees the allowlist file change (within about a second) and refuses the removed target."""
    server = fresh_server(extra_env={"BGRUNNER_AUTOSTART": "0"})
    body = {"target": "examples.jobs:FlakyJob", "method": "fail", "params": []}
    assert server.api.post("/api/jobs", json=body).status_code == 201
    config = server.root / "allowed_jobs.toml"
    config.write_text(ALLOWLIST.replace('[jobs."examples.jobs:FlakyJob"]\nmethods = ["fail"]\n', ""))
    poll(lambda: server.api.post("/api/jobs", json=body).status_code == 403,
         what="the removed target to be refused")
    assert "FlakyJob" not in server.api.get("/allowed").text
    assert json.loads(server.api.get("/api/jobs", params={"limit": 1}).text)["jobs"]
