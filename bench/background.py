"""The background path, side by side in one run:

    python bench/background.py [--submits 2000] [--samples 30] [--jobs 2000]

- run_background_job() p50/p99: record only (autostart off), and with a direct launch;
- submit → job method start p50/p99: direct launch (autostart) vs an idle worker;
- throughput of N no-op jobs with `bgrunner worker --burst --concurrency 2`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, median, ms, pct, sandbox

sys.path.insert(0, str(ROOT))


def use(env: dict[str, str], autostart: bool) -> None:
    for k in [k for k in os.environ if k.startswith("BGRUNNER_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("BGRUNNER_")})
    import bgrunner.api as api

    api.configure(autostart=autostart)


def submit_latency(n: int) -> list[float]:
    from bgrunner import run_background_job

    env = sandbox()
    use(env, autostart=False)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        run_background_job("bench.jobs:Bench", "noop")
        out.append(time.perf_counter() - t)
    return out


def start_latency(samples: int, via_worker: bool) -> tuple[list[float], list[float]]:
    """(submit call times, submit → method start) for jobs submitted ~0.5 s apart."""
    from bgrunner import run_background_job, wait_for

    env = sandbox(cap=64)
    tmp = Path(env["BENCH_TMP"])
    worker = None
    if via_worker:
        worker = subprocess.Popen([sys.executable, "-m", "bgrunner", "worker", "--concurrency", "2"],
                                  cwd=ROOT, env=env)
        time.sleep(1.0)
    use(env, autostart=not via_worker)
    calls, starts = [], []
    try:
        for i in range(samples):
            stamp = tmp / f"stamp-{i}"
            t0 = time.time()
            p0 = time.perf_counter()
            job_id = run_background_job("bench.jobs:Bench", "stamp", [str(stamp)])
            calls.append(time.perf_counter() - p0)
            wait_for(job_id, timeout=30)
            starts.append(float(stamp.read_text()) - t0)
            time.sleep(0.3 + (i % 5) * 0.1)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait()
    return calls, starts


def throughput(n: int) -> float:
    env = sandbox(cap=2)
    use(env, autostart=False)
    from bgrunner.api import context
    from bgrunner.jobs import prepare, submit

    ctx = context()
    for _ in range(n):
        submit(ctx, prepare(ctx, "bench.jobs:Bench", "noop", []))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bgrunner", "worker", "--burst", "--concurrency", "2"],
                   cwd=ROOT, env=env, check=True)
    elapsed = time.perf_counter() - t
    counts = ctx.store.counts()
    assert counts["completed"] == n, counts
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()

    rec = submit_latency(args.submits)
    d_calls, d_start = start_latency(args.samples, via_worker=False)
    w_calls, w_start = start_latency(args.samples, via_worker=True)
    rate = throughput(args.jobs)

    print(f"{'row':52} {'p50':>11} {'p99':>11}")
    print(f"{'run_background_job(), record only (autostart off)':52} {ms(median(rec))} {ms(pct(rec, 99))}")
    print(f"{'run_background_job(), direct launch (autostart)':52} {ms(median(d_calls))} {ms(pct(d_calls, 99))}")
    print(f"{'run_background_job(), idle worker notified':52} {ms(median(w_calls))} {ms(pct(w_calls, 99))}")
    print(f"{'submit -> method start, direct launch':52} {ms(median(d_start))} {ms(pct(d_start, 99))}")
    print(f"{'submit -> method start, idle worker (spawn)':52} {ms(median(w_start))} {ms(pct(w_start, 99))}")
    print(f"\nthroughput, {args.jobs} no-op jobs, worker --burst --concurrency 2: {rate:7.1f} jobs/s")


if __name__ == "__main__":
    main()
