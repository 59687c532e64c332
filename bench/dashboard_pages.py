"""How fast the dashboard's pages are over a store of 1,000,000 jobs (server side, in-process).

Builds an SQLite store with N jobs (default 1,000,000) and an attempt each,
plus full rotated logs (6 x 10 MB, the default rotation: the events of the
newest ~80,000 jobs), then calls the ASGI
app in-process with httpx.ASGITransport and prints p50/p95/max per page.
Goal: p95 <= 100 ms for the list's first page, a deep page and a job page.

    python bench/dashboard_pages.py [--jobs 1000000] [--runs 200] [--keep DIR]

Filling the store writes rows with sqlite3 directly, in one transaction, after
the store has created its schema: that is a shortcut of this benchmark only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ["examples.jobs:SampleJob", "examples.jobs:SlowJob", "examples.jobs:FlakyJob"]
ALLOWLIST = """
[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]
[jobs."examples.jobs:SlowJob"]
methods = ["run"]
[jobs."examples.jobs:FlakyJob"]
methods = ["fail"]
"""
TOKEN = "bench-token"


def fill_store(url: str, path: str, n: int) -> None:
    from bgrunner.store.factory import open_store

    open_store(url).counts()  # the store creates its schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(7)
    now = time.time()
    start = now - 7 * 24 * 3600
    statuses = ["completed"] * 90 + ["failed"] * 6 + ["cancelled"] * 3 + ["pending"]

    def rows():
        for i in range(1, n + 1):
            created = start + (now - start) * i / n
            status = statuses[rng.randrange(len(statuses))]
            target = TARGETS[i % 3]
            method = ("process", "run", "fail")[i % 3]
            params = json.dumps({"name": f"user-{i}", "times": i % 7})
            finished = None if status == "pending" else created + rng.random() * 5
            error = "RuntimeError: upstream returned 503" if status == "failed" else None
            yield (i, target, method, params, status, 0, 0 if status == "pending" else 1, 3, 5.0,
                   0.0, created, created, None if status == "pending" else created + 0.2,
                   finished, error, None if status != "completed" else json.dumps(i))

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, target, method, params, status, priority, attempts, max_attempts,"
        " retry_delay, timeout, run_at, created_at, started_at, finished_at, error, result)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
    conn.execute(
        "INSERT INTO attempts (job_id, attempt, outcome, started_at, finished_at, pid, error,"
        " traceback) SELECT id, 1, status, started_at, finished_at, 4242, error,"
        " CASE WHEN error IS NULL THEN NULL ELSE 'Traceback (most recent call last): ...' END"
        " FROM jobs WHERE status != 'pending'")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def fill_logs(log_dir: Path, n: int, files: int = 6, size: int = 10_000_000) -> int:
    """Full main log plus 5 rotated files: the events of the newest jobs, in time order.

    Returns the id of the oldest job whose events are still in the logs.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    now = time.time()
    start = now - 7 * 24 * 3600
    lines: list[tuple[float, str]] = []
    total, job = 0, n
    while total < files * (size - 1000) and job > 0:
        created = start + (now - start) * job / n
        target = TARGETS[job % 3]
        for event, at, extra in (("job_queued", created, {"priority": 0, "run_at": created}),
                                 ("job_started", created + 0.2, {}),
                                 ("job_completed", created + 0.2 + rng.random() * 5,
                                  {"duration_ms": 812.5})):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
            line = json.dumps({"timestamp": stamp, "level": "info", "event": event,
                               "job_id": str(job), "target": target, "method": "process",
                               "attempt": 1, "pid": 4242, **extra}) + "\n"
            lines.append((at, line))
            total += len(line)
        job -= 1
    lines.sort()
    chunks: list[list[str]] = [[]]
    written = 0
    for _, line in lines:
        if written + len(line) > size and chunks[-1]:
            chunks.append([])
            written = 0
        chunks[-1].append(line)
        written += len(line)
    names = ["background_jobs.log"] + [f"background_jobs.log.{k}" for k in range(1, len(chunks))]
    for name, chunk in zip(names, reversed(chunks), strict=True):  # the newest in the main file
        (log_dir / name).write_text("".join(chunk))
    return job + 1


def check_events(folder: Path, url: str, oldest_logged: int, n: int) -> None:
    """The benchmark's job pages must really find events (or the numbers mean nothing)."""
    import httpx

    from bgrunner.context import Context
    from bgrunner.dashboard.app import create_app

    ctx = Context(str(folder / "allowed_jobs.toml"), str(folder / "logs"), url, autostart=False)
    app = create_app(ctx, token=TOKEN)

    async def get(path: str) -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            return (await client.get(path)).text

    for job_id in (oldest_logged + 10, (oldest_logged + n) // 2, n):
        html = asyncio.run(get(f"/jobs/{job_id}"))
        assert "<code>job_completed</code>" in html, f"no events found for job {job_id}"


async def measure(app, paths: list[str], runs: int) -> list[float]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for path in paths[:3]:  # warm up
            assert (await client.get(path)).status_code == 200, path
        times = []
        for i in range(runs):
            path = paths[i % len(paths)]
            t0 = time.perf_counter()
            r = await client.get(path)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, (path, r.status_code)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", help="build (or reuse) the store in this folder")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bgrunner-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "jobs.db"
    url = f"sqlite:///{db}"
    (folder / "allowed_jobs.toml").write_text(ALLOWLIST)
    marker = folder / "oldest_logged_job"
    if not db.exists():
        t0 = time.perf_counter()
        fill_store(url, str(db), args.jobs)
        marker.write_text(str(fill_logs(folder / "logs", args.jobs)))
        print(f"built {args.jobs:,} jobs and 60 MB of logs in {time.perf_counter() - t0:.1f} s"
              f" ({folder})")
    oldest_logged = int(marker.read_text())
    check_events(folder, url, oldest_logged, args.jobs)

    from bgrunner.context import Context
    from bgrunner.dashboard.app import create_app

    ctx = Context(str(folder / "allowed_jobs.toml"), str(folder / "logs"), url, autostart=False)
    app = create_app(ctx, token=TOKEN)
    rng = random.Random(11)
    n = args.jobs
    cases = {
        "list, first page": ["/jobs"],
        "list, deep page (before_id near the bottom)": [f"/jobs?before_id={rng.randrange(60, 2000)}"
                                                        for _ in range(50)],
        "list, failed only, deep page": [f"/jobs?status=failed&before_id={rng.randrange(1000, 20000)}"
                                         for _ in range(50)],
        "job page, recent job (its events in the logs)": [
            f"/jobs/{rng.randrange(oldest_logged, n + 1)}" for _ in range(50)],
        "job page, any job (most rotated out of the logs)": [
            f"/jobs/{rng.randrange(1, n + 1)}" for _ in range(50)],
        "API list, first page": ["/api/jobs"],
        "API list, deep page": [f"/api/jobs?before_id={rng.randrange(60, 2000)}" for _ in range(50)],
        "(info) overview: counts of all jobs, cached": ["/"],
        "(info) list, text search: a LIKE scan": ["/jobs?q=user-99999"],
    }
    print(f"\n{n:,} jobs, {args.runs} requests per row, server side (in-process ASGI)\n")
    print(f"{'page':48} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    worst = 0.0
    for name, paths in cases.items():
        runs = args.runs if not name.startswith("(info)") else max(10, args.runs // 10)
        times = sorted(asyncio.run(measure(app, paths, runs)))
        p95 = times[max(0, int(len(times) * 0.95) - 1)]
        if not name.startswith(("API", "(info)")):
            worst = max(worst, p95)
        print(f"{name:48} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")
    print(f"\ngoal: p95 <= 100 ms for the list and job pages; worst p95: {worst:.1f} ms")
    print("(info) rows are not part of the goal: a text search cannot use an index, and the")
    print("overview's counts are shared by every viewer and refreshed at most once a second.")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
