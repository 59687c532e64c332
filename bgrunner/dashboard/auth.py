"""Who may look and who may act: tokens, signed session cookies, revocation, CSRF.

Everything is closed by default: ``Gate`` sits in front of every route and lets
through only the login page and static files without a login, so a route added
later cannot be left open by forgetting a decorator. A browser logs in once
with the token and gets a signed, ``HttpOnly``, ``SameSite=Strict`` session
cookie; scripts send ``Authorization: Bearer <token>``. A cookie-authenticated
request that changes something must carry the session's CSRF token (form
field ``csrf_token`` or header ``X-CSRF-Token``); a bearer request need not,
since a browser never adds that header by itself. The read-only token may look
at everything and change nothing. How many attempts are allowed is
``limits``'s to say; the client's address (through trusted proxies) is ``network``'s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from bgrunner.dashboard.limits import (
    BEARER_GLOBAL,
    BEARER_PER_ADDRESS,
    LOGIN_GLOBAL,
    LOGIN_PER_ADDRESS,
    MAX_BODY,
    AttemptLimiter,
)

if TYPE_CHECKING:
    from bgrunner.store.base import Store

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
#: Largest body a cookie-authenticated change may have (the CSRF check reads it first).
MAX_FORM_BYTES = MAX_BODY

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The only paths reachable without a login.
PUBLIC_PATHS = frozenset({"/login"})
PUBLIC_PREFIXES = ("/static/",)
#: Paths that answer 401 JSON rather than redirecting a browser to the login page.
MACHINE_PREFIXES = ("/api/", "/metrics", "/events")
MACHINE_SUFFIXES = ("/stream",)



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
    expires: int | None = None  # a session's end (epoch seconds)

    @property
    def key(self) -> str:
        """One caller, for per-caller limits: the session, or the token."""
        return f"session:{self.session_id}" if self.via == "session" else f"api:{self.role}"

    @property
    def can_act(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> str:
        """Who the audit log names: "api:admin" / "api:read-only" for a token, "session <hash>"."""
        if self.via == "bearer":
            return f"api:{self.role}"
        digest = hashlib.sha256((self.session_id or "").encode()).hexdigest()[:8]
        return f"session {digest}"


class Auth:
    """The tokens and everything derived from them (the session-signing key), and the limiters."""

    def __init__(self, token: str, readonly_token: str | None = None,
                 login_limiter: AttemptLimiter | None = None,
                 bearer_limiter: AttemptLimiter | None = None) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.token = token
        self.readonly_token = readonly_token or None
        # Changing either token signs everybody out.
        material = f"bgrunner-dashboard-session\0{token}\0{readonly_token or ''}".encode()
        self._key = hashlib.sha256(material).digest()
        #: Sessions known to be revoked (the store is the truth; this saves asking again).
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()
        self.limiter = login_limiter or AttemptLimiter(LOGIN_PER_ADDRESS, LOGIN_GLOBAL)
        self.bearer_limiter = bearer_limiter or AttemptLimiter(BEARER_PER_ADDRESS, BEARER_GLOBAL)

    def role_of(self, token: str) -> str | None:
        """The role a presented token grants, or None. Both tokens are always compared."""
        admin = same(token, self.token)
        readonly = self.readonly_token is not None and same(token, self.readonly_token)
        return ADMIN if admin else READ_ONLY if readonly else None

    # -- sessions -------------------------------------------------------------------
    def new_session(self, role: str) -> tuple[str, Identity]:
        """A signed cookie value for a fresh session, and the identity it carries."""
        expires = int(time.time()) + SESSION_LIFETIME
        identity = Identity(role=role, via="session", session_id=secrets.token_urlsafe(18),
                            csrf=secrets.token_urlsafe(24), expires=expires)
        payload = {"r": role, "s": identity.session_id, "c": identity.csrf, "e": expires}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", identity

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def session(self, cookie: str) -> Identity | None:
        """The identity in a session cookie, if its signature holds and it has not expired.

        Whether it was logged out is the store's to say: ``revoked``.
        """
        body, _, signature = cookie.partition(".")
        try:
            if not signature or not same(signature, self._sign(body)):
                return None
            payload = json.loads(_unb64(body))
            role, sid, csrf, expires = payload["r"], payload["s"], payload["c"], payload["e"]
        except (ValueError, KeyError, TypeError, UnicodeEncodeError):
            return None
        if role not in (ADMIN, READ_ONLY) or not isinstance(expires, int) or expires < time.time():
            return None
        if role == READ_ONLY and self.readonly_token is None:
            return None
        return Identity(role=role, via="session", session_id=str(sid), csrf=str(csrf),
                        expires=expires)

    def revoked(self, store: Store, identity: Identity) -> bool:
        """True if the session was logged out, here or by any dashboard on the store, before or
        since a restart (blocking: call it in a worker thread)."""
        sid = identity.session_id
        if sid is None:
            return False
        now = time.time()
        with self._lock:
            if self._revoked.get(sid, 0.0) > now:
                return True
        if not store.session_revoked(sid, now=now):
            return False
        self._remember(sid, identity.expires or now + SESSION_LIFETIME, now)
        return True

    def revoke(self, store: Store, identity: Identity) -> None:
        """Log a session out for good: the store keeps it until the cookie would have expired."""
        if identity.session_id is None:
            return
        now = time.time()
        until = float(identity.expires or now + SESSION_LIFETIME)
        store.revoke_session(identity.session_id, until=until)
        self._remember(identity.session_id, until, now)

    def _remember(self, sid: str, until: float, now: float) -> None:
        with self._lock:
            if len(self._revoked) > 10_000:
                for old in [s for s, exp in self._revoked.items() if exp < now]:
                    del self._revoked[old]
            self._revoked[sid] = until

    def bearer(self, headers: Headers) -> str | None:
        """The token of an ``Authorization: Bearer`` header; "" for another scheme; None: no header."""
        authorization = headers.get("authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""


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


#: ``await on_denied(actor, address, action, detail)``: audits a refusal.
OnDenied = Callable[[str, str, str, str], Awaitable[None]]
#: ``await revoked(identity)``: asks the store whether a session was logged out.
IsRevoked = Callable[["Identity"], Awaitable[bool]]


def too_many(path: str, wait: float) -> Response:
    headers = {"Retry-After": str(max(1, round(wait)))}
    message = f"too many failed attempts: try again in {max(1, round(wait))} s"
    if is_machine(path):
        return JSONResponse({"error": message}, status_code=429, headers=headers)
    return PlainTextResponse(message, status_code=429, headers=headers)


class Gate:
    """ASGI middleware: authenticate every request except the public paths; check CSRF and role.

    Order of checks for a protected path: identity (else 401 / redirect to
    /login; a wrong bearer token counts against the address, and a blocked
    address gets 429 before its token is even compared), then for a request
    that changes something: the role (read-only may only log out: 403), then,
    for a cookie session, the CSRF token (403). Every refusal of a caller who
    did authenticate, and every wrong bearer token, is audited.
    """

    def __init__(self, app: ASGIApp, auth: Auth, on_denied: OnDenied, revoked: IsRevoked) -> None:
        self.app, self.auth, self.on_denied, self.revoked = app, auth, on_denied, revoked

    async def _identify(self, scope: Scope, conn: HTTPConnection) -> Identity | Response | None:
        token = self.auth.bearer(conn.headers)
        if token:
            address = client_address(conn)
            wait = self.auth.bearer_limiter.blocked(address)
            if wait:
                return too_many(scope["path"], wait)
            role = self.auth.role_of(token)
            if role is None:
                self.auth.bearer_limiter.failed(address)  # nothing was awaited since blocked()
                await self.on_denied("anonymous", address, "login_failed",
                                     f"wrong bearer token ({scope['method']} {scope['path']})")
                return None
            return Identity(role=role, via="bearer")
        if token is not None:
            return None  # another scheme, or an empty token: not a credential
        cookie = conn.cookies.get(SESSION_COOKIE)
        found = None if cookie is None else self.auth.session(cookie)
        if found is not None and await self.revoked(found):
            return None
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        found = await self._identify(scope, conn)
        if isinstance(found, Response):
            await found(scope, receive, send)
            return
        if found is None:
            await unauthenticated(scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = found
        if scope["method"] not in SAFE_METHODS:
            refusal = None
            if not found.can_act and scope["path"] != "/logout":
                refusal = "read-only access: actions are not allowed"
            elif found.via == "session":
                body = await read_body(receive, MAX_FORM_BYTES)
                if body is None:
                    await denied(scope["path"], "request body too large", 413)(scope, receive, send)
                    return
                given = conn.headers.get(CSRF_HEADER) or form_field(
                    body, conn.headers.get("content-type", ""), CSRF_FIELD)
                if not given or found.csrf is None or not same(given, found.csrf):
                    refusal = "missing or wrong CSRF token"
                receive = _replay(body, receive)
            if refusal is not None:
                await self.on_denied(found.actor, client_address(conn), "denied",
                                     f"{scope['method']} {scope['path']}: {refusal}")
                await denied(scope["path"], refusal)(scope, receive, send)
                return
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


def cookie_options(conn: HTTPConnection) -> dict[str, Any]:
    """``HttpOnly``, ``SameSite=Strict``, and ``Secure`` when the page came over https (directly or
    through a trusted proxy) or the settings say so (``BGRUNNER_DASHBOARD_SECURE_COOKIES``)."""
    settings = getattr(conn.app.state, "settings", None)
    secure = conn.url.scheme == "https" or bool(settings is not None and settings.secure_cookies)
    return {"httponly": True, "samesite": "strict", "secure": secure}
