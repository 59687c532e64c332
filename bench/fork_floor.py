"""The floor under fork mode on this machine: a fork per job with nothing of bgrunner's path.

    python bench/fork_floor.py [--jobs 2000]

A parent that has imported what bgrunner's template imports (same heap, frozen
for the GC) claims each job with one SQLite UPDATE and forks a child, two at a
time. The child opens its own connection, writes the start and the end of the
job (one autocommit UPDATE each), appends two log lines and leaves with
``os._exit``. No allowlist, no job module, no params, no hand-over, no exit
report: what is left is the kernel's price of a process per job (fork, the
copy-on-write faults, exit) plus the store's two writes. ``bench/compare.py``
runs it and shows it beside bgrunner's fork mode. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def warm_up() -> None:
    """Import what a fork-mode template imports, so a fork copies a heap of the same size."""
    import importlib

    from bgrunner.job.forked import load_title_setter
    from bgrunner.launch.forkserver import WARM_IMPORTS

    for name in (*WARM_IMPORTS, "bgrunner.store.sqlite"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    load_title_setter()


def child(db: str, log_fd: int, job_id: int) -> None:
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    conn.execute("UPDATE jobs SET started_at = ? WHERE id = ?", (time.time(), job_id))
    os.write(log_fd, b'{"event": "job_started", "job_id": "%d"}\n' % job_id)
    conn.execute("UPDATE jobs SET status = 'completed', finished_at = ? WHERE id = ?",
                 (time.time(), job_id))
    os.write(log_fd, b'{"event": "job_completed", "job_id": "%d"}\n' % job_id)
    os._exit(0)


def run(jobs: int, folder: Path) -> dict[str, float]:
    db = str(folder / "floor.db")
    conn = sqlite3.connect(db, isolation_level=None)  # kept open, as the worker's is
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT, started_at REAL,"
                 " finished_at REAL)")
    conn.executemany("INSERT INTO jobs (id, status) VALUES (?, 'pending')",
                     [(i,) for i in range(1, jobs + 1)])
    log_fd = os.open(folder / "floor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    warm_up()
    gc.collect()
    gc.freeze()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    running, next_id, done = 0, 1, 0
    while done < jobs:
        while running < 2 and next_id <= jobs:
            conn.execute("UPDATE jobs SET status = 'running' WHERE id = ? AND status = 'pending'",
                         (next_id,))
            if os.fork() == 0:
                child(db, log_fd, next_id)
            running, next_id = running + 1, next_id + 1
        os.wait()
        running, done = running - 1, done + 1
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine_after = resource.getrusage(resource.RUSAGE_SELF)
    completed = conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()[0]
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
           + mine_after.ru_utime + mine_after.ru_stime - mine.ru_utime - mine.ru_stime)
    return {"jobs": completed, "jobs_per_s": completed / elapsed,
            "cpu_ms_per_job": cpu / jobs * 1000,
            "child_faults_per_job": (after.ru_minflt - before.ru_minflt) / jobs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    # Not tempfile: it imports random, whose at-fork handler the template does not have.
    folder = Path(f"/tmp/bench-floor-{os.getpid()}")
    folder.mkdir(mode=0o700)
    try:
        print(json.dumps(run(args.jobs, folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
