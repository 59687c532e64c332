"""Who is on the other end: the client's address and scheme, the Host it asked for; security headers.

uvicorn runs with its proxy headers off, so ``X-Forwarded-For`` means nothing
unless the peer is a proxy the operator named (``Settings.trusted_proxies``):
otherwise any client could pick the address its login attempts are counted
and audited under. The ``Host`` check stops DNS rebinding: a page on another
site whose name was made to point at 127.0.0.1 sends its own name as Host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import PlainTextResponse

from bgrunner.dashboard.settings import ALLOWED_HOSTS_ENV, Settings, bare_host

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def host_of(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip()
    if header.startswith("["):
        return bare_host(header[1:header.find("]")] if "]" in header else header)
    name, _, _port = header.partition(":") if header.count(":") == 1 else (header, "", "")
    return bare_host(name)


def forwarded_client(peer: str, forwarded_for: str, settings: Settings) -> str:
    """The client behind a chain of trusted proxies: the rightmost address not a trusted proxy."""
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    address = peer
    while hops and settings.trusts(address):
        address = hops.pop()
    return address


class ClientInfo:
    """ASGI middleware: 400 for a Host not allowed; the client address and scheme via trusted proxies.

    Views read the result as usual (``request.client.host``, ``request.url.scheme``).
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers:  # a repeated header: join them as one list
                headers[name] += b"," + value
            else:
                headers[name] = value
        allowed = self.settings.allowed_hosts
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        if allowed is not None and host not in allowed:
            response = PlainTextResponse(
                f"this server does not answer to that Host name (see {ALLOWED_HOSTS_ENV})", 400)
            await response(scope, receive, send)
            return
        peer = scope["client"][0] if scope.get("client") else ""
        if self.settings.trusts(peer):
            scope = dict(scope)
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            if forwarded:
                scope["client"] = (forwarded_client(peer, forwarded, self.settings), 0)
            proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1]
            if proto.strip().lower() in ("http", "https"):
                scope["scheme"] = proto.strip().lower()
        await self.app(scope, receive, send)


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
