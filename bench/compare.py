"""bgrunner (fork and spawn launch modes) against RQ and Huey, in one run:

    python bench/compare.py [--quick] [--out bench/RESULTS.md]

Rows (each bounded in time; ``--quick`` uses smaller counts):

- submit p50/p99: N calls that record a no-op job, no worker running;
- idle submit -> job method start p50/p99: jobs 0.3-0.7 s apart to an idle worker;
- throughput of N no-op jobs, 2 workers / concurrency 2, first claim to last finish;
- bgrunner (fork mode) throughput with 100,000 jobs pending vs 1,000;
- worker RSS, and the USS of each job's processes while a job runs;
- the fork server's launch round trip and the spawn launch call it replaces.

Systems: bgrunner fork (``bgrunner worker`` with ``[runner] launch = "fork"``),
bgrunner spawn (``launch = "spawn"``), RQ's forking ``Worker`` and ``SimpleWorker`` (Redis
127.0.0.1:6379, a dedicated db that is flushed), Huey (``SqliteHuey``,
``huey_consumer -w 2 -k process``). Writes the table, machine and versions to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from bench.common import median, pct  # noqa: E402
from bench.memory import group_uss  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
TARGET = "bench.compare_jobs:CompareJobs"
FORK, SPAWN, RQ, RQS, HUEY = "bgrunner fork", "bgrunner spawn", "RQ Worker", "RQ SimpleWorker", "Huey"
FLOOR = "fork floor"  # bench/fork_floor.py: a fork per job with nothing of bgrunner's path
SYSTEMS = [FORK, SPAWN, RQ, RQS, HUEY, FLOOR]
FREED = "memory freed when a running job ends (MB)"

ALLOWLIST = """
[defaults]
max_attempts = 1
retry_delay = 0
timeout = {timeout}

[runner]
max_concurrent = {cap}
launch = "{launch}"
worker_idle_exit = 600

[jobs."bench.compare_jobs:CompareJobs"]
methods = ["noop", "stamp", "sleep"]
"""

results: dict[str, dict[str, str]] = {}
_tmp_dirs: list[Path] = []
notes: list[str] = []
_children: list[subprocess.Popen[bytes]] = []


def mkdtemp(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _tmp_dirs.append(path)
    return path


def record(row: str, system: str, value: float | None, fmt: str = "{:.2f}") -> None:
    results.setdefault(row, {})[system] = "-" if value is None else fmt.format(value)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------
def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_exit(procs: list[subprocess.Popen[bytes]], budget: float,
              done: Callable[[], bool] | None = None) -> bool:
    """Wait for the processes to exit (or ``done()``); False if the budget ran out."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs) or (done is not None and done()):
            return True
        time.sleep(0.05)
    return False


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for descendants, so far.

    Around a run whose worker exits (and reaps its own children) the difference is the CPU
    the whole worker tree spent: a steadier figure than jobs/s on a host that steals time.
    """
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def record_cpu(system: str, cpu: float, count: int) -> None:
    record("CPU per job, whole worker tree (ms)", system, cpu / count * 1000 if count else None)


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def uss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_full_info().uss / 2**20


def read_stamp(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)
    return path.read_text()


# -- the three systems ------------------------------------------------------------------
class Bgrunner:
    def __init__(self, launch: str) -> None:
        self.launch = launch
        self.name = FORK if launch == "fork" else SPAWN

    def sandbox(self, cap: int, timeout: float = 0) -> dict[str, str]:
        tmp = mkdtemp(prefix=f"bench-bgrunner-{self.launch}-")
        (tmp / "allowed_jobs.toml").write_text(ALLOWLIST.format(cap=cap, launch=self.launch,
                                                                timeout=timeout))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BGRUNNER_")}
        env.update({"BGRUNNER_CONFIG": str(tmp / "allowed_jobs.toml"),
                    "BGRUNNER_LOG_DIR": str(tmp / "logs"),
                    "BGRUNNER_DATABASE_URL": f"sqlite:///{tmp / 'jobs.db'}",
                    "PYTHONPATH": str(ROOT), "BENCH_TMP": str(tmp)})
        self.env, self.tmp, self.db = env, tmp, tmp / "jobs.db"
        return env

    def use(self) -> Any:
        """Point this process's bgrunner at the sandbox; nothing is auto-started."""
        for k in [k for k in os.environ if k.startswith("BGRUNNER_")]:
            del os.environ[k]
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("BGRUNNER_")})
        import bgrunner.api as api

        return api.configure(autostart=False)

    def worker(self, concurrency: int = 2, burst: bool = False) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "bgrunner", "worker"]
        cmd += ["--concurrency", str(concurrency)] + (["--burst"] if burst else [])
        return start(cmd, self.env)

    def submit(self, method: str, *params: Any) -> None:
        from bgrunner import run_background_job

        run_background_job(TARGET, method, list(params))

    def bulk_pending(self, n: int) -> None:
        """N pending no-op jobs: one real submit, copied in SQL (100,000 submits take minutes)."""
        from bgrunner import jobs

        ctx = self.use()
        first = jobs.submit(ctx, jobs.prepare(ctx, TARGET, "noop", []))
        ctx.store.close()
        conn = sqlite3.connect(self.db)
        try:
            cols = ", ".join(r[1] for r in conn.execute("PRAGMA table_info(jobs)") if r[1] != "id")
            conn.execute(f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                         f"WHERE x < ?) INSERT INTO jobs ({cols}) SELECT {cols} FROM jobs, c "
                         f"WHERE jobs.id = ?", (n - 1, first))
            conn.commit()
        finally:
            conn.close()

    def finished(self) -> tuple[int, float, float]:
        """(completed jobs, first claim, last finish)."""
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            count, first, last = conn.execute(
                "SELECT count(*), min(claimed_at), max(finished_at) FROM jobs "
                "WHERE status = 'completed'").fetchone()
        finally:
            conn.close()
        return count, first or 0.0, last or 0.0


class RQSide:
    def __init__(self, worker_class: str, name: str) -> None:
        from redis import Redis
        from rq import Queue

        self.worker_class, self.name = worker_class, name
        self.redis = Redis.from_url(REDIS_URL)
        self.queue = Queue("bench", connection=self.redis)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def reset(self) -> None:
        self.redis.flushdb()  # only the benchmark's own db (BENCH_REDIS_URL)

    def worker(self, burst: bool = False) -> subprocess.Popen[bytes]:
        cmd = [str(BIN / "rq"), "worker", "-u", REDIS_URL, "-w", self.worker_class, "-q",
               "--results-ttl", "600"] + (["--burst"] if burst else []) + ["bench"]
        return start(cmd, self.env)

    def submit(self, func: str, *params: Any) -> Any:
        from bench import compare_jobs

        return self.queue.enqueue(getattr(compare_jobs, func), *params)

    def finished(self, ids: list[str]) -> tuple[int, float, float]:
        from rq.job import Job, JobStatus

        done = []
        for i in range(0, len(ids), 500):
            done += [j for j in Job.fetch_many(ids[i:i + 500], connection=self.redis)
                     if j is not None and j.get_status() == JobStatus.FINISHED]
        if not done:
            return 0, 0.0, 0.0
        return (len(done), min(j.started_at.timestamp() for j in done),
                max(j.ended_at.timestamp() for j in done))


class HueySide:
    name = HUEY

    def __init__(self) -> None:
        self.tmp = mkdtemp(prefix="bench-huey-")
        self.events = self.tmp / "events.log"
        os.environ["BENCH_HUEY_DB"] = str(self.tmp / "huey.db")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_HUEY_EVENTS": str(self.events)}
        from bench import compare_huey

        self.app = compare_huey

    def reset(self) -> None:
        self.app.huey.flush()
        self.events.unlink(missing_ok=True)

    def worker(self) -> subprocess.Popen[bytes]:
        return start([str(BIN / "huey_consumer"), "bench.compare_huey.huey", "-w", "2",
                      "-k", "process", "-q"], self.env)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop(proc, signal.SIGINT)  # huey's graceful signal

    def submit(self, task: str, *params: Any) -> Any:
        return getattr(self.app, task)(*params)

    def finished(self) -> tuple[int, float, float]:
        if not self.events.exists():
            return 0, 0.0, 0.0
        starts, ends = [], []
        for line in self.events.read_text().splitlines():
            kind, _, when = line.partition(" ")
            (starts if kind == "start" else ends).append(float(when))
        return len(ends), min(starts, default=0.0), max(ends, default=0.0)


# -- rows -----------------------------------------------------------------------------------
def timed(n: int, call: Callable[[], Any]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def record_latency(row: str, system: str, values: list[float]) -> None:
    record(f"{row} p50 (ms)", system, median(values) * 1000)
    record(f"{row} p99 (ms)", system, pct(values, 99) * 1000)


def row_submit(n: int, fork: Bgrunner, spawn: Bgrunner, rq: RQSide, rqs: RQSide,
               huey: HueySide) -> None:
    say(f"submit x{n}")
    fork.sandbox(cap=64)
    fork.use()
    values = timed(n, lambda: fork.submit("noop"))
    record_latency("submit", FORK, values)
    record_latency("submit", SPAWN, values)  # the same call: the launch mode plays no part
    rq.reset()
    values = timed(n, lambda: rq.submit("rq_noop"))
    record_latency("submit", RQ, values)
    record_latency("submit", RQS, values)
    rq.reset()
    huey.reset()
    record_latency("submit", HUEY, timed(n, lambda: huey.submit("noop")))
    huey.reset()


def sample_starts(samples: int, tmp: Path, submit: Callable[[str], Any]) -> list[float]:
    """Submit a stamp job every 0.3-0.7 s to an idle worker: submit -> method start."""
    read_stamp_warm = tmp / "warm"
    submit(str(read_stamp_warm))  # the worker is up and warm before the first sample
    read_stamp(read_stamp_warm, timeout=60)
    out = []
    for i in range(samples):
        time.sleep(0.3 + (i % 5) * 0.1)
        path = tmp / f"stamp-{i}"
        t0 = time.time()
        submit(str(path))
        out.append(float(read_stamp(path)) - t0)
    return out


def job_memory(tmp: Path, submit: Callable[[str], Any]) -> tuple[int, float]:
    """Run a sleeping job; (pid running its code, its USS in MB)."""
    path = tmp / "sleeper"
    submit(str(path))
    pid = int(read_stamp(path))
    time.sleep(0.5)
    return pid, uss_mb(pid)


def row_latency_bgrunner(side: Bgrunner, samples: int) -> None:
    import psutil

    say(f"{side.name}: submit -> start x{samples}")
    side.sandbox(cap=64)
    side.use()
    worker = side.worker()
    try:
        starts = sample_starts(samples, side.tmp, lambda p: side.submit("stamp", p))
        record_latency("idle submit -> method start", side.name, starts)
        record("worker RSS (MB)", side.name, rss_mb(worker.pid))
        template = [p for p in psutil.Process(worker.pid).children()
                    if "forkserver" in " ".join(p.cmdline())]
        if template:
            record("fork template RSS (MB)", side.name, rss_mb(template[0].pid))
            spares = template[0].children()
            record("idle spare job process USS (MB, each)", side.name,
                   sum(uss_mb(p.pid) for p in spares) / len(spares) if spares else None)
        method_pid, method_uss = job_memory(side.tmp, lambda p: side.submit("sleep", 2, p))
        parent = psutil.Process(method_pid).ppid()
        if template and parent == template[0].pid:  # inline: the job process runs the method
            record("job process USS (MB)", side.name, method_uss)
            record(FREED, side.name, group_uss([method_pid]) / 2**20)
        else:
            record("job process USS (MB)", side.name, uss_mb(parent))
            record("attempt process USS (MB)", side.name, method_uss)
            record(FREED, side.name, group_uss([parent, method_pid]) / 2**20)
        time.sleep(2)
    finally:
        stop(worker)


def row_latency_rq(side: RQSide, samples: int) -> None:
    say(f"{side.name}: submit -> start x{samples}")
    side.reset()
    tmp = mkdtemp(prefix="bench-rq-")
    workers = [side.worker(), side.worker()]
    try:
        starts = sample_starts(samples, tmp, lambda p: side.submit("rq_stamp", p))
        record_latency("idle submit -> method start", side.name, starts)
        record("worker RSS (MB)", side.name, rss_mb(workers[0].pid))
        pid, uss = job_memory(tmp, lambda p: side.submit("rq_sleep", 2, p))
        if pid not in (w.pid for w in workers):  # the forking Worker's work horse
            record("job process USS (MB)", side.name, uss)
            record(FREED, side.name, group_uss([pid]) / 2**20)
        time.sleep(2)
    finally:
        for w in workers:
            stop(w)
        side.reset()


def row_latency_huey(side: HueySide, samples: int) -> None:
    import psutil

    say(f"Huey: submit -> start x{samples}")
    side.reset()
    consumer = side.worker()
    try:
        starts = sample_starts(samples, side.tmp, lambda p: side.submit("stamp", p))
        record_latency("idle submit -> method start", HUEY, starts)
        procs = [psutil.Process(consumer.pid), *psutil.Process(consumer.pid).children()]
        record("worker RSS (MB)", HUEY, sum(rss_mb(p.pid) for p in procs))
        notes.append(f"Huey worker RSS: the consumer plus its {len(procs) - 1} child processes "
                     f"({', '.join(f'{rss_mb(p.pid):.1f}' for p in procs)} MB).")
    finally:
        side.stop(consumer)
        side.reset()


def row_throughput_bgrunner(side: Bgrunner, n: int, budget: float, timeout: float = 0) -> None:
    say(f"{side.name}: throughput x{n} (budget {budget:.0f} s, timeout {timeout})")
    side.sandbox(cap=2, timeout=timeout)
    side.bulk_pending(n)
    cpu = children_cpu()
    worker = side.worker(concurrency=2, burst=True)
    if not wait_exit([worker], budget):
        stop(worker)
    cpu = children_cpu() - cpu
    count, first, last = side.finished()
    if not timeout:
        record_cpu(side.name, cpu, count)
    rate = count / (last - first) if count and last > first else None
    row = "throughput, 2 workers (jobs/s)" if not timeout else \
        "throughput, jobs with a timeout (jobs/s)"
    record(row, side.name, rate, "{:.1f}")
    if count < n:
        notes.append(f"{side.name} throughput: {count} of {n} jobs in the {budget:.0f} s budget.")


def row_floor(n: int) -> None:
    """bench/fork_floor.py's figures: what a fork per job costs here with no bgrunner code."""
    import json

    say(f"{FLOOR}: throughput x{n}")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "fork_floor.py"), "--jobs", str(n)],
                         check=True, capture_output=True, text=True).stdout
    figures = json.loads(out)
    record("throughput, 2 workers (jobs/s)", FLOOR, figures["jobs_per_s"], "{:.1f}")
    record("CPU per job, whole worker tree (ms)", FLOOR, figures["cpu_ms_per_job"])


def row_throughput_rq(side: RQSide, n: int, budget: float) -> None:
    say(f"{side.name}: throughput x{n}")
    side.reset()
    ids = [side.submit("rq_noop").id for _ in range(n)]
    cpu = children_cpu()
    workers = [side.worker(burst=True), side.worker(burst=True)]
    if not wait_exit(workers, budget):
        for w in workers:
            stop(w)
    cpu = children_cpu() - cpu
    count, first, last = side.finished(ids)
    record_cpu(side.name, cpu, count)
    rate = count / (last - first) if count and last > first else None
    record("throughput, 2 workers (jobs/s)", side.name, rate, "{:.1f}")
    if count < n:
        notes.append(f"{side.name} throughput: {count} of {n} jobs in the {budget:.0f} s budget.")
    side.reset()


def row_throughput_huey(side: HueySide, n: int, budget: float) -> None:
    say(f"Huey: throughput x{n}")
    side.reset()
    for _ in range(n):
        side.submit("noop")
    cpu = children_cpu()
    consumer = side.worker()
    wait_exit([consumer], budget, done=lambda: side.finished()[0] >= n)
    side.stop(consumer)
    cpu = children_cpu() - cpu
    count, first, last = side.finished()
    record_cpu(HUEY, cpu, count)
    rate = count / (last - first) if count and last > first else None
    record("throughput, 2 workers (jobs/s)", HUEY, rate, "{:.1f}")
    side.reset()


def row_pending(side: Bgrunner, pending: int, measured: int, budget: float) -> float | None:
    """Throughput of the first ``measured`` jobs with ``pending`` jobs in the store."""
    say(f"{side.name}: throughput with {pending} pending")
    side.sandbox(cap=2)
    side.bulk_pending(pending)
    worker = side.worker(concurrency=2, burst=pending <= measured)
    wait_exit([worker], budget, done=lambda: side.finished()[0] >= measured)
    stop(worker)
    count, first, last = side.finished()
    return count / (last - first) if count and last > first else None


def row_launch(samples: int) -> None:
    """The fork server's launch (hand, record the pid, go), and the spawn mode's Popen."""
    from bgrunner import jobs
    from bgrunner.context import host_id
    from bgrunner.job.command import job_command
    from bgrunner.jobs import launch_forked
    from bgrunner.launch import spawn as launcher
    from bgrunner.launch.forkserver import ForkServer

    say(f"launch round trip x{samples}")
    side = Bgrunner("fork")
    side.sandbox(cap=64)
    ctx = side.use()
    fork_rt, spawn_rt = [], []
    with ForkServer(ctx) as server:
        for _ in range(samples):
            jobs.submit(ctx, jobs.prepare(ctx, TARGET, "noop", []))
            job = ctx.store.claim_next(now=time.time(), cap=64, host=host_id())
            time.sleep(0.05)  # a spare is waiting, as on an idle worker
            t = time.perf_counter()
            proc = launch_forked(ctx, server, job)
            fork_rt.append(time.perf_counter() - t)
            assert proc is not None
            while proc.pid not in dict(server.exits()):
                time.sleep(0.005)
    for _ in range(max(10, samples // 5)):
        jobs.submit(ctx, jobs.prepare(ctx, TARGET, "noop", []))
        job = ctx.store.claim_next(now=time.time(), cap=64, host=host_id())
        t = time.perf_counter()
        proc = launcher.spawn(job_command(job.target, job.method, job.id),
                              env=ctx.child_env(), output_dir=ctx.output_dir, job_id=job.id)
        spawn_rt.append(time.perf_counter() - t)
        proc.wait()
    record_latency("launch call in the worker", FORK, fork_rt)
    record_latency("launch call in the worker", SPAWN, spawn_rt)
    ctx.store.close()


# -- report ---------------------------------------------------------------------------------
LOAD: list[str] = []


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> list[str]:
    import huey
    import psutil
    import redis
    import rq

    import bgrunner

    try:
        server = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    except Exception as exc:  # noqa: BLE001
        server = f"unreachable ({exc})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = psutil.virtual_memory().total / 2**30
    return [
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM",
        f"load average (1, 5, 15 min) at start: {LOAD[0]}; at end: {load_average()} "
        "(other processes share the machine: a busy host widens p99s)",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        f"bgrunner {bgrunner.__version__}, "
        f"rq {rq.__version__}, huey {huey.__version__}, redis-py {redis.__version__}, "
        f"Redis server {server}, psutil {psutil.__version__}",
    ]


def ratio(row: str, system: str) -> str:
    try:
        return f"{float(results[row][system]) / float(results[row][FORK]):.2f}"
    except (KeyError, ValueError, ZeroDivisionError):
        return "-"


def table() -> list[str]:
    others = [s for s in SYSTEMS if s != FORK]
    head = ["row", *SYSTEMS, *(f"{s} ÷ fork" for s in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, values in results.items():
        cells = [row, *(values.get(s, "-") for s in SYSTEMS), *(ratio(row, s) for s in others)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(path: Path, args: argparse.Namespace, elapsed: float) -> None:
    text = [
        "# bgrunner against RQ and Huey", "",
        f"`python bench/compare.py{' --quick' if args.quick else ''}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s in all.", "",
        *(f"- {line}" for line in versions()), "",
        f"Counts: {args.submits} submits, {args.samples} start-latency samples, "
        f"{args.jobs} jobs for throughput, {args.pending:,} vs {args.measured:,} pending "
        f"({args.measured} jobs measured each).", "",
        *table(), "",
        "Ratios are the other system's figure divided by bgrunner fork's: above 1 means a "
        "longer time, more memory or a higher throughput than bgrunner fork.", "",
        "How each row is measured:", "",
        "- submit: `run_background_job()` (autostart off, so it records and notifies), "
        "`Queue.enqueue()`, a Huey task call; no worker running. The launch mode plays no "
        "part in a submit, so both bgrunner columns show the same run.",
        "- idle submit -> method start: the job writes `time.time()` as its method starts; "
        "the submit is timed before the call. A warm-up job runs first; samples 0.3-0.7 s apart.",
        "- throughput: N no-op jobs queued first, then 2 workers (bgrunner `--concurrency 2`, "
        "two `rq worker --burst`, `huey_consumer -w 2 -k process`); from the first claim "
        "(bgrunner `claimed_at`, RQ `started_at`, Huey's executing signal) to the last finish.",
        "- pending rows: the same no-op jobs, fork mode, with 1,000 or 100,000 jobs in the "
        "store; the rate of the first jobs run.",
        "- bgrunner and RQ's Worker start a process (or two) per job; RQ's SimpleWorker and "
        "Huey run every job inside a long-lived worker process. That is most of the gap on "
        "no-op jobs, and also why a crashing or leaking job takes their worker with it.",
        "- memory: worker RSS while idle; USS of the processes of one running job (bgrunner "
        "spawn: the job process that supervises and the attempt process that runs the method; "
        "bgrunner fork: the one job process; "
        "RQ Worker: the work horse; SimpleWorker and Huey run jobs inside the worker). "
        "A process's USS leaves out the pages it still shares with the process it was forked "
        "from, so the job process and its attempt each look small; the 'memory freed' row "
        "counts the physical pages mapped by the job's processes and by no other process "
        "(bench/memory.py: /proc/PID/pagemap and /proc/kpagecount).",
        "- CPU per job: user + system time of the worker's whole process tree (getrusage "
        "RUSAGE_CHILDREN around the throughput run, the worker's start-up included) divided "
        "by the jobs run. Time the host steals is not in it, so it holds better than jobs/s "
        "on a shared machine. Huey's figure includes its consumer's idle polling.",
        "- throughput with a timeout: the same, with `timeout = 60` for every job. A job with "
        "a timeout keeps the attempt process (the deadline is enforced from outside the "
        "method's process); without one, fork mode runs the method in the job process.",
        "- fork floor (`bench/fork_floor.py`): a parent with the template's imports (same heap, "
        "frozen) claims each job with one SQLite UPDATE and forks a child, two at a time; the "
        "child opens its own connection, writes the job's start and end (an UPDATE each), "
        "appends two log lines and `os._exit`s. No allowlist, job module, params, hand-over "
        "or exit report: the kernel's price of a process per job plus the store's writes, "
        "the most any fork-per-job runner on this interpreter can do here.",
        "- idle spare: a job process the fork server forked ahead, waiting for a job.",
        "- launch call: `jobs.launch_forked()` (hand the job to a waiting process, record "
        "its pid, go: two round trips to the template) vs `launch.spawn.spawn()` (`Popen` of "
        "`python run_job.py`), as the worker pays them.", "",
        *(f"- {n}" for n in notes),
    ]
    path.write_text("\n".join(text).rstrip() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description="bgrunner against RQ and Huey")
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    args = parser.parse_args()
    args.submits, args.samples, args.jobs = (300, 20, 300) if args.quick else (2000, 50, 2000)
    args.pending, args.measured = (20_000, 300) if args.quick else (100_000, 1000)
    budget = 120.0 if args.quick else 240.0
    # Timings must not include compiling bytecode in every new process.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    for folder in ("bgrunner", "bench", "examples"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)
    began = time.monotonic()
    LOAD.append(load_average())
    fork, spawn, huey = Bgrunner("fork"), Bgrunner("spawn"), HueySide()
    rq, rqs = RQSide("rq.Worker", RQ), RQSide("rq.SimpleWorker", RQS)
    try:
        row_submit(args.submits, fork, spawn, rq, rqs, huey)
        for b in (fork, spawn):
            row_latency_bgrunner(b, args.samples)
        for r in (rq, rqs):
            row_latency_rq(r, args.samples)
        row_latency_huey(huey, args.samples)
        for b in (fork, spawn):
            row_throughput_bgrunner(b, args.jobs, budget)
        row_floor(args.jobs)
        for b in (fork, spawn):
            row_throughput_bgrunner(b, args.jobs // 2, budget, timeout=60)
        for r in (rq, rqs):
            row_throughput_rq(r, args.jobs, budget)
        row_throughput_huey(huey, args.jobs, budget)
        few = row_pending(fork, args.measured, args.measured, budget)
        many = row_pending(fork, args.pending, args.measured, budget)
        record(f"fork throughput, {args.measured:,} pending (jobs/s)", FORK, few, "{:.1f}")
        record(f"fork throughput, {args.pending:,} pending (jobs/s)", FORK, many, "{:.1f}")
        if few and many:
            notes.append(f"With {args.pending:,} jobs pending the fork worker's throughput is "
                         f"{(1 - many / few) * 100:+.0f} % lower than with {args.measured:,} "
                         "(negative: higher; the goal is at most 10 % lower).")
        row_launch(30 if args.quick else 100)
    finally:
        for proc in _children:
            stop(proc, signal.SIGKILL, wait=5)
        if not args.keep:
            for path in _tmp_dirs:
                shutil.rmtree(path, ignore_errors=True)
    write_results(Path(args.out), args, time.monotonic() - began)
    print("\n".join(table()))
    for n in notes:
        print(f"- {n}")
    print(f"\n(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
