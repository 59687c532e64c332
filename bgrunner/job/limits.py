"""An attempt's resource limits (``memory_limit_mb``, ``cpu_limit_s``), measured over its whole process tree.

**The mechanism: a sampling watchdog in the supervisor.** The supervisor
already waits for its attempt's process in a ``select`` loop (``supervisor._watch``);
with a limit set, that loop wakes every :data:`SAMPLE_INTERVAL` and sums, over
every live process below it (the attempt, its children, their children, and
orphans re-parented to the supervisor, which is a subreaper), the resident set
size and the CPU time (``utime + stime`` and ``cutime + cstime``: children that
have already exited and been waited for count too). Past a limit, the tree is
killed and the attempt fails as the exception ``JobMemoryLimit`` or
``JobCpuLimit`` (for ``retry_on``), with an error that names the limit and the
value measured. It works in both launch modes, on any kernel with ``/proc``,
for any user, and it catches memory allocated in C (a ``bytearray``, numpy),
because it reads what the kernel says the processes hold.

Why not the alternatives:

- **cgroup v2** (``memory.max``, ``cpu.stat``) would be exact and enforced by
  the kernel, but only where a delegated, writable cgroup with the memory and
  cpu controllers exists. Containers and unprivileged users usually have none
  (the container bgrunner was developed in has a v1 hierarchy and a v2 mount with
  no controllers), so the watchdog is needed anyway, and a second mechanism with
  other semantics (cgroup memory counts the page cache; a cgroup to create and
  remove per attempt) would make a limit mean different things on different hosts.
- **RLIMIT_AS** limits virtual memory, per process: thread arenas, mapped
  files and numpy's reserved pages count, so jobs using far less RSS than the
  limit fail, while a tree of children each get the whole limit again. It also
  surfaces as a ``MemoryError`` inside the job, which job code may catch.
  (``RLIMIT_RSS`` is not enforced by Linux at all.)
- **RLIMIT_CPU** is per process too, but it is kept as a *backstop*: the
  attempt's process (and each child) is killed by the kernel at
  :func:`cpu_backstop` seconds, above the limit, in case the supervisor stalls
  (a store write during an outage) and misses its samples.

**How the tree is found**: ``/proc/PID/task/*/children`` needs
``CONFIG_PROC_CHILDREN``, which not every kernel has; so the tree is read
from every process's parent pid (``/proc/PID/stat``). Only the first sample
reads every process on the host; a process found outside the tree stays
outside (re-parenting only goes to an ancestor), so later samples read only
the tree's own processes and the new ones, and list ``/proc`` only when the
newest pid (``/proc/loadavg``) has changed, or every :data:`RELIST_EVERY`
samples all the same (a ``/proc/loadavg`` virtualised by lxcfs may lag).
Measured here (91 processes on the host): the first sample 2 ms, then
0.03-0.04 ms a sample on average (0.13 ms for one that lists ``/proc``): under
0.3 % of a core at 20 samples a second. The same sums through psutil cost
1.6 ms a sample and 13-40 ms to import, so psutil is used only where there is
no ``/proc``.

**The kill**: past the memory limit, SIGKILL at once (every moment more may
take the host's memory, and its OOM killer picks its own victim); past the CPU
limit, SIGTERM and the runner's ``cancel_grace``, as on a timeout, so the job's
``finally`` blocks run. A limit seen past is read a second time before the
kill, so a race in one read (a child counted in itself and in the parent that
reaped it meanwhile) kills nothing.

**What it allows**: a limit is noticed within one interval (50 ms), so a tree
can overshoot by what it allocates in that time (a ``bytearray(300 MB)`` takes
less: the error then shows what was measured, e.g. 112 MB), or by the CPU it
burns across all its cores in it (plus the grace). RSS is summed per process,
so pages a forked attempt shares with its supervisor (the interpreter and
bgrunner: 16-18 MB measured, either launch mode) count too: leave that
headroom. For a hard cap enforced by the kernel, run the worker in a cgroup
(``systemd-run -p MemoryMax=``, ``docker --memory``).

A job with no limit pays nothing for any of this: the supervisor does not
import this module, starts no thread, and samples nothing.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bgrunner.errors import JobCpuLimit, JobMemoryLimit

if TYPE_CHECKING:
    from bgrunner.allowlist import Policy
    from bgrunner.settle import Outcome

#: Seconds between two samples of the attempt's tree.
SAMPLE_INTERVAL = 0.05
#: ``/proc`` is listed at least every so many samples, even when no new pid was seen.
RELIST_EVERY = 10
MB = 1024 * 1024


def _names(exc: type[BaseException]) -> tuple[str, ...]:
    """What the limit answers to in ``retry_on``: its name, as exported and as defined."""
    return (exc.__name__, f"bgrunner.{exc.__name__}", f"{exc.__module__}.{exc.__qualname__}")


MEMORY_NAMES = _names(JobMemoryLimit)
CPU_NAMES = _names(JobCpuLimit)


@dataclass(frozen=True)
class Limits:
    """The limits of one attempt; built only when the policy sets one (:meth:`of`)."""

    memory_mb: int | None = None
    cpu_s: float | None = None

    @classmethod
    def of(cls, policy: Policy) -> Limits | None:
        """The policy's limits, or None when it sets none (then nothing is measured)."""
        memory, cpu = policy.memory_limit_mb, policy.cpu_limit_s
        if memory is None and cpu is None:
            return None
        return cls(memory_mb=memory, cpu_s=cpu)


@dataclass(frozen=True)
class Usage:
    """What the attempt's tree holds now: resident bytes, CPU seconds, live processes."""

    rss_bytes: int
    cpu_s: float
    processes: int


@dataclass(frozen=True)
class Exceeded:
    """A limit the tree went past: how to kill it and how the attempt is recorded."""

    kind: str  # "memory" or "cpu"
    error: str
    names: tuple[str, ...]
    #: Seconds between SIGTERM and SIGKILL: none for memory (every moment more may take the host's
    #: memory), the cancel grace for CPU (the job's ``finally`` blocks run, as on a timeout).
    grace: float

    def outcome(self) -> Outcome:
        from bgrunner.settle import Outcome

        return Outcome.raised(self.error, None, self.names)


def memory_exceeded(limits: Limits, rss_bytes: int) -> Exceeded:
    used = math.ceil(rss_bytes / MB)
    return Exceeded("memory", f"memory limit exceeded: {used} MB used, limit {limits.memory_mb} MB "
                    "(memory_limit_mb); its process tree was killed", MEMORY_NAMES, 0.0)


def cpu_exceeded(limits: Limits, cpu_s: float, grace: float) -> Exceeded:
    return Exceeded("cpu", f"CPU limit exceeded: {cpu_s:.2f} s used, limit {_secs(limits.cpu_s or 0)} s "
                    "(cpu_limit_s); its process tree was killed", CPU_NAMES, grace)


def over(limits: Limits, usage: Usage, grace: float) -> Exceeded | None:
    """The limit ``usage`` is past (memory first), or None."""
    if limits.memory_mb is not None and usage.rss_bytes > limits.memory_mb * MB:
        return memory_exceeded(limits, usage.rss_bytes)
    if limits.cpu_s is not None and usage.cpu_s > limits.cpu_s:
        return cpu_exceeded(limits, usage.cpu_s, grace)
    return None


# -- the RLIMIT_CPU backstop ---------------------------------------------------------------
def cpu_backstop(cpu_s: float) -> int:
    """CPU seconds at which the kernel kills one process of the tree: well past the limit.

    Far enough above it that the watchdog (which sees the whole tree, and
    kills with a grace) is always first while it runs; RLIMIT_CPU counts whole
    seconds.
    """
    return math.ceil(cpu_s + max(1.0, cpu_s * 0.25))


def apply_cpu_backstop(cpu_s: float) -> None:
    """In the attempt's process: RLIMIT_CPU (soft = hard, so the kernel sends SIGKILL: no core file).

    Children inherit it, each with its own count. Never raised above a hard limit already set.
    """
    import resource

    seconds = cpu_backstop(cpu_s)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        seconds = min(seconds, hard)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    except (ValueError, OSError):  # pragma: no cover - a platform without it
        pass


def backstop_hit(limits: Limits, wait_status: int, cpu_s: float, grace: float) -> Exceeded | None:
    """The attempt died of SIGKILL with its CPU at the backstop: the kernel enforced the CPU limit."""
    import signal

    if limits.cpu_s is None or not os.WIFSIGNALED(wait_status):
        return None
    if os.WTERMSIG(wait_status) not in (signal.SIGKILL, signal.SIGXCPU):
        return None
    if cpu_s < cpu_backstop(limits.cpu_s) - 0.5:  # killed by someone else, before the backstop
        return None
    return cpu_exceeded(limits, cpu_s, grace)


# -- sampling the tree --------------------------------------------------------------------------
def _read_stat(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` fields after the command name (state first), or None if the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = data.rfind(b")")
    return data[end + 2:].split() if end >= 0 else None


def _list_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _last_pid() -> bytes | None:
    """The pid most recently created in this pid namespace (``/proc/loadavg``'s last field)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return f.read().split()[-1]
    except (OSError, IndexError):
        return None


# /proc/PID/stat fields, counted from the state (field 3 of proc(5)) as index 0.
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME, _RSS = 1, 11, 12, 13, 14, 21


class ProcTree:
    """The live processes below ``root`` (not ``root`` itself), read from ``/proc`` (Linux).

    The readers are parameters so the classification is unit-tested on a made-up ``/proc``.
    """

    def __init__(self, root: int, *, read_stat: Callable[[int], list[bytes] | None] = _read_stat,
                 list_pids: Callable[[], set[int]] = _list_pids,
                 last_pid: Callable[[], bytes | None] = _last_pid) -> None:
        self.root = root
        self._read_stat, self._list_pids, self._last_pid = read_stat, list_pids, last_pid
        self.members: set[int] = set()
        #: Processes found outside the tree: they never join it (re-parenting goes to an ancestor).
        self.foreign: set[int] = set()
        #: Processes whose ancestry could not be told (a parent exited mid-sample): read again.
        self.pending: set[int] = set()
        self._seen_last: bytes | None = None
        self._unlisted = RELIST_EVERY  # samples since /proc was last listed: list at the first
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> Usage:
        last = self._last_pid()
        candidates = self.members | self.pending
        self._unlisted += 1
        if self._unlisted >= RELIST_EVERY or last is None or last != self._seen_last:
            listed = self._list_pids()
            self.foreign &= listed  # a pid gone and reused later is read afresh
            candidates |= listed - self.foreign
            self._seen_last, self._unlisted = last, 0
        candidates.discard(self.root)
        # Ascending pids: a parent (older, lower pid) is read before the child it may reap meanwhile,
        # so an exited child's CPU is never counted both in itself and in its parent's cutime.
        stats = {pid: fields for pid in sorted(candidates)
                 if (fields := self._read_stat(pid)) is not None and len(fields) > _RSS}
        self._classify(stats)
        rss = cpu = 0
        for pid in self.members:
            fields = stats[pid]
            rss += int(fields[_RSS])
            cpu += int(fields[_UTIME]) + int(fields[_STIME]) + int(fields[_CUTIME]) + int(fields[_CSTIME])
        return Usage(rss * self._page, cpu / self._tick, len(self.members))

    def _classify(self, stats: dict[int, list[bytes]]) -> None:
        parent = {pid: int(fields[_PPID]) for pid, fields in stats.items()}
        verdict: dict[int, bool | None] = {}
        for pid in parent:
            path: list[int] = []
            p = pid
            while True:
                if p == self.root:
                    found: bool | None = True
                    break
                if p in verdict:
                    found = verdict[p]
                    break
                if p == 0 or p in self.foreign:
                    found = False
                    break
                if p not in parent or p in path:  # exited mid-sample (or a loop read mid-change)
                    found = None
                    break
                path.append(p)
                p = parent[p]
            for q in path:
                verdict[q] = found
        self.members = {pid for pid, v in verdict.items() if v}
        self.foreign |= {pid for pid, v in verdict.items() if v is False}
        self.pending = {pid for pid, v in verdict.items() if v is None}


class PsutilTree:
    """The same sums through psutil, where there is no ``/proc`` (imported only with a limit set)."""

    def __init__(self, root: int) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(root)

    def sample(self) -> Usage:
        psutil = self._psutil
        rss, cpu, count = 0, 0.0, 0
        try:
            children: Iterable[Any] = self._root.children(recursive=True)
        except psutil.Error:
            children = ()
        for proc in children:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu += times.user + times.system + times.children_user + times.children_system
                    count += 1
            except psutil.Error:
                continue
        return Usage(rss, cpu, count)


def tree_of(root: int) -> ProcTree | PsutilTree:
    return ProcTree(root) if sys.platform.startswith("linux") else PsutilTree(root)


class Watchdog:
    """Samples the tree below ``root`` at most every ``interval`` s and says when a limit is past."""

    def __init__(self, limits: Limits, root: int, *, grace: float, interval: float = SAMPLE_INTERVAL,
                 clock: Callable[[], float] | None = None,
                 tree: ProcTree | PsutilTree | None = None) -> None:
        import time

        self.limits, self.grace, self.interval = limits, grace, interval
        self._clock = clock or time.monotonic
        self.tree = tree if tree is not None else tree_of(root)
        self._next = self._clock()  # the first sample at once
        #: The highest CPU seen: the tree's CPU never goes down, though an exited process may leave the sum.
        self.cpu_peak = 0.0

    def wait(self) -> float:
        """Seconds until the next sample is due (for the supervisor's ``select``)."""
        return max(0.0, self._next - self._clock())

    def check(self) -> Exceeded | None:
        """Sample if due; a limit past (confirmed by a second sample at once), or None."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.interval
        usage = self.tree.sample()
        if over(self.limits, usage, self.grace) is None:
            self.cpu_peak = max(self.cpu_peak, usage.cpu_s)
            return None
        # A second read rules out a race (a child counted in itself and in the parent that reaped it).
        usage = self.tree.sample()
        self.cpu_peak = max(self.cpu_peak, usage.cpu_s)
        return over(self.limits, usage, self.grace)

    def at_exit(self, wait_status: int | None, rusage: Any) -> Exceeded | None:
        """The attempt's process ended: was it the kernel's RLIMIT_CPU backstop that ended it?"""
        if wait_status is None:
            return None
        cpu = self.cpu_peak
        if rusage is not None:
            cpu = max(cpu, float(rusage.ru_utime) + float(rusage.ru_stime))
        return backstop_hit(self.limits, wait_status, cpu, self.grace)


def _secs(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
