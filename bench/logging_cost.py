"""What job logging costs, side by side in one run: a job that never logs vs one that logs once.

    python bench/logging_cost.py [--runs 20] [--jobs 150] [--rounds 3]

- spawn path: `python run_job.py` of a no-op job vs a job whose module imports
  structlog at the top and whose method calls bgrunner.get_logger() once and
  writes one line (median wall time, interleaved runs);
- fork mode: throughput of `bgrunner worker --burst --concurrency 2` over N such
  jobs (the worker's start included; the median of R rounds, rows interleaved),
  without and with `[runner] preload_jobs` (the template then imports the
  job modules, structlog with the logging one). The preloaded rows also show what
  a never-logging job pays when *another* allow-listed module brings structlog
  (and with it logging and threading, whose at-fork handlers run in every fork)
  into the template.

Each row gets its own sandbox (allowlist, SQLite store, logs). Compiled bytecode
is kept in the sandbox (PYTHONPYCACHEPREFIX), so no row pays for compiling.
Prints each row and the ratios between them; on a busy machine read the ratios.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, median, ms, sandbox

sys.path.insert(0, str(ROOT))

QUIET = '''
class Quiet:
    def noop(self) -> None:
        """Never logs: the runner's own events only."""
'''

LOUD = '''
import structlog  # at the top, as a job module that logs usually does

import bgrunner


class Loud:
    def once(self) -> None:
        """One line through bgrunner.get_logger()."""
        bgrunner.get_logger().info("email_sent", to="a@b.c")
'''

ALLOWLIST = """
[defaults]
max_attempts = 1
retry_delay = 0

[runner]
max_concurrent = 2
import_root = "{root}"
preload_jobs = {preload}

{jobs}
"""

QUIET_ENTRY = '[jobs."benchquiet:Quiet"]\nmethods = ["noop"]\n'
LOUD_ENTRY = '[jobs."benchloud:Loud"]\nmethods = ["once"]\n'
TARGETS = {"quiet": ("benchquiet:Quiet", "noop"), "loud": ("benchloud:Loud", "once")}


def project(preload: bool, entries: str) -> dict[str, str]:
    """A sandbox whose allowlist lists ``entries``; the job modules in its own folder."""
    env = sandbox()
    tmp = Path(env["BENCH_TMP"])
    code = tmp / "code"
    code.mkdir()
    (code / "benchquiet.py").write_text(QUIET)
    (code / "benchloud.py").write_text(LOUD)
    (tmp / "allowed_jobs.toml").write_text(ALLOWLIST.format(
        root=code, preload=str(preload).lower(), jobs=entries))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def run_job(env: dict[str, str], kind: str) -> float:
    target, method = TARGETS[kind]
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_job.py"), target, method], env=env, cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def throughput(kind: str, preload: bool, entries: str, n: int) -> tuple[float, bool]:
    """Jobs per second of a burst worker over ``n`` jobs; and whether its jobs' lines were written."""
    env = project(preload, entries)
    env["BGRUNNER_AUTOSTART"] = "0"
    from bgrunner.context import Context
    from bgrunner.jobs import prepare, submit

    ctx = Context.resolve(env["BGRUNNER_CONFIG"], env["BGRUNNER_LOG_DIR"], env["BGRUNNER_DATABASE_URL"])
    ctx.autostart = False
    target, method = TARGETS[kind]
    for _ in range(n):
        submit(ctx, prepare(ctx, target, method, []))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bgrunner", "worker", "--burst", "--concurrency", "2"],
                   cwd=ROOT, env=env, check=True)
    elapsed = time.perf_counter() - t
    counts = ctx.store.counts()
    assert counts.get("completed") == n, counts
    log = Path(env["BGRUNNER_LOG_DIR"]) / "background_jobs.log"
    lines = log.read_text().count('"event": "email_sent"')
    assert lines == (n if kind == "loud" else 0), lines
    return n / elapsed, lines > 0


def structlog_import_ms(env: dict[str, str]) -> float:
    """Cumulative `python -X importtime -c 'import structlog'` (median of 5)."""
    out = []
    for _ in range(5):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import structlog"], env=env,
                           capture_output=True, text=True, check=True)
        last = [line for line in r.stderr.splitlines() if re.search(r"\|\s*structlog$", line)][-1]
        out.append(int(last.split("|")[1]) / 1000)
    return median(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    spawn_env = project(False, QUIET_ENTRY + LOUD_ENTRY)
    for kind in TARGETS:  # warm the page cache and the sandbox's bytecode
        run_job(spawn_env, kind)
    spawn: dict[str, list[float]] = {kind: [] for kind in TARGETS}
    for _ in range(args.runs):  # interleaved, so machine noise hits both alike
        for kind in TARGETS:
            spawn[kind].append(run_job(spawn_env, kind))

    both = QUIET_ENTRY + LOUD_ENTRY
    rows = [
        ("fork, never logs", "quiet", False, both),
        ("fork, logs once (imports structlog per job)", "loud", False, both),
        ("fork + preload, never logs, no structlog in template", "quiet", True, QUIET_ENTRY),
        ("fork + preload, never logs, structlog in template", "quiet", True, both),
        ("fork + preload, logs once (structlog in template)", "loud", True, both),
    ]
    runs: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for _ in range(args.rounds):  # the rows interleaved, round by round: noise hits them alike
        for name, kind, preload, entries in rows:
            runs[name].append(throughput(kind, preload, entries, args.jobs)[0])
    rates = {name: median(values) for name, values in runs.items()}

    quiet, loud = median(spawn["quiet"]), median(spawn["loud"])
    print(f"structlog import here: {structlog_import_ms(spawn_env):.1f} ms (-X importtime, cumulative)\n")
    print(f"{'spawn path: python run_job.py':56} {'median':>11}   ({args.runs} runs each)")
    print(f"{'  never logs':56} {ms(quiet)}")
    extra = (loud - quiet) * 1000
    print(f"{'  get_logger() once, one line':56} {ms(loud)}   {loud / quiet:5.2f}x  (+{extra:.1f} ms)")
    print(f"\n{'fork mode: worker --burst --concurrency 2':56} {'jobs/s':>11}   "
          f"({args.jobs} jobs, median of {args.rounds} rounds)")
    base = rates[rows[0][0]]
    for name, *_ in rows:
        print(f"{'  ' + name:56} {rates[name]:11.1f}   {rates[name] / base:5.2f}x of the first")
    r = [rates[name] for name, *_ in rows]
    print("\nratios (throughput; below 1: slower)")
    print(f"  logs once / never logs, no preload:                       {r[1] / r[0]:5.2f}")
    print(f"  logs once / never logs, preload (structlog in template):  {r[4] / r[3]:5.2f}")
    print(f"  never logs: structlog in template / not:                  {r[3] / r[2]:5.2f}")
    print(f"  logs once: preload / no preload:                          {r[4] / r[1]:5.2f}")


if __name__ == "__main__":
    main()
