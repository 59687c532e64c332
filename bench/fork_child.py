"""Where a fork-mode job process spends its time, step by step, with its page faults:

    python bench/fork_child.py [--runs 60]

A warm template (``forktemplate.Template.warm_up``, as the worker starts it) forks
job processes that take the steps of ``job.forked.run`` and ``job.main.run_queued``
one by one, each timed (``perf_counter``) and counted in minor page faults
(``getrusage``). Two columns side by side in one run:

- *forked on demand*: the clock starts before ``fork()``;
- *forked ahead* (a spare): the process got ready first; the clock starts when the
  job is handed over.

Then a baseline from the same template, in the same run: a *floor* child that
only opens its own SQLite connection, writes the start and the end of the job
(one UPDATE each, autocommit), appends two log lines and leaves with
``os._exit`` — the least any job process with a store and a log must do.

Most of the cost is not Python but the kernel: a fork copies the template's page
tables, and every page a child writes first (a reference count is a write) is a
copy-on-write fault, ~5 µs each on this VM. py-spy and pyinstrument cannot see
that; the fault column does. The no-op job's own call is not included.
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = "bench.compare_jobs:CompareJobs"
ALLOWLIST = """
[defaults]
max_attempts = 1

[runner]
max_concurrent = 10000

[jobs."bench.compare_jobs:CompareJobs"]
methods = ["noop"]
"""


def child_steps(template: Any, job_id: int, ready_first: bool, go_fd: int, out_fd: int,
                t0: float) -> None:
    """In the forked process: take the job path's steps, then report them on ``out_fd``.

    ``t0``: the parent's clock just before ``fork()`` (the same monotonic clock).
    """
    from bgrunner.job.forked import get_ready, redirect_output, set_title
    from bgrunner.launch.forkserver import changed

    marks: list[tuple[str, float, int]] = []
    start = t0

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter() - start,
                      resource.getrusage(resource.RUSAGE_SELF).ru_minflt))

    mark("fork, until the child runs Python")
    os.setsid()
    template._leave_template()
    from bgrunner.context import Context

    ctx = Context.resolve()
    if ready_first:
        get_ready(ctx, template.config_cache)
        os.read(go_fd, 1)  # the job is handed over: the clock starts again
        marks.clear()
        start = time.perf_counter()
        mark("job handed over")
    else:
        mark("leave the template")
        get_ready(ctx, template.config_cache)
        mark("get ready (store, log, subreaper)")
    redirect_output(ctx.output_dir, job_id)
    set_title(f"bgrunner job {job_id}")
    mark("output file, title")
    changed(template.code_files)
    ctx.adopt_config(*template.config_cache)
    mark("code and allowlist unchanged?")
    job = ctx.store.get(job_id)
    mark("read the job")
    spec = ctx.config.check(job.target, job.method)
    from bgrunner import procs
    from bgrunner.binding.loader import load_class, signature_callable
    from bgrunner.binding.params import bind_params

    procs.start_time(os.getpid())
    mark("allowlist check")
    cls = load_class(spec)
    mark("import the job module")
    bind_params(signature_callable(cls, job.method), job.params)
    mark("bind params")
    log = ctx.log.bind(job_id=str(job_id), target=job.target, method=job.method)
    log.emit("job_started", attempt=1)
    mark("log job_started (method starts here)")
    ctx.store.finish(job_id, job.attempts, status="completed", now=time.time())
    log.emit("job_completed", attempt=1)
    mark("record the end, log it")
    os.write(out_fd, json.dumps(marks).encode())
    os._exit(0)


def run(template: Any, store: Any, job_ids: list[int], ready_first: bool) -> list[Any]:
    from bgrunner.context import host_id

    rows = []
    for job_id in job_ids:
        job = store.claim_next(now=time.time(), cap=10_000, host=host_id())
        assert job is not None and job.id == job_id
        out_r, out_w = os.pipe()
        go_r, go_w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(go_w)
            child_steps(template, job_id, ready_first, go_r, out_w, t0)
        os.close(out_w)
        os.close(go_r)
        if ready_first:
            time.sleep(0.03)  # it is ready and waiting, as a spare is
            t0 = time.perf_counter()
            os.write(go_w, b"g")
        data = b""
        while chunk := os.read(out_r, 65536):
            data += chunk
        os.close(out_r)
        os.close(go_w)
        os.waitpid(pid, 0)
        rows.append((json.loads(data), time.perf_counter() - t0))
        time.sleep(0.01)
    return rows


def floor_child(db: str, log_fd: int, job_id: int, out_fd: int, t0: float) -> None:
    """In the forked process: only the store writes and log lines a job needs, then report."""
    import sqlite3

    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    conn.execute("UPDATE jobs SET started_at = ? WHERE id = ?", (time.time(), job_id))
    os.write(log_fd, b'{"event": "job_started", "job_id": "%d"}\n' % job_id)
    conn.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (time.time(), job_id))
    os.write(log_fd, b'{"event": "job_completed", "job_id": "%d"}\n' % job_id)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    os.write(out_fd, json.dumps([time.perf_counter() - t0, faults]).encode())
    os._exit(0)


def run_floor(db: str, log_path: str, job_ids: list[int]) -> list[tuple[float, float, float]]:
    """Per child: (s until it has written its end, its faults, s until reaped)."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rows = []
    for job_id in job_ids:
        out_r, out_w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            floor_child(db, log_fd, job_id, out_w, t0)
        os.close(out_w)
        data = b""
        while chunk := os.read(out_r, 65536):
            data += chunk
        os.close(out_r)
        os.waitpid(pid, 0)
        rows.append((*json.loads(data), time.perf_counter() - t0))
        time.sleep(0.01)
    os.close(log_fd)
    return rows


def summarise_floor(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(median ms until the child has written its end, its faults, ms until reaped)."""
    import statistics

    rows = rows[len(rows) // 6:]  # the first runs warm the page cache
    return (statistics.median(r[0] for r in rows) * 1000, statistics.median(r[1] for r in rows),
            statistics.median(r[2] for r in rows) * 1000)


def summarise(rows: list[Any]) -> list[tuple[str, float, float]]:
    """(step, median ms spent in it, median faults taken in it)."""
    import statistics  # only now: it imports random, whose at-fork handler the template lacks

    rows = rows[len(rows) // 6:]  # the first runs warm the page cache
    names = [name for name, _, _ in rows[0][0]]
    out, prev_t, prev_f = [], 0.0, 0.0
    for k, name in enumerate(names):
        t = statistics.median(r[0][k][1] for r in rows) * 1000
        f = statistics.median(r[0][k][2] for r in rows)
        out.append((name, t - prev_t, f - prev_f))
        prev_t, prev_f = t, f
    out.append(("total to the end of the steps", prev_t, prev_f))
    out.append(("its exit, until the parent has reaped it",
                statistics.median(r[1] for r in rows) * 1000 - prev_t, 0.0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    for folder in ("bgrunner", "bench"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)
    # Set up without bench.compare or tempfile: they import threading and random, whose
    # at-fork handlers would then run in every child here but do not in the real template.
    folder = Path(f"/tmp/bench-fork-child-{os.getpid()}")
    folder.mkdir(mode=0o700)
    (folder / "allowed_jobs.toml").write_text(ALLOWLIST)
    os.environ.update({"BGRUNNER_CONFIG": str(folder / "allowed_jobs.toml"),
                       "BGRUNNER_LOG_DIR": str(folder / "logs"),
                       "BGRUNNER_DATABASE_URL": f"sqlite:///{folder / 'jobs.db'}"})
    from bgrunner import jobs
    from bgrunner.context import Context
    from bgrunner.launch.template import Template

    ctx = Context.resolve()
    # store.create, not jobs.submit: a submit's wake-up would import what the template has not
    ids = [ctx.store.create(jobs.prepare(ctx, TARGET, "noop", [])) for _ in range(3 * args.runs)]
    store = ctx.store
    a, b = socket.socketpair()
    e1, _e2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    template = Template(a, e1, 1)
    template.warm_up(False)
    gc.collect()
    gc.freeze()
    on_demand_rows = run(template, store, ids[:args.runs], ready_first=False)
    ahead_rows = run(template, store, ids[args.runs:2 * args.runs], ready_first=True)
    floor_rows = run_floor(str(folder / "jobs.db"), str(folder / "floor.log"), ids[2 * args.runs:])
    imported_before_summaries = set(sys.modules)
    on_demand, ahead, floor = summarise(on_demand_rows), summarise(ahead_rows), summarise_floor(floor_rows)
    print(f"{'step':42s} {'on demand ms':>12s} {'faults':>7s}   {'ahead ms':>9s} {'faults':>7s}")
    ahead_by_name = {name: (t, f) for name, t, f in ahead}
    for name, t, f in on_demand:
        at, af = ahead_by_name.get(name, (None, None))
        right = f"{at:9.3f} {af:7.0f}" if at is not None else f"{'-':>9s} {'-':>7s}"
        print(f"{name:42s} {t:12.3f} {f:7.0f}   {right}")
    total = next(t for name, t, _ in on_demand if name.startswith("total"))
    faults = next(f for name, _, f in on_demand if name.startswith("total"))
    print(f"\nfloor (same template: fork, own SQLite connection, 2 UPDATEs, 2 log lines, _exit):\n"
          f"{'  to its end':42s} {floor[0]:12.3f} {floor[1]:7.0f}   (bgrunner on demand: "
          f"{total / floor[0]:.1f}x the time, {faults / max(floor[1], 1):.1f}x the faults)\n"
          f"{'  its exit, until reaped':42s} {floor[2] - floor[0]:12.3f}")
    extra = [m for m in ("threading", "logging", "random") if m in imported_before_summaries]
    if extra:
        print(f"\nnote: this process imported {', '.join(extra)}, the template does not: "
              "their at-fork handlers made every child here dearer")
    store.close()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
