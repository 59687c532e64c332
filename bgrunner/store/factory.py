"""Open a job store by URL scheme: ``sqlite:///…`` (built in), ``postgresql://…``, ``memory://NAME``.

Backends are imported lazily: a process loads only the one it uses (and
psycopg only when PostgreSQL is asked for).
"""

from __future__ import annotations

import os

from bgrunner.errors import StoreError
from bgrunner.store.base import Store

#: Where the built-in store lives when nothing is configured (relative to the current directory).
DEFAULT_DATABASE_URL = "sqlite:///var/bgrunner.db"


def open_store(url: str | None = None) -> Store:
    """Open the store named by ``url`` (or ``BGRUNNER_DATABASE_URL``, or the default SQLite file).

    ``memory://NAME`` is this process's in-memory store of that name (the same
    jobs for every caller naming it; ``memory://`` alone is a private one): for
    tests only, since jobs launched as processes cannot see it.
    """
    url = url or os.environ.get("BGRUNNER_DATABASE_URL") or DEFAULT_DATABASE_URL
    if url.startswith("sqlite:"):
        from bgrunner.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from bgrunner.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL store needs psycopg: install bgrunner[postgres] ({exc})"
            ) from exc
        return PostgresStore(url)
    if url.startswith("memory:"):
        from bgrunner.store.memory import MemoryStore

        return MemoryStore(url)
    scheme = url.split(":", 1)[0]
    raise StoreError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///, postgresql:// or memory://"
    )
