"""Security by default: login everywhere, CSRF, read-only token, rate limit, headers, binding."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from starlette.routing import Mount, Route

from bgrunner.context import Context
from bgrunner.dashboard.app import create_app

from .conftest import READONLY, ROOT, TOKEN, Server, clean_environ, form_value, free_port, poll

SAMPLE_PATH_PARAMS = {"job_id": "1", "target": "examples.jobs:SampleJob", "method": "process",
                      "name": "nightly"}
PUBLIC = {"/login"}


def app_routes(server: Server) -> list[tuple[str, str]]:
    """(method, path) of every route of the real application, path params filled in."""
    ctx = Context.resolve(server.env["BGRUNNER_CONFIG"], str(server.log_dir), server.database_url)
    app = create_app(ctx, token="unused")
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route)
        path = route.path
        for name, value in SAMPLE_PATH_PARAMS.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, f"fill in the path params of {route.path}"
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            found.append((method, path))
    return found


def test_every_route_but_login_and_static_requires_login(server: Server) -> None:
    """Each route in app.routes answers 401 or redirects to /login without credentials."""
    routes = app_routes(server)
    assert len(routes) >= 20
    anonymous = server.client(follow_redirects=False)
    for method, path in routes:
        if path in PUBLIC:
            continue
        r = anonymous.request(method, path)
        assert r.status_code in (302, 401), (method, path, r.status_code)
        if r.status_code == 302:
            assert r.headers["location"].startswith("/login?next="), (method, path)
        if path.startswith("/api/"):
            assert r.status_code == 401 and r.json() == {"error": "authentication required"}
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/static/app.js").status_code == 200
    assert anonymous.get("/static/app.css").status_code == 200


def test_api_refuses_a_wrong_or_foreign_authorization(server: Server) -> None:
    """A wrong bearer token, or another scheme, gets 401 on every API route.

    Each route is asked from its own loopback address: there are more API routes
    than wrong tokens one address may send before it is made to wait (429), and the
    shared server's usual address must not be blocked for the tests that follow.
    """
    api_routes = [(m, p) for m, p in app_routes(server) if p.startswith("/api/")]
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        for i, (method, path) in enumerate(api_routes):
            transport = httpx.HTTPTransport(local_address=f"127.0.1.{i + 1}")
            client = server.client(headers=headers, transport=transport)
            r = client.request(method, path)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_login_gives_a_hardened_session_cookie(server: Server) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, and not Secure over plain http."""
    c = server.client(follow_redirects=False)
    page = c.get("/login")
    r = c.post("/login", data={"token": TOKEN, "next": "/jobs",
                               "csrf_token": form_value(page.text, "csrf_token")})
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith("bgrunner_session="))
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in cookie.lower().replace("samesite", "")
    assert c.get("/jobs").status_code == 200


def test_login_never_redirects_off_site(server: Server) -> None:
    """A ``next`` pointing at another host is replaced by the overview."""
    c = server.client(follow_redirects=False)
    page = c.get("/login")
    r = c.post("/login", data={"token": TOKEN, "next": "//evil.example/x",
                               "csrf_token": form_value(page.text, "csrf_token")})
    assert r.headers["location"] == "/"


def test_wrong_token_is_refused_and_audited(fresh_server: Callable[..., Server]) -> None:
    """A wrong token re-shows the form with 401, and the audit log records the failed login."""
    server = fresh_server()
    c = server.client()
    page = c.get("/login")
    r = c.post("/login", data={"token": "wrong", "csrf_token": form_value(page.text, "csrf_token")})
    assert r.status_code == 401
    assert "Wrong token" in r.text
    audit = server.api.get("/audit").text
    assert "login_failed" in audit and "anonymous" in audit


def test_logout_ends_the_session_for_good(server: Server) -> None:
    """After logout the old cookie, even replayed, no longer opens a page; both are audited."""
    c, csrf = server.login()
    cookie = c.cookies.get("bgrunner_session")
    assert c.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replay = server.client(follow_redirects=False, cookies={"bgrunner_session": cookie})
    assert replay.get("/jobs").status_code == 302
    audit = server.api.get("/audit").text
    assert "logout" in audit and ">login<" in audit


def test_forged_session_cookie_is_refused(server: Server) -> None:
    """A cookie whose signature does not match is no session."""
    c, _ = server.login()
    value = c.cookies.get("bgrunner_session")
    body, _, sig = value.partition(".")
    forged = server.client(follow_redirects=False,
                           cookies={"bgrunner_session": body + "." + sig[::-1]})
    assert forged.get("/jobs").status_code == 302


def test_posts_without_csrf_token_are_forbidden(server: Server) -> None:
    """Every cookie-authenticated change without the CSRF token is 403 and changes nothing."""
    job_id = server.dispatch("run", {"steps": 100, "delay": 0.2}, target="examples.jobs:SlowJob")
    c, csrf = server.login()
    posts = [f"/jobs/{job_id}/cancel", f"/jobs/{job_id}/retry", "/bulk-cancel",
             "/dispatch/examples.jobs:SampleJob/process", "/logout", f"/api/jobs/{job_id}/cancel",
             "/api/jobs"]
    for path in posts:
        assert c.post(path, data={"next": "/jobs"}).status_code == 403, path
        assert c.post(path, data={"csrf_token": "wrong"}).status_code == 403, path
    assert server.job(job_id)["status"] in ("pending", "running")
    assert c.get("/jobs").status_code == 200  # still logged in: the logout was refused too
    r = c.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert server.job(job_id)["status"] == "cancelled"


def test_login_form_needs_its_csrf_token(server: Server) -> None:
    """A login post without the form's double-submit token is 403, even with the right token."""
    c = server.client(follow_redirects=False)
    c.get("/login")
    assert c.post("/login", data={"token": TOKEN}).status_code == 403
    assert "bgrunner_session" not in c.cookies


def test_bearer_requests_need_no_csrf_token(server: Server) -> None:
    """An API call with the bearer token acts without any CSRF token."""
    job_id = server.dispatch("run", {"steps": 100, "delay": 0.2}, target="examples.jobs:SlowJob")
    r = server.api.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json() == {"cancelled": True}


def test_read_only_token_can_look_but_not_act(server: Server) -> None:
    """The read-only token sees every page and the API, and gets 403 on every action."""
    job_id = server.dispatch("run", {"steps": 100, "delay": 0.2}, target="examples.jobs:SlowJob")
    ro = server.client(READONLY)
    assert ro.get("/api/jobs").status_code == 200
    assert ro.get(f"/api/jobs/{job_id}").status_code == 200
    for path in (f"/api/jobs/{job_id}/cancel", f"/api/jobs/{job_id}/retry"):
        r = ro.post(path)
        assert r.status_code == 403 and "read-only" in r.json()["error"]
    r = ro.post("/api/jobs", json={"target": "examples.jobs:SampleJob", "method": "handle"})
    assert r.status_code == 403

    browser, csrf = server.login(READONLY)
    for page in ("/", "/jobs", f"/jobs/{job_id}", "/allowed", "/audit"):
        r = browser.get(page)
        assert r.status_code == 200, page
        assert "Cancel</button>" not in r.text and "Dispatch…" not in r.text, page
    assert browser.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf}).status_code == 403
    assert browser.post("/dispatch/examples.jobs:SampleJob/handle",
                        data={"csrf_token": csrf}).status_code == 403
    assert server.job(job_id)["status"] in ("pending", "running")
    assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 303


def test_security_headers_are_on_every_response(server: Server) -> None:
    """CSP without inline script, no framing, no sniffing, no referrer: on pages, API, errors, files."""
    anonymous = server.client(follow_redirects=False)
    responses = [anonymous.get("/login"), anonymous.get("/static/app.js"),
                 anonymous.get("/api/jobs"), anonymous.get("/jobs"),
                 server.api.get("/jobs"), server.api.get("/api/jobs/999999"),
                 server.api.get("/no-such-page")]
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp, r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_pages_have_no_inline_script(server: Server) -> None:
    """The CSP forbids inline script, so no page may carry any (or inline handlers)."""
    for page in ("/", "/jobs", "/allowed", "/audit", "/dispatch/examples.jobs:SampleJob/process"):
        html = server.api.get(page).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page
        assert not re.search(r"\son[a-z]+=", html), page
        assert "style=" not in html, page


def test_login_attempts_are_rate_limited(fresh_server: Callable[..., Server]) -> None:
    """After 5 failed logins in a minute the address gets 429, even with the right token."""
    server = fresh_server()
    c = server.client()
    for _ in range(5):
        page = c.get("/login")
        r = c.post("/login", data={"token": "guess", "csrf_token": form_value(page.text, "csrf_token")})
        assert r.status_code == 401
    page = c.get("/login")
    r = c.post("/login", data={"token": TOKEN, "csrf_token": form_value(page.text, "csrf_token")})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert server.api.get("/api/jobs").status_code == 200  # the bearer token is not locked out


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    """``--host 0.0.0.0`` without BGRUNNER_DASHBOARD_TOKEN: one clear line on stderr, exit 2."""
    env = clean_environ()
    env.update({"BGRUNNER_DATABASE_URL": f"sqlite:///{tmp_path / 'j.db'}",
                "BGRUNNER_LOG_DIR": str(tmp_path / "logs")})
    r = subprocess.run([sys.executable, "-m", "bgrunner", "dashboard", "--host", "0.0.0.0",
                        "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "BGRUNNER_DASHBOARD_TOKEN" in lines[0] and "0.0.0.0" in lines[0]


def test_generated_token_is_printed_once_and_works(fresh_server: Callable[..., Server]) -> None:
    """Without BGRUNNER_DASHBOARD_TOKEN a token is generated, printed once, and logs in."""
    server = fresh_server(token=None, readonly=None)
    text = poll(lambda: "login token" in server.stderr() and server.stderr(), what="the token line")
    tokens = re.findall(r"login token[^:]*: (\S+)", text)
    assert len(tokens) == 1
    assert f"http://127.0.0.1:{server.port}/" in text
    assert server.client(tokens[0]).get("/api/jobs").status_code == 200
    assert server.client(TOKEN).get("/api/jobs").status_code == 401


def test_unauthenticated_event_stream_is_refused(server: Server) -> None:
    """The live streams are behind the login like everything else."""
    r = httpx.get(server.url + "/events", timeout=5)
    assert r.status_code == 401


def test_login_refuses_an_oversized_body(server: Server) -> None:
    """Anyone may post to /login, so its body is capped (413) before it is parsed."""
    r = httpx.post(server.url + "/login", content=b"token=" + b"x" * 100_000,
                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)
    assert r.status_code == 413
