"""The job path: a no-op job through `python run_job.py` vs `python -c pass`, side by side.

    python bench/job_path.py [--runs 30]

Prints the median wall time of each (same interpreter, same venv, same run) and
the `python -X importtime` top 10 of run_job.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import ROOT, median, ms, sandbox


def timed(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


def importtime(env: dict[str, str]) -> list[tuple[int, str]]:
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "run_job.py"),
                        "bench.jobs:Bench", "noop"], env=env, cwd=ROOT, capture_output=True,
                       text=True)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            try:
                rows.append((int(cumulative), name.rstrip()))
            except ValueError:
                pass
    return sorted(rows, reverse=True)[:10]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    env = sandbox()
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import bgrunner.job.main'", [sys.executable, "-c", "import bgrunner.job.main"]),
        ("python run_job.py bench.jobs:Bench noop", [sys.executable, str(ROOT / "run_job.py"),
                                                     "bench.jobs:Bench", "noop"]),
    ]
    timed(rows[-1][1], env, 3)  # warm the page cache and .pyc files
    # Interleave the rows so machine noise hits them alike.
    results: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(args.runs):
        for name, cmd in rows:
            results[name] += timed(cmd, env, 1)
    base = median(results["python -c pass"])
    print(f"{'command':45} {'median':>11} {'vs pass':>9}   ({args.runs} runs each)")
    for name, _ in rows:
        m = median(results[name])
        print(f"{name:45} {ms(m)} {m / base:8.1f}x")
    print("\npython -X importtime run_job.py bench.jobs:Bench noop — top 10 (cumulative):")
    for us, name in importtime(env):
        print(f"  {us / 1000:7.2f} ms  {name.strip()}")


if __name__ == "__main__":
    main()
