"""``job.limits``: the tree read from a made-up ``/proc``, the sums, when a limit is past, and how it is recorded.

The real processes (both launch modes, a child that allocates, retries) are in
``tests/e2e/test_resource_limits.py``; here every reader is a stand-in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from bgrunner.allowlist import Policy
from bgrunner.context import Context
from bgrunner.job import limits
from bgrunner.job.limits import MB, Limits, ProcTree, Usage, Watchdog
from bgrunner.settle import Fail, Retry, decide

ROOT = 100
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def stat(ppid: int, *, cpu: float = 0.0, children_cpu: float = 0.0, rss_mb: float = 0.0,
         state: bytes = b"S") -> list[bytes]:
    """``/proc/PID/stat`` fields after the command name, as ``limits._read_stat`` returns them."""
    fields = [state, str(ppid).encode()] + [b"0"] * 40
    fields[limits._UTIME] = str(round(cpu * TICK)).encode()
    fields[limits._CUTIME] = str(round(children_cpu * TICK)).encode()
    fields[limits._RSS] = str(round(rss_mb * MB / PAGE)).encode()
    return fields


class FakeProc:
    """A ``/proc`` to read: pid -> stat fields; ``last`` is the newest pid created."""

    def __init__(self, table: dict[int, list[bytes]]) -> None:
        self.table = dict(table)
        self.last = 1
        self.reads: list[int] = []
        self.listings = 0

    def spawn(self, pid: int, fields: list[bytes]) -> None:
        self.table[pid] = fields
        self.last += 1

    def tree(self) -> ProcTree:
        def read(pid: int) -> list[bytes] | None:
            self.reads.append(pid)
            return self.table.get(pid)

        def listing() -> set[int]:
            self.listings += 1
            return set(self.table)

        return ProcTree(ROOT, read_stat=read, list_pids=listing, last_pid=lambda: str(self.last).encode())


def host() -> FakeProc:
    """init (1), the worker (50) above the supervisor (ROOT), and an unrelated process (60)."""
    return FakeProc({1: stat(0), 50: stat(1), ROOT: stat(50, rss_mb=40, cpu=9), 60: stat(1, rss_mb=500)})


def test_the_tree_is_every_process_below_the_root_and_not_the_root() -> None:
    """Children, grandchildren and a re-parented orphan count; the root, its ancestors and others do not."""
    proc = host()
    proc.table.update({101: stat(ROOT, rss_mb=20, cpu=1.0), 102: stat(101, rss_mb=30, cpu=0.5),
                       103: stat(102, rss_mb=10), 104: stat(ROOT, rss_mb=5), 61: stat(60, rss_mb=700)})
    usage = proc.tree().sample()
    assert usage.processes == 4
    assert usage.rss_bytes == pytest.approx(65 * MB, abs=4 * PAGE)
    assert usage.cpu_s == pytest.approx(1.5, abs=0.05)


def test_cpu_of_exited_children_counts_through_cutime_and_zombies() -> None:
    """A child waited for counts in its parent's cutime; one not yet waited for (a zombie) in itself."""
    proc = host()
    proc.table.update({101: stat(ROOT, cpu=0.5, children_cpu=2.0),
                       102: stat(101, cpu=1.0, state=b"Z")})
    assert proc.tree().sample().cpu_s == pytest.approx(3.5, abs=0.05)


def test_later_samples_read_only_the_tree_until_a_process_is_created() -> None:
    """After the first sample, processes outside the tree are not read again, and /proc is not listed
    while the newest pid stays the same."""
    proc = host()
    proc.table[101] = stat(ROOT, rss_mb=1)
    tree = proc.tree()
    tree.sample()
    assert proc.listings == 1 and 60 in tree.foreign
    proc.reads.clear()
    tree.sample()
    assert proc.reads == [101] and proc.listings == 1
    proc.spawn(102, stat(101, rss_mb=300))  # the attempt forks: the newest pid moves
    proc.spawn(70, stat(60))  # and so does an unrelated process
    proc.reads.clear()
    usage = tree.sample()
    assert proc.listings == 2 and sorted(proc.reads) == [70, 101, 102]
    assert usage.processes == 2 and usage.rss_bytes >= 301 * MB - 2 * PAGE
    proc.reads.clear()
    tree.sample()
    assert sorted(proc.reads) == [101, 102]


def test_proc_is_listed_now_and_then_even_if_the_newest_pid_seems_not_to_move() -> None:
    """A lagging /proc/loadavg (lxcfs) delays finding a new child by RELIST_EVERY samples at most."""
    proc = host()
    tree = proc.tree()
    tree.sample()
    proc.table[101] = stat(ROOT, rss_mb=300)  # created, but the newest pid reads the same
    seen = [tree.sample().processes for _ in range(limits.RELIST_EVERY)]
    assert seen[:-1] == [0] * (limits.RELIST_EVERY - 1) and seen[-1] == 1
    assert proc.listings == 2


def test_a_process_whose_parent_vanished_mid_sample_is_read_again() -> None:
    """Ancestry that cannot be told (the parent exited between the listing and the read) is decided
    later, once the orphan has been re-parented, never marked foreign."""
    proc = host()
    proc.table[102] = stat(101, rss_mb=200)  # 101 is gone: 102 not yet re-parented
    tree = proc.tree()
    assert tree.sample().processes == 0
    assert 102 in tree.pending and 102 not in tree.foreign
    proc.table[102] = stat(ROOT, rss_mb=200)  # re-parented to the subreaper
    usage = tree.sample()
    assert usage.processes == 1 and usage.rss_bytes >= 199 * MB


def test_a_pid_gone_from_proc_is_forgotten_as_foreign() -> None:
    """A foreign pid that leaves /proc is dropped, so its reuse by a child of the tree is read afresh."""
    proc = host()
    tree = proc.tree()
    tree.sample()
    assert 60 in tree.foreign
    del proc.table[60]
    proc.spawn(1000, stat(1))
    tree.sample()
    assert 60 not in tree.foreign
    proc.spawn(60, stat(ROOT, rss_mb=50))
    assert tree.sample().processes == 1


class StubTree:
    def __init__(self, *usages: Usage) -> None:
        self.usages = list(usages)
        self.samples = 0

    def sample(self) -> Usage:
        self.samples += 1
        return self.usages.pop(0) if len(self.usages) > 1 else self.usages[0]


def test_watchdog_samples_at_its_interval_and_reports_memory() -> None:
    now = [0.0]
    tree = StubTree(Usage(10 * MB, 0.0, 1), Usage(312 * MB, 0.1, 2))
    dog = Watchdog(Limits(memory_mb=100), ROOT, grace=5, interval=0.05, clock=lambda: now[0], tree=tree)
    assert dog.wait() == 0 and dog.check() is None
    assert dog.wait() == pytest.approx(0.05)
    now[0] = 0.01
    assert dog.check() is None and tree.samples == 1  # not due
    now[0] = 0.05
    exceeded = dog.check()
    assert exceeded is not None and exceeded.kind == "memory" and exceeded.grace == 0
    assert exceeded.error == ("memory limit exceeded: 312 MB used, limit 100 MB (memory_limit_mb); "
                              "its process tree was killed")


def test_an_excess_seen_once_is_confirmed_by_a_second_sample() -> None:
    """A single high read (a child counted twice as it was reaped) does not kill the tree."""
    tree = StubTree(Usage(0, 1.6, 2), Usage(0, 0.9, 1))
    dog = Watchdog(Limits(cpu_s=1), ROOT, grace=5, clock=lambda: 0.0, tree=tree)
    assert dog.check() is None and tree.samples == 2


def test_cpu_limit_message_and_grace() -> None:
    dog = Watchdog(Limits(cpu_s=1.5), ROOT, grace=3, clock=lambda: 0.0, tree=StubTree(Usage(0, 1.734, 1)))
    exceeded = dog.check()
    assert exceeded is not None and exceeded.kind == "cpu" and exceeded.grace == 3
    assert exceeded.error.startswith("CPU limit exceeded: 1.73 s used, limit 1.5 s (cpu_limit_s)")


def test_under_both_limits_nothing_happens() -> None:
    dog = Watchdog(Limits(memory_mb=100, cpu_s=1), ROOT, grace=1, clock=lambda: 0.0,
                   tree=StubTree(Usage(100 * MB, 1.0, 3)))
    assert dog.check() is None


@pytest.mark.parametrize("name, exceeded", [
    ("JobMemoryLimit", limits.memory_exceeded(Limits(memory_mb=1), 2 * MB)),
    ("bgrunner.JobMemoryLimit", limits.memory_exceeded(Limits(memory_mb=1), 2 * MB)),
    ("bgrunner.errors.JobMemoryLimit", limits.memory_exceeded(Limits(memory_mb=1), 2 * MB)),
    ("JobCpuLimit", limits.cpu_exceeded(Limits(cpu_s=1), 2.0, 1)),
])
def test_retry_on_matches_the_limit_by_name(name: str, exceeded: limits.Exceeded) -> None:
    """``retry_on = {JobMemoryLimit = 2}`` gives a second attempt; the other limit's name does not."""
    outcome = exceeded.outcome()
    assert outcome.kind == "error" and outcome.error == exceeded.error and outcome.traceback is None
    policy = Policy(max_attempts=1, retry_delay=0, retry_on={name: 2})
    assert isinstance(decide(policy, 1, outcome), Retry)
    assert isinstance(decide(policy, 2, outcome), Fail)
    other = "JobCpuLimit" if "Memory" in name else "JobMemoryLimit"
    assert isinstance(decide(Policy(max_attempts=1, retry_on={other: 3}), 1, outcome), Fail)


def test_limits_of_a_policy() -> None:
    assert Limits.of(Policy()) is None
    assert Limits.of(Policy(memory_limit_mb=64)) == Limits(memory_mb=64)
    assert Limits.of(Policy(cpu_limit_s=2.5)) == Limits(cpu_s=2.5)


@pytest.mark.parametrize("cpu, backstop", [(1, 2), (0.2, 2), (4, 5), (10, 13), (100, 125)])
def test_the_rlimit_backstop_is_past_the_limit(cpu: float, backstop: int) -> None:
    assert limits.cpu_backstop(cpu) == backstop


def test_death_at_the_backstop_is_the_cpu_limit() -> None:
    """Killed by the kernel at RLIMIT_CPU: JobCpuLimit; killed earlier or otherwise: not."""
    killed = signal.SIGKILL  # a raw wait status for "killed by signal N" is N
    lim = Limits(cpu_s=1)
    hit = limits.backstop_hit(lim, killed, 2.0, 1)
    assert hit is not None and hit.kind == "cpu" and "2.00 s used, limit 1 s" in hit.error
    assert limits.backstop_hit(lim, killed, 0.3, 1) is None
    assert limits.backstop_hit(lim, 0, 5.0, 1) is None  # exited 0
    assert limits.backstop_hit(Limits(memory_mb=10), killed, 5.0, 1) is None
    dog = Watchdog(lim, ROOT, grace=1, clock=lambda: 0.0, tree=StubTree(Usage(0, 0.0, 0)))
    assert dog.at_exit(killed, SimpleNamespace(ru_utime=1.5, ru_stime=0.6)) is not None
    assert dog.at_exit(None, None) is None


def test_a_limited_job_never_runs_inline(ctx: Context) -> None:
    """A limit is enforced from outside the attempt's tree, so a fork-mode job with one gets an
    attempt process, as one with a timeout does."""
    from bgrunner.job.supervisor import Supervisor
    from bgrunner.model import NewJob

    store = ctx.store
    job = store.get(store.create(NewJob(target="tests.fixtures:Probe", method="noop", params=[])))
    assert job is not None
    spec = ctx.config.check(job.target, job.method)
    for policy, inline in [(spec.policy, True), (replace(spec.policy, memory_limit_mb=50), False),
                           (replace(spec.policy, cpu_limit_s=1.0), False)]:
        sup = Supervisor(ctx, replace(spec, policy=policy), object, job, [], {}, foreground=False, inline=True)
        assert sup.inline is inline


def test_a_job_without_limits_imports_nothing_for_them(tmp_path: Path) -> None:
    """The job path (run_job.py's modules and the supervisor) does not import job.limits or psutil."""
    code = ("import sys, bgrunner.job.main, bgrunner.job.supervisor, bgrunner.job.attempt; "
            "print('bgrunner.job.limits' in sys.modules, 'psutil' in sys.modules, 'resource' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "False"]
