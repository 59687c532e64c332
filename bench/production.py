"""Production features priced side by side in one run: schedules, queues and per-target limits.

    python bench/production.py [--seconds 15] [--claims 2000] [--pending 100000] [--jobs 600]
                               [--pg-url postgresql://postgres@127.0.0.1:5432/test]

(a) Schedule lateness: an ``every = 1`` schedule served by one worker, then by three
    (fresh store each), for ``--seconds`` each. Fire lateness = the run's ``created_at``
    minus its ``scheduled_for`` (the occurrence); start lateness = its ``claimed_at``
    minus ``scheduled_for``. p50 / p99.
(b) Claim cost: ``--pending`` pending jobs spread over 20 queues and 50 targets, every
    target with a ``max_running`` too high to bind. ``--claims`` claim_next + finish with
    ``queues=[3 of them]`` and ``limits=config.limits()`` against the plain claim (no
    queues, no limits), on the same store, interleaved in blocks so none gets the
    warmer cache (queues alone and limits alone too, to tell the two costs apart);
    SQLite, and PostgreSQL when it answers (ANALYZEd after the bulk load, as autovacuum
    would). Goal: limited ÷ plain throughput >= 0.8.
(c) Worker throughput: ``--jobs`` no-op jobs through ``bgrunner worker --burst
    --concurrency 2`` with limits configured that never bind (``max_running``, then
    ``max_running`` and ``rate_limit``, on the job's target and 49 others) against none;
    from the first claim to the last finish (as bench/compare.py), two runs each,
    alternated; the better of each. Goal: limited ÷ none >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common import ROOT, pct, sandbox

sys.path.insert(0, str(ROOT))

TARGETS = 50
QUEUES = 20
#: The job module of the 49 extra targets (importable, in case a worker preloads them).
EXTRA_MODULE = "".join(f"class T{i}:\n    def noop(self) -> None:\n        pass\n\n\n" for i in range(TARGETS))


def write_config(env: dict[str, str], *, cap: int, limits: str = "", schedule: bool = False) -> None:
    """The sandbox's allowlist: bench.jobs:Bench and 49 more targets, each with the (non-binding)
    ``limits``: "" none, "max_running", or "max_running+rate_limit"."""
    tmp = Path(env["BENCH_TMP"])
    (tmp / "benchprod.py").write_text(EXTRA_MODULE)
    env["PYTHONPATH"] = f"{tmp}{os.pathsep}{ROOT}"
    limit = "max_running = 100000\n" if limits else ""
    if "rate_limit" in limits:
        limit += 'rate_limit = "100000/s"\n'
    text = ("[defaults]\nmax_attempts = 1\nretry_delay = 0\n\n"
            f"[runner]\nmax_concurrent = {cap}\n\n"
            f'[jobs."bench.jobs:Bench"]\nmethods = ["noop", "stamp"]\n{limit}\n')
    for i in range(1, TARGETS):
        text += f'[jobs."benchprod:T{i}"]\nmethods = ["noop"]\n{limit}\n'
    if schedule:
        text += '[schedules.tick]\ntarget = "bench.jobs:Bench"\nmethod = "noop"\nevery = 1\n'
    Path(env["BGRUNNER_CONFIG"]).write_text(text)


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", *args], cwd=ROOT,
                            env={**env, "BGRUNNER_AUTOSTART": "0"}, stdout=subprocess.DEVNULL)


def open_store(url: str) -> Any:
    from bgrunner.store.factory import open_store as opener

    return opener(url)


# -- (a) schedule lateness ----------------------------------------------------------------------
def lateness(workers: int, seconds: float) -> tuple[list[float], list[float]]:
    """(fire lateness, start lateness) of the runs of an every = 1 schedule served by ``workers``."""
    env = sandbox(cap=8)
    write_config(env, cap=8, schedule=True)
    store = open_store(env["BGRUNNER_DATABASE_URL"])
    store.counts()  # the schema exists before the workers race to create it
    procs = [start_worker(env, "--concurrency", "2") for _ in range(workers)]
    try:
        time.sleep(seconds)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    runs = [j for j in store.list(limit=100000) if j.schedule == "tick"]
    store.close()
    per = {j.scheduled_for for j in runs}
    assert len(per) == len(runs), "an occurrence fired twice"
    fire = [j.created_at - j.scheduled_for for j in runs]
    start = [j.claimed_at - j.scheduled_for for j in runs if j.claimed_at is not None]
    return fire, start


# -- (b) claim cost --------------------------------------------------------------------------------
def bulk_pending(store: Any, url: str, n: int) -> None:
    """``n`` pending no-op jobs over QUEUES queues and TARGETS targets, in one INSERT … SELECT."""
    from bgrunner.model import NewJob

    template = store.create(NewJob(target="bench.jobs:Bench", method="noop", params=[], max_attempts=1,
                                   retry_delay=0, run_at=time.time() - 60))
    target = (f"CASE WHEN n.i % {TARGETS} = 0 THEN 'bench.jobs:Bench'"
              f" ELSE 'benchprod:T' || CAST(n.i % {TARGETS} AS TEXT) END")
    overrides = {"target": target, "queue": f"'q' || CAST(n.i % {QUEUES} AS TEXT)", "priority": "n.i % 3"}
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60)
        cols = [d[0] for d in conn.execute("SELECT * FROM jobs LIMIT 0").description if d[0] != "id"]
        picks = ", ".join(overrides.get(c, f"t.{c}") for c in cols)
        with conn:
            conn.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})"
                         f" INSERT INTO jobs ({', '.join(cols)}) SELECT {picks} FROM n, jobs t WHERE t.id = ?",
                         (template,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (template,))
        conn.close()
        return
    import psycopg

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        cur = conn.execute("SELECT * FROM jobs LIMIT 0")
        cols = [d.name for d in cur.description if d.name != "id"]
        picks = ", ".join(overrides.get(c, f"t.{c}") for c in cols).replace("%", "%%")  # psycopg's escape
        conn.execute(f"INSERT INTO jobs ({', '.join(cols)}) SELECT {picks}"
                     f" FROM generate_series(1, {n}) AS n(i), jobs t WHERE t.id = %s", (template,))
        conn.execute("DELETE FROM jobs WHERE id = %s", (template,))
        conn.execute("ANALYZE jobs")


def claim_cost(url: str, claims: int, pending: int) -> dict[str, Any]:
    """Claims + finishes per second, limited (3 queues, 50 limits) vs plain, on one store."""
    from bgrunner.allowlist import load_config
    from bgrunner.model import JobStatus

    env = sandbox(cap=0)
    write_config(env, cap=100000, limits="max_running")
    config = load_config(env["BGRUNNER_CONFIG"])
    limits = config.limits()
    assert len(limits) == TARGETS, limits
    store = open_store(url)
    t = time.perf_counter()
    bulk_pending(store, url, pending)
    loaded = time.perf_counter() - t
    cap = config.runner.cap
    queues = ["q0", "q7", "q13"]

    variants = {"plain": (None, ()), "3 queues": (queues, ()), "limits": (None, limits),
                "3 queues + limits": (queues, limits)}

    def run(n: int, variant: str) -> float:
        only, lims = variants[variant]
        t0 = time.perf_counter()
        for _ in range(n):
            job = store.claim_next(now=time.time(), cap=cap, host="bench", worker="bench:1", queues=only,
                                   limits=lims)
            assert job is not None and (only is None or job.queue in only)
            store.finish(job.id, job.attempts, status=JobStatus.COMPLETED, now=time.time())
        return time.perf_counter() - t0

    for name in variants:  # warm-up, every path
        run(25, name)
    block = max(1, claims // 8)
    spent = dict.fromkeys(variants, 0.0)
    order = list(variants)
    for i in range(8):  # interleaved, the order turned each round: no variant gets the warmer cache
        for name in order[i % len(order):] + order[:i % len(order)]:
            spent[name] += run(block, name)
    store.close()
    return {**{name: block * 8 / spent[name] for name in variants}, "load_s": loaded}


def pg_url(base: str) -> str | None:
    """A fresh schema on the PostgreSQL server, or None when it does not answer."""
    try:
        import psycopg

        with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception:  # not installed, not running: the PostgreSQL rows are left out
        return None
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema=bench_{uuid.uuid4().hex[:8]}"


def drop_schema(url: str) -> None:
    import psycopg

    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("schema=", 1)[1]}" CASCADE')


# -- (c) worker throughput ---------------------------------------------------------------------------
def worker_throughput(n: int, limits: str) -> float:
    from bgrunner.model import NewJob

    env = sandbox(cap=2)
    write_config(env, cap=2, limits=limits)
    store = open_store(env["BGRUNNER_DATABASE_URL"])
    for _ in range(n):
        store.create(NewJob(target="bench.jobs:Bench", method="noop", params=[], max_attempts=1, retry_delay=0))
    subprocess.run([sys.executable, "-m", "bgrunner", "worker", "--burst", "--concurrency", "2"], cwd=ROOT,
                   env={**env, "BGRUNNER_AUTOSTART": "0"}, check=True, stdout=subprocess.DEVNULL)
    jobs = store.list(limit=n + 10)
    store.close()
    assert len(jobs) == n and all(j.status == "completed" for j in jobs), "every job completed"
    first = min(j.claimed_at for j in jobs)
    last = max(j.finished_at for j in jobs)
    return n / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--pg-url", default=os.environ.get("BGRUNNER_TEST_PG_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--parts", default="abc", help="which sections to run: a, b, c (default all)")
    args = parser.parse_args()
    began = time.monotonic()
    load0 = os.getloadavg()

    late = {w: lateness(w, args.seconds) for w in (1, 3)} if "a" in args.parts else {}
    costs = ({"sqlite": claim_cost(f"sqlite:///{Path(sandbox()['BENCH_TMP']) / 'claims.db'}",
                                   args.claims, args.pending)} if "b" in args.parts else {})
    pg = pg_url(args.pg_url) if "b" in args.parts else None
    if pg is not None:
        try:
            costs["postgresql"] = claim_cost(pg, args.claims, args.pending)
        finally:
            drop_schema(pg)
    kinds = ("", "max_running", "max_running+rate_limit")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for kind in kinds + kinds[::-1] if "c" in args.parts else ():  # alternated: load drift hits each alike
        rates[kind].append(worker_throughput(args.jobs, kind))

    print(f"bench/production.py: Python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
          f" {os.cpu_count()} CPUs; load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f};"
          f" {time.monotonic() - began:.0f} s in all\n")
    if late:
        print_lateness(late, args.seconds)
    if costs:
        print_costs(costs, args, pg)
    if "c" in args.parts:
        print_throughput(rates, args.jobs)


def print_lateness(late: dict[int, tuple[list[float], list[float]]], seconds: float) -> None:
    print(f"(a) schedule lateness, every = 1, {seconds:.0f} s each (ms)")
    print(f"{'':36} {'1 worker':>10} {'3 workers':>10} {'3 ÷ 1':>7}")
    for label, k, p in (("fire (created_at - occurrence) p50", 0, 50), ("fire p99", 0, 99),
                        ("start (claimed_at - occurrence) p50", 1, 50), ("start p99", 1, 99)):
        one, three = (pct(late[w][k], p) * 1000 for w in (1, 3))
        print(f"{label:36} {one:10.2f} {three:10.2f} {three / one if one else float('nan'):7.2f}")
    print(f"{'runs fired':36} {len(late[1][0]):10d} {len(late[3][0]):10d}")


def print_costs(costs: dict[str, dict[str, Any]], args: argparse.Namespace, pg: str | None) -> None:
    print(f"\n(b) claim_next + finish, {args.pending:,} pending over {QUEUES} queues and {TARGETS} targets"
          f" (max_running on all), {args.claims:,} claims each (claims/s)")
    print(f"{'store':12} {'plain':>9} {'3 queues':>9} {'limits':>9} {'3 queues + limits':>18}"
          f" {'both ÷ plain':>13} {'goal':>6} {'bulk load':>10}")
    for name, c in costs.items():
        ratio = c["3 queues + limits"] / c["plain"]
        print(f"{name:12} {c['plain']:9.1f} {c['3 queues']:9.1f} {c['limits']:9.1f} {c['3 queues + limits']:18.1f}"
              f" {ratio:13.2f} {'>=0.8':>6} {c['load_s']:9.1f}s  {'ok' if ratio >= 0.8 else 'BELOW GOAL'}")
    if pg is None:
        print(f"{'postgresql':12} not reachable at {args.pg_url}: left out")


def print_throughput(rates: dict[str, list[float]], jobs: int) -> None:
    best = {k: max(v) for k, v in rates.items()}
    print(f"\n(c) {jobs} no-op jobs, bgrunner worker --burst --concurrency 2, SQLite, limits on all 50"
          " targets that never bind (jobs/s, the better of two runs)")
    print(f"{'no limits':>12} {'max_running':>12} {'+ rate_limit':>13} {'max ÷ none':>11} {'+rate ÷ none':>13}"
          f" {'goal':>6}")
    r1, r2 = best["max_running"] / best[""], best["max_running+rate_limit"] / best[""]
    verdict = "ok" if min(r1, r2) >= 0.9 else "BELOW GOAL"
    print(f"{best['']:12.1f} {best['max_running']:12.1f} {best['max_running+rate_limit']:13.1f} {r1:11.2f}"
          f" {r2:13.2f} {'>=0.9':>6}  {verdict}")
    print("    runs: " + "; ".join(f"{k or 'none'} {', '.join(f'{r:.1f}' for r in v)}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
