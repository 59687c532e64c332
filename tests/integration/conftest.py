"""Integration fixtures: every store test runs against SQLite, PostgreSQL and the memory store.

PostgreSQL unreachable: the test is skipped with the reason, except under CI
(``CI`` set), where PostgreSQL must run and the test fails instead.

A test that needs a database shared between processes is marked
``@pytest.mark.cross_process("why")``: the memory store lives in one process,
so the test is skipped on it with that reason. The BGRUNNER_* environment is
cleared for every test by the root conftest's ``clean_env``.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.backends import fresh_postgres_url, require_postgres, sqlite_url
except ImportError:  # run by the `pytest` script: the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.backends import fresh_postgres_url, require_postgres, sqlite_url

from bgrunner.store.base import Store
from bgrunner.store.factory import open_store
from bgrunner.store.memory import drop_memory_store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cross_process(reason): needs a database shared between processes (not on memory)")


def memory_url(request: pytest.FixtureRequest) -> str:
    """A memory store of the test's own (a unique name), forgotten when the test ends."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    url = f"memory://{slug}-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: drop_memory_store(url))
    return url


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return sqlite_url(tmp_path / "jobs.db")
    if backend == "memory":
        marker = request.node.get_closest_marker("cross_process")
        if marker is not None:
            pytest.skip(f"memory store is per process: {marker.args[0] if marker.args else 'cross-process test'}")
        return memory_url(request)
    require_postgres()
    return fresh_postgres_url(request)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of its own for one test: a fresh SQLite file, PostgreSQL schema or memory store."""
    return _url(request.param, request, tmp_path)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL schema's store URL, for the few PostgreSQL-only tests."""
    require_postgres()
    return fresh_postgres_url(request)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """An open store on the test's own database, closed afterwards."""
    opened = open_store(database_url)
    yield opened
    opened.close()
