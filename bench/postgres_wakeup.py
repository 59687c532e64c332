"""Idle submit → claim by a worker in another process, on PostgreSQL (LISTEN/NOTIFY) and SQLite.

    python bench/postgres_wakeup.py [--samples 50] [--pg-url postgresql://postgres@127.0.0.1:5432/test]

The worker sleeps in select(); a submit's NOTIFY (PostgreSQL) or datagram (SQLite)
wakes it. The figure is the job's claimed_at minus its created_at, p50/p99.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

from common import ROOT, median, ms, pct, sandbox

sys.path.insert(0, str(ROOT))


def measure(url: str, samples: int) -> list[float]:
    env = sandbox(cap=8)
    env["BGRUNNER_DATABASE_URL"] = url
    env["BGRUNNER_AUTOSTART"] = "0"
    os.environ.update({k: v for k, v in env.items() if k.startswith("BGRUNNER_")})
    import bgrunner.api as api

    ctx = api.configure(autostart=False)
    ctx.store.counts()  # create the schema before the worker starts
    worker = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "2"],
                              cwd=ROOT, env=env)
    from bgrunner.jobs import prepare, submit

    out = []
    try:
        time.sleep(1.5)
        for i in range(samples):
            job_id = submit(ctx, prepare(ctx, "bench.jobs:Bench", "noop", []))
            deadline = time.time() + 10
            while time.time() < deadline:
                job = ctx.store.get(job_id)
                if job.claimed_at is not None:
                    break
                time.sleep(0.002)
            out.append(job.claimed_at - job.created_at)
            time.sleep(0.3 + (i % 5) * 0.1)
    finally:
        worker.terminate()
        worker.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--pg-url", default=os.environ.get("BGRUNNER_TEST_PG_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    sep = "&" if "?" in args.pg_url else "?"
    pg = f"{args.pg_url}{sep}schema=bench_{uuid.uuid4().hex[:8]}"
    rows = [("postgresql (LISTEN/NOTIFY)", measure(pg, args.samples))]
    tmp = sandbox()
    rows.append(("sqlite (datagram wake-up)", measure(tmp["BGRUNNER_DATABASE_URL"], args.samples)))
    print(f"{'idle submit -> claim in the worker':40} {'p50':>11} {'p99':>11}")
    for name, values in rows:
        print(f"{name:40} {ms(median(values))} {ms(pct(values, 99))}")
    import psycopg

    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{pg.rsplit("schema=", 1)[1]}" CASCADE')


if __name__ == "__main__":
    main()
