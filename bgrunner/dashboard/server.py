"""``bgrunner dashboard``: check the settings, print where to go, and run uvicorn.

Without ``BGRUNNER_DASHBOARD_TOKEN`` a token is generated and printed once to
stderr. That is only allowed on a loopback address: a server reachable from
the network must have a secret the operator chose and manages, not one that
lives in a terminal's scrollback and changes at every restart. A configured
secret under 128 bits of estimated entropy is refused (``settings.check_secret``);
a generated one has 256. uvicorn's own proxy-header handling is off: the
dashboard believes ``X-Forwarded-*`` only from ``BGRUNNER_DASHBOARD_TRUSTED_PROXIES``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys

from bgrunner.context import Context
from bgrunner.dashboard.settings import (
    READONLY_ENV,
    TOKEN_ENV,
    Settings,
    SettingsError,
    check_secret,
    from_env,
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; anything else (0.0.0.0, names) is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def serve(ctx: Context, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the dashboard until interrupted; 2 if the settings are refused."""
    token = os.environ.get(TOKEN_ENV) or None
    readonly = os.environ.get(READONLY_ENV) or None
    if not is_loopback(host) and token is None:
        print(f"bgrunner dashboard: error: refusing to listen on {host} without {TOKEN_ENV} "
              f"set (or use --host 127.0.0.1)", file=sys.stderr)
        return 2
    if readonly is not None and token is not None and readonly == token:
        print(f"bgrunner dashboard: error: {READONLY_ENV} must differ from {TOKEN_ENV}",
              file=sys.stderr)
        return 2
    try:
        settings = checked_settings(host, token, readonly)
    except SettingsError as exc:
        print(f"bgrunner dashboard: error: {exc}", file=sys.stderr)
        return 2
    ctx.config  # noqa: B018  a broken allowlist is a clear error now (ConfigError, exit 2)
    ctx.store.counts()  # and so is a store that cannot be opened (StoreError)

    try:
        sock = listen(host, port)
    except OSError as exc:
        print(f"bgrunner dashboard: error: cannot listen on {host}:{port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2

    import uvicorn

    from bgrunner.dashboard.app import create_app

    generated = token is None
    token = token or secrets.token_urlsafe(32)
    app = create_app(ctx, token=token, readonly_token=readonly, settings=settings)
    print(f"bgrunner dashboard: serving {url_of(host, port)}", file=sys.stderr, flush=True)
    if generated:
        print(f"bgrunner dashboard: login token (generated; set {TOKEN_ENV} to choose one): "
              f"{token}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            timeout_graceful_shutdown=3, proxy_headers=False,
                            forwarded_allow_ips="")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def checked_settings(host: str, token: str | None, readonly: str | None) -> Settings:
    """The settings from the environment, and the configured secrets strong enough; else SettingsError."""
    for name, secret in ((TOKEN_ENV, token), (READONLY_ENV, readonly)):
        if secret is not None:
            check_secret(name, secret)
    return from_env(host)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is printed (a busy port is a clear error)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
