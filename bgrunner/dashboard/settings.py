"""The dashboard's settings, read once at start from ``BGRUNNER_DASHBOARD_*`` variables.

Every setting that loosens a default (another Host, a proxy whose headers are
believed) must be named by the operator; nothing is inferred from a request.
A secret that is too easy to guess is refused at start rather than accepted
and rate limited forever.
"""

from __future__ import annotations

import ipaddress
import math
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_ENV = "BGRUNNER_DASHBOARD_TOKEN"
READONLY_ENV = "BGRUNNER_DASHBOARD_READONLY_TOKEN"
ALLOWED_HOSTS_ENV = "BGRUNNER_DASHBOARD_ALLOWED_HOSTS"
TRUSTED_PROXIES_ENV = "BGRUNNER_DASHBOARD_TRUSTED_PROXIES"
SECURE_COOKIES_ENV = "BGRUNNER_DASHBOARD_SECURE_COOKIES"

#: Host names every dashboard answers to (DNS rebinding gets a 400 for any other).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: A configured secret must reach this many bits of estimated entropy (see ``estimated_bits``).
MIN_SECRET_BITS = 128
#: ... and hold at least this many different characters ("aaaa…" is not a secret).
MIN_DISTINCT_CHARS = 8

_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "-_+/=")
_PRINTABLE = frozenset(string.printable) - frozenset(string.whitespace)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting is refused; the message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    """What ``create_app`` needs besides the context. The defaults are the safe ones."""

    #: Lower-case host names the ``Host`` header may carry (port stripped); None: any.
    allowed_hosts: frozenset[str] | None = frozenset(LOOPBACK_HOSTS)
    #: Peers whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed.
    trusted_proxies: tuple[Network, ...] = field(default_factory=tuple)
    #: Always mark the session cookie ``Secure`` (behind a TLS proxy).
    secure_cookies: bool = False

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)


def estimated_bits(secret: str) -> float:
    """A simple, pessimistic estimate of a secret's entropy, in bits.

    Length times the bits per character of the smallest usual alphabet that
    holds all its characters: 4 for hex digits, 6 for base64/base64url, log2(94)
    (about 6.55) for other printable ASCII; any other character counts as
    printable ASCII. It assumes the characters were drawn at random, which is
    what the minimum is for: ``secrets.token_urlsafe(16)`` (22 characters) or
    ``secrets.token_hex(16)`` (32 hex digits) is just enough.
    """
    chars = set(secret)
    if chars <= _HEX:
        per_char = 4.0
    elif chars <= _BASE64:
        per_char = 6.0
    else:
        per_char = math.log2(len(_PRINTABLE))
    return len(secret) * per_char


def check_secret(name: str, secret: str) -> None:
    """SettingsError (one line) for a secret below ``MIN_SECRET_BITS`` or with too few characters."""
    bits = estimated_bits(secret)
    if bits < MIN_SECRET_BITS or len(set(secret)) < MIN_DISTINCT_CHARS:
        raise SettingsError(
            f"{name} is too weak (about {bits:.0f} bits of estimated entropy, {len(set(secret))} "
            f"different characters; {MIN_SECRET_BITS} bits and {MIN_DISTINCT_CHARS} needed: use at "
            f"least 22 random base64url characters or 32 hex digits, e.g. "
            f"python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def bare_host(host: str) -> str:
    """A host name as compared: lower case, without brackets or a trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def allowed_hosts(value: str | None, bind: str) -> frozenset[str] | None:
    """The setting's names, or the loopback names plus the bind address (unless a wildcard)."""
    if value is not None and value.strip():
        names = {bare_host(name) for name in _split(value)}
        return None if "*" in names else frozenset(names)
    names = set(LOOPBACK_HOSTS)
    host = bare_host(bind)
    if host and host not in ("0.0.0.0", "::"):
        names.add(host)
    return frozenset(names)


def trusted_proxies(value: str | None) -> tuple[Network, ...]:
    """Addresses or CIDR networks, comma-separated; SettingsError for one that is neither."""
    nets = []
    for part in _split(value or ""):
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SettingsError(f"{TRUSTED_PROXIES_ENV}: {part!r} is not an IP address or network "
                                f"(e.g. 127.0.0.1, 10.0.0.0/8)") from None
    return tuple(nets)


def from_env(bind: str, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings for a server bound to ``bind``; SettingsError for a refused value."""
    env = os.environ if environ is None else environ
    flag = env.get(SECURE_COOKIES_ENV, "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise SettingsError(f"{SECURE_COOKIES_ENV} must be 1 or 0, not {flag!r}")
    return Settings(allowed_hosts=allowed_hosts(env.get(ALLOWED_HOSTS_ENV), bind),
                    trusted_proxies=trusted_proxies(env.get(TRUSTED_PROXIES_ENV)),
                    secure_cookies=flag in ("1", "true", "yes", "on"))
