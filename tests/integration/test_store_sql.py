"""The SQL stores beyond the contract: the shared base (bgrunner.store._sql) and what each dialect adds.

Layout and schema versions (existing databases must keep opening), the two
behaviours the backends used to disagree on, the fenced attempt-ending writes
under a race, and PostgreSQL's wake-ups.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgrunner.model import JobStatus, NewJob
from bgrunner.store._sql import SqlStore
from bgrunner.store.factory import open_store
from tests.backends import fresh_postgres_url, require_postgres, sqlite_url

REPO = Path(__file__).resolve().parents[2]
SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
JOBS_COLUMNS = {
    "id": "int", "target": "text", "method": "text", "params": "text", "status": "text",
    "priority": "int", "attempts": "int", "max_attempts": "int", "retry_delay": "real",
    "timeout": "real", "run_at": "real", "created_at": "real", "started_at": "real",
    "finished_at": "real", "claimed_at": "real", "pid": "int", "pid_ctime": "real", "host": "text",
    "error": "text", "traceback": "text", "result": "text", "progress": "text", "then_jobs": "text",
    "parent_id": "int", "retry_of": "int", "unstarted": "int", "lease_at": "real",
    "queue": "text", "unique_key": "text", "schedule": "text", "scheduled_for": "real", "worker": "text",
}
#: The jobs indexes of the current layout, on both databases.
JOBS_INDEXES = {"jobs_active_target", "jobs_finished", "jobs_queue", "jobs_ready", "jobs_ready_at",
                "jobs_ready_queue", "jobs_status", "jobs_target", "jobs_unique_active"}


def job(**fields: Any) -> NewJob:
    return NewJob(target="tests.fixtures:Job", method="run", params=[], **fields)


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "jobs.db")
    require_postgres()
    return fresh_postgres_url(request)


@pytest.fixture
def store(sql_url: str) -> Iterator[SqlStore]:
    opened = open_store(sql_url)
    assert isinstance(opened, SqlStore)
    yield opened
    opened.close()


def claimed(store: SqlStore, job_id: int) -> None:
    assert store.claim(job_id, now=time.time(), cap=10_000, host="h") is not None


# -- modules and layout ---------------------------------------------------------------------
def test_the_backends_do_not_import_each_other() -> None:
    """Importing the SQLite store loads neither psycopg nor the PostgreSQL store, and the reverse."""
    script = (
        "import sys\n"
        "import bgrunner.store.sqlite\n"
        "assert not {'psycopg', 'bgrunner.store.postgres'} & set(sys.modules), sys.modules\n"
        "del sys.modules['bgrunner.store.sqlite']\n"
        "try:\n"
        "    import bgrunner.store.postgres\n"
        "except ImportError:\n"
        "    sys.exit(0)\n"
        "assert 'bgrunner.store.sqlite' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    script = "import sys, bgrunner.store.postgres; assert 'bgrunner.store.sqlite' not in sys.modules"
    pytest.importorskip("psycopg")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)


def test_shared_sql_gets_the_drivers_placeholders() -> None:
    """Shared statements are written with ?; PostgreSQL's driver gets %s, SQLite's the text as is."""
    from bgrunner.store.sqlite import SQLiteStore

    assert SQLiteStore("sqlite:////tmp/unused.db")._dialect("a = ? AND b IN (?, ?)") == "a = ? AND b IN (?, ?)"
    pytest.importorskip("psycopg")
    from bgrunner.store.postgres import PostgresStore

    assert PostgresStore("postgresql://u@h/db")._dialect("a = ? AND b IN (?, ?)") == "a = %s AND b IN (%s, %s)"


def _layout(store: SqlStore) -> tuple[Any, set[str], dict[str, str]]:
    """(schema version, index names on jobs, jobs column -> int/real/text) as the database reports them."""
    kinds = {"INTEGER": "int", "bigint": "int", "REAL": "real", "double precision": "real",
             "TEXT": "text", "text": "text"}
    if store.url.startswith("sqlite"):
        version = store._fetch("PRAGMA user_version")[0][0]
        indexes = {r[0] for r in store._fetch("SELECT name FROM sqlite_master WHERE type = 'index'"
                                              " AND tbl_name = 'jobs' AND sql IS NOT NULL")}
        columns = {r[1]: kinds[r[2]] for r in store._fetch("PRAGMA table_info(jobs)")}
        return version, indexes, columns
    schema = store.schema  # type: ignore[attr-defined]
    version = store._fetch(f'SELECT value FROM "{schema}".bgrunner_meta WHERE key = ?', ("schema_version",))[0][0]
    indexes = {r[0] for r in store._fetch("SELECT indexname FROM pg_indexes WHERE schemaname = ?"
                                          " AND tablename = 'jobs'", (schema,))}
    columns = {r[0]: kinds[r[1]] for r in store._fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ?"
        " AND table_name = 'jobs'", (schema,))}
    return version, indexes - {"jobs_pkey"}, columns


def test_the_layout_and_schema_version_are_unchanged(store: SqlStore) -> None:
    """Schema version (SQLite user_version 5, PostgreSQL meta 4), jobs columns and indexes as released."""
    store.counts()
    version, indexes, columns = _layout(store)
    assert version == (5 if store.url.startswith("sqlite") else "4")
    assert indexes == JOBS_INDEXES
    assert columns == JOBS_COLUMNS


def test_a_store_of_the_previous_version_gains_the_new_columns(sql_url: str) -> None:
    """A store made before leases (SQLite 3, PostgreSQL 2: no unstarted, lease_at) is upgraded on open, jobs kept."""
    first = open_store(sql_url)
    assert isinstance(first, SqlStore)
    job_id = first.create(job())
    for column in ("lease_at", "unstarted"):
        first._change(f"ALTER TABLE {first.prefix}jobs DROP COLUMN {column}")
    first._change(f"DROP TABLE {first.prefix}revoked_sessions")
    if sql_url.startswith("sqlite"):
        first._change("PRAGMA user_version = 3")
    else:
        first._change(f"UPDATE {first.prefix}bgrunner_meta SET value = '2' WHERE key = 'schema_version'")
    first.close()
    again = open_store(sql_url)
    assert isinstance(again, SqlStore)
    version, _indexes, columns = _layout(again)
    record = again.get(job_id)
    again.revoke_session("s", until=time.time() + 5)
    again.close()
    assert version in (5, "4") and columns == JOBS_COLUMNS
    assert record is not None and (record.unstarted, record.lease_at) == (0, None)


def test_a_store_opened_again_keeps_its_jobs(sql_url: str) -> None:
    """A second open of an existing database (schema at the current version) sees the first one's jobs."""
    first = open_store(sql_url)
    job_id = first.create(job())
    first.close()
    again = open_store(sql_url)
    record = again.get(job_id)
    again.close()
    assert record is not None and record.status is JobStatus.PENDING


# -- the behaviours the backends used to disagree on -------------------------------------------
def test_audit_without_before_id_has_no_upper_bound(store: SqlStore) -> None:
    """audit() with before_id None lists every entry, even ids at or above 2**62 (SQLite used to cut there)."""
    low = store.add_audit(actor="a", action="x", job_id=None, detail=None, address=None, now=1.0)
    high = 2**62 + 7
    store._change(f"INSERT INTO {store.prefix}audit (id, at, actor, action) VALUES (?, ?, ?, ?)",
                  (high, 2.0, "b", "y"))
    assert [e.id for e in store.audit()] == [high, low]
    assert [e.id for e in store.audit(before_id=high)] == [low]


def test_create_running_stamps_one_time(store: SqlStore) -> None:
    """create_running records started_at = claimed_at = created_at (one clock reading) on every backend."""
    before = time.time()
    job_id = store.create_running(job(), pid=4242, pid_ctime=12.5, host="here")
    record = store.get(job_id)
    assert record is not None
    assert before <= record.created_at <= time.time()
    assert record.started_at == record.claimed_at == record.created_at == record.run_at
    assert (record.status, record.attempts, record.pid, record.pid_ctime, record.host) == (
        JobStatus.RUNNING, 1, 4242, 12.5, "here")


# -- release (a kept retry handed to the workers) ------------------------------------------------
def test_release_hands_a_kept_retry_to_the_workers(store: SqlStore) -> None:
    """release() clears the pid of a job kept between attempts (fenced); the job is then claimable."""
    job_id = store.create(job())
    claimed(store, job_id)
    assert not store.release(job_id, 1)  # running, not kept
    assert store.set_process(job_id, 1, pid=99, pid_ctime=1.0)
    assert store.retry_later(job_id, 1, outcome="failed", error="E", traceback=None,
                             run_at=time.time() - 1, release=False, now=time.time())
    assert not store.release(job_id, 2)  # another attempt
    assert store.release(job_id, 1)
    assert not store.release(job_id, 1)  # no longer kept
    record = store.get(job_id)
    assert record is not None and (record.status, record.pid, record.pid_ctime) == ("retrying", None, None)
    again = store.claim_next(now=time.time(), cap=10, host="h")
    assert again is not None and (again.id, again.attempts) == (job_id, 2)


# -- fencing under a race --------------------------------------------------------------------------
def test_finish_racing_cancel_leaves_a_consistent_history(store: SqlStore, sql_url: str) -> None:
    """finish and cancel racing from two handles: each job ends one way, with one history row saying so."""
    ids = [store.create(job()) for _ in range(40)]
    for job_id in ids:
        claimed(store, job_id)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(action: str) -> None:
        own = open_store(sql_url)
        try:
            barrier.wait(timeout=30)
            if action == "finish":
                for job_id in ids:
                    own.finish(job_id, 1, status=JobStatus.COMPLETED, now=time.time(), result="1")
            else:  # from the other end: the two meet somewhere in the middle
                for job_id in reversed(ids):
                    own.cancel(job_id, now=time.time())
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in ("finish", "cancel")]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors and not any(t.is_alive() for t in threads)
    for job_id in ids:
        record = store.get(job_id)
        assert record is not None and record.status in ("completed", "cancelled")
        assert [(a.attempt, a.outcome) for a in store.attempts(job_id)] == [(1, record.status)]


# -- PostgreSQL wake-ups ---------------------------------------------------------------------------
def collect(listener: Any, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    received: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and (left := deadline - time.monotonic()) > 0:
        received += listener.events(left)
    return received


@pytest.mark.postgres
def test_pg_writes_wake_workers_only_when_they_change_the_job(request: pytest.FixtureRequest) -> None:
    """unclaim, release, retry_later(release) and finish notify bgrunner_jobs at commit; fenced-out writes do not."""
    require_postgres()
    from bgrunner.store.postgres import PostgresStore

    store = PostgresStore(fresh_postgres_url(request))
    first, second = store.create(job()), store.create(job())
    with store.listen("bgrunner_jobs") as listener:
        claimed(store, first)
        assert store.unclaim(first, 1) and not store.unclaim(first, 1)
        claimed(store, first)  # attempt 2: a claim never reuses a given-back attempt's number
        assert store.set_process(first, 2, pid=7, pid_ctime=1.0)
        assert store.retry_later(first, 2, outcome="failed", error="E", traceback=None,
                                 run_at=time.time(), release=False, now=time.time())
        assert store.release(first, 2) and not store.release(first, 2)
        claimed(store, second)
        assert not store.finish(second, 2, status=JobStatus.COMPLETED, now=time.time())
        assert store.retry_later(second, 1, outcome="failed", error="E", traceback=None,
                                 run_at=time.time(), release=True, now=time.time())
        claimed(store, second)
        assert store.finish(second, 2, status=JobStatus.COMPLETED, now=time.time())
        store.notify("bgrunner_jobs", "fence")
        assert [p for _, p in collect(listener, 5)] == [str(first), str(first), str(second), str(second),
                                                          "fence"]
    store.close()



def test_sqlite_openers_racing_on_a_new_store_all_get_it(tmp_path: Path) -> None:
    """Six openers of one brand-new SQLite store at the same instant all open it (none gets
    "database is locked" from the switch to WAL), round after round."""
    from bgrunner.errors import StoreError

    failures: list[str] = []

    def open_it(url: str, barrier: threading.Barrier) -> None:
        store = open_store(url)
        barrier.wait()
        try:
            store.get(1)  # the first use connects: WAL, then the schema
        except StoreError as exc:
            failures.append(str(exc))
        finally:
            store.close()

    for round_ in range(60):
        url = sqlite_url(tmp_path / f"jobs{round_}.db")
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=open_it, args=(url, barrier)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
