"""Integration fixtures: every store test runs against SQLite and PostgreSQL.

PostgreSQL unreachable: the test is skipped with the reason, except under CI
(``CI`` set), where PostgreSQL must run and the test fails instead.
"""

from __future__ import annotations

import os
import sys
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

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _no_bgrunner_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's BGRUNNER_* settings must not leak into a test (test settings excepted)."""
    for name in list(os.environ):
        if name.startswith("BGRUNNER_") and not name.startswith("BGRUNNER_TEST_"):
            monkeypatch.delenv(name)


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return sqlite_url(tmp_path / "jobs.db")
    require_postgres()
    return fresh_postgres_url(request)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of its own for one test: a fresh SQLite file or a fresh PostgreSQL schema."""
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
