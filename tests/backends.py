"""Where the test suites find their job stores: an SQLite file, or a PostgreSQL schema per test.

The PostgreSQL server comes from ``BGRUNNER_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), read once at import so a
fixture that clears the ``BGRUNNER_*`` variables cannot hide it. Each test gets
its own schema, dropped afterwards, so tests never see each other's jobs.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("BGRUNNER_TEST_PG_URL") or DEFAULT_PG_URL


def _with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (None removes); the rest is kept as written."""
    base, _, query = url.partition("?")
    pairs = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) not in changes]
    pairs += [f"{k}={quote(v, safe='')}" for k, v in changes.items() if v is not None]
    return base + ("?" + "&".join(pairs) if pairs else "")


def postgres_url(dbname: str | None = None, schema: str | None = None) -> str:
    """The test server's URL, optionally for another database and with ``?schema=``."""
    url = PG_URL
    if dbname is not None:
        base, mark, query = url.partition("?")
        scheme, _, rest = base.partition("://")
        netloc = rest.partition("/")[0]
        url = f"{scheme}://{netloc}/{quote(dbname, safe='')}{mark}{query}"
    return _with_query(url, schema=schema) if schema is not None else url


def _server_url() -> str:
    """The test server's URL as libpq takes it (without bgrunner's ``schema`` parameter)."""
    return _with_query(PG_URL, schema=None)


def _where() -> str:
    parts = urlsplit(PG_URL)
    host = parts.hostname or "local socket"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


@functools.lru_cache(maxsize=1)
def postgres_available() -> tuple[bool, str]:
    """Whether the test server answers, and why not (checked once per test session)."""
    try:
        import psycopg
    except ImportError as exc:
        return False, f"psycopg is not installed ({exc}): pip install -e '.[postgres]'"
    try:
        with psycopg.connect(_server_url(), connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return False, f"PostgreSQL not reachable at {_where()}: {first}"
    return True, ""


def in_ci() -> bool:
    """True under CI (``CI`` set and not false), where PostgreSQL must be running."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; under CI, fail it instead."""
    import pytest

    available, reason = postgres_available()
    if not available:
        if in_ci():
            pytest.fail(f"{reason} (CI is set: PostgreSQL must be running)", pytrace=False)
        pytest.skip(reason)


def execute_sql(sql: str, args: tuple[Any, ...] = ()) -> None:
    """Run one statement on the test server as its superuser (test setup and cleanup)."""
    import psycopg

    with psycopg.connect(_server_url(), connect_timeout=3, autocommit=True) as conn:
        conn.execute(sql, args or None)


def _schema_name(label: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:30] or "test"
    return f"t_{slug}_{uuid.uuid4().hex[:10]}"


def fresh_postgres_url(request_or_name: Any, *, create: bool = True) -> str:
    """Create a new, empty schema and return the store URL pointing at it (``?schema=…``).

    Given a pytest ``request``, the schema is named after the test and dropped
    when the test ends; given a name, call ``drop_postgres_schema(url)`` yourself.
    ``create=False`` only picks the unique name, leaving the store to create it.
    """
    label = getattr(getattr(request_or_name, "node", None), "name", None) or str(request_or_name)
    schema = _schema_name(label)
    if create:
        execute_sql(f'CREATE SCHEMA "{schema}"')
    url = postgres_url(schema=schema)
    if hasattr(request_or_name, "addfinalizer"):
        request_or_name.addfinalizer(lambda: drop_postgres_schema(url))
    return url


def drop_postgres_schema(url: str) -> None:
    """Drop the schema named in a store URL, with everything in it."""
    schema = dict(parse_qsl(urlsplit(url).query)).get("schema")
    if not schema or not re.fullmatch(r"t_[a-z0-9_]+", schema):
        raise ValueError(f"refusing to drop a schema not made by fresh_postgres_url: {url}")
    execute_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def sqlite_url(path: os.PathLike[str] | str) -> str:
    """``sqlite:///`` + the absolute path (so four slashes on Unix)."""
    return "sqlite:///" + os.path.abspath(path)
