"""Who may look and who may act: tokens, signed session cookies, CSRF, login rate limit, headers.

Everything is closed by default: ``Gate`` sits in front of every route and lets
through only the login page and static files without a login, so a route added
later cannot be left open by forgetting a decorator. A browser logs in once
with the token and gets a signed, ``HttpOnly``, ``SameSite=Strict`` session
cookie; scripts send ``Authorization: Bearer <token>``. A cookie-authenticated
request that changes something must carry the session's CSRF token (form
field ``csrf_token`` or header ``X-CSRF-Token``); a bearer request need not,
since a browser never adds that header by itself. The read-only token may look
at everything and change nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN = "admin"
READ_ONLY = "read-only"

SESSION_COOKIE = "bgrunner_session"
LOGIN_COOKIE = "bgrunner_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

#: How long a session lasts after login.
SESSION_LIFETIME = 12 * 3600
#: Failed logins allowed per client address within ``LOGIN_WINDOW`` seconds; then 429.
LOGIN_LIMIT = 5
LOGIN_WINDOW = 60.0
#: Largest body a cookie-authenticated change may have (the CSRF check reads it first).
MAX_FORM_BYTES = 1 << 20

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The only paths reachable without a login.
PUBLIC_PATHS = frozenset({"/login"})
PUBLIC_PREFIXES = ("/static/",)
#: Paths that answer 401 JSON rather than redirecting a browser to the login page.
MACHINE_PREFIXES = ("/api/", "/metrics", "/events")
MACHINE_SUFFIXES = ("/stream",)

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (any characters)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: its role, how it authenticated, and its session's secrets."""

    role: str
    via: str  # "session" | "bearer"
    session_id: str | None = None
    csrf: str | None = None

    @property
    def can_act(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> str:
        """Who the audit log names: "api" for a bearer token, "session <hash>" for a browser."""
        if self.via == "bearer":
            return "api"
        digest = hashlib.sha256((self.session_id or "").encode()).hexdigest()[:8]
        return f"session {digest}"


class LoginLimiter:
    """Failed logins per client address in a sliding window; thread-safe, bounded in memory."""

    def __init__(self, limit: int = LOGIN_LIMIT, window: float = LOGIN_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def blocked(self, address: str) -> float:
        """Seconds until this address may try again (0: it may try now)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.limit:
                return 0.0
            return max(0.0, self.window - (now - times[0]))

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # forget addresses whose window has passed
                for addr in [a for a, t in self._failures.items() if not t or now - t[-1] > self.window]:
                    del self._failures[addr]
            self._recent(address, now).append(now)


class Auth:
    """The tokens and everything derived from them (the session-signing key)."""

    def __init__(self, token: str, readonly_token: str | None = None,
                 limiter: LoginLimiter | None = None) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.token = token
        self.readonly_token = readonly_token or None
        # Changing either token signs everybody out.
        material = f"bgrunner-dashboard-session\0{token}\0{readonly_token or ''}".encode()
        self._key = hashlib.sha256(material).digest()
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()
        self.limiter = limiter or LoginLimiter()

    def role_of(self, token: str) -> str | None:
        """The role a presented token grants, or None. Both tokens are always compared."""
        admin = same(token, self.token)
        readonly = self.readonly_token is not None and same(token, self.readonly_token)
        return ADMIN if admin else READ_ONLY if readonly else None

    # -- sessions -------------------------------------------------------------------
    def new_session(self, role: str) -> tuple[str, Identity]:
        """A signed cookie value for a fresh session, and the identity it carries."""
        identity = Identity(role=role, via="session", session_id=secrets.token_urlsafe(18),
                            csrf=secrets.token_urlsafe(24))
        payload = {"r": role, "s": identity.session_id, "c": identity.csrf,
                   "e": int(time.time()) + SESSION_LIFETIME}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", identity

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def session(self, cookie: str) -> Identity | None:
        """The identity in a session cookie, if its signature holds and it is live."""
        body, _, signature = cookie.partition(".")
        try:
            if not signature or not same(signature, self._sign(body)):
                return None
            payload = json.loads(_unb64(body))
            role, sid, csrf, expires = payload["r"], payload["s"], payload["c"], payload["e"]
        except (ValueError, KeyError, TypeError, UnicodeEncodeError):
            return None
        if role not in (ADMIN, READ_ONLY) or expires < time.time():
            return None
        if role == READ_ONLY and self.readonly_token is None:
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return Identity(role=role, via="session", session_id=sid, csrf=csrf)

    def revoke(self, identity: Identity) -> None:
        """Log a session out for good (the cookie stays invalid even if replayed)."""
        if identity.session_id is None:
            return
        now = time.time()
        with self._lock:
            for sid in [s for s, exp in self._revoked.items() if exp < now]:
                del self._revoked[sid]
            self._revoked[identity.session_id] = now + SESSION_LIFETIME

    def identify(self, headers: Headers, cookies: dict[str, str]) -> Identity | None:
        """Bearer header first (a wrong one is not rescued by a cookie), then the cookie."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return None
            role = self.role_of(token.strip())
            return None if role is None else Identity(role=role, via="bearer")
        cookie = cookies.get(SESSION_COOKIE)
        return None if cookie is None else self.session(cookie)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_machine(path: str) -> bool:
    """Paths for programs (API, metrics, event streams): 401 JSON instead of a redirect."""
    return path.startswith(MACHINE_PREFIXES) or path.endswith(MACHINE_SUFFIXES)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def identity(conn: HTTPConnection) -> Identity:
    """The caller the gate let in (every non-public route has one)."""
    found: Identity = conn.scope["state"]["identity"]
    return found


def denied(path: str, message: str, status: int = 403) -> Response:
    if is_machine(path):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


def unauthenticated(scope: Scope) -> Response:
    path: str = scope["path"]
    if is_machine(path) or scope["method"] not in SAFE_METHODS:
        return JSONResponse({"error": "authentication required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="bgrunner"'})
    target = path + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
    return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=302)


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """One field of a url-encoded form body (other encodings must use the CSRF header)."""
    if not content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return None
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if key == name:
            return value
    return None


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if it is larger than ``limit``."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class Gate:
    """ASGI middleware: authenticate every request except the public paths; check CSRF and role.

    Order of checks for a protected path: identity (else 401 / redirect to
    /login), then for a request that changes something: the role (read-only
    may only log out: 403), then, for a cookie session, the CSRF token (403).
    """

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        found = self.auth.identify(conn.headers, conn.cookies)
        if found is None:
            await unauthenticated(scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = found
        if scope["method"] not in SAFE_METHODS:
            if not found.can_act and scope["path"] != "/logout":
                await denied(scope["path"], "read-only access: actions are not allowed")(
                    scope, receive, send)
                return
            if found.via == "session":
                body = await read_body(receive, MAX_FORM_BYTES)
                if body is None:
                    await denied(scope["path"], "request body too large", 413)(scope, receive, send)
                    return
                given = conn.headers.get(CSRF_HEADER) or form_field(
                    body, conn.headers.get("content-type", ""), CSRF_FIELD)
                if not given or found.csrf is None or not same(given, found.csrf):
                    await denied(scope["path"], "missing or wrong CSRF token")(scope, receive, send)
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then waits as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class SecurityHeaders:
    """ASGI middleware: the security headers on every response; no caching of private pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in {name for name, _ in SECURITY_HEADERS}]
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cookie_options(conn: HTTPConnection) -> dict[str, Any]:
    """``HttpOnly``, ``SameSite=Strict``, and ``Secure`` when the page came over https."""
    return {"httponly": True, "samesite": "strict", "secure": conn.url.scheme == "https"}
