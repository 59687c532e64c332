"""Process identity and process-tree control: pid *and* start time, never pid alone.

Pids are reused, so every process bgrunner records is identified by its pid and
the start time psutil reports for it (``create_time``). Nothing here signals a
pid whose start time differs from the recorded one. A pid read from the store
is signalled only through :func:`stop_job_tree`, which also asks the process to
prove it is that job's process (its name or command line names the job) and
never signals pid 1, this process or one of its ancestors: a forged store row
must not be able to point a worker at an unrelated process.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

#: Two start times closer than this are the same process (both come from /proc's jiffies).
START_TIME_TOLERANCE = 0.05

_boot_time: float | None = None


def _linux_boot_time() -> float:
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    _boot_time = float(line.split()[1])
                    break
            else:  # pragma: no cover - every Linux has btime
                raise RuntimeError("no btime in /proc/stat")
    return _boot_time


def _linux_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def start_time(pid: int) -> float | None:
    """The process's start time as psutil's ``create_time()`` gives it, or None if it is gone.

    On Linux this reads /proc directly (the same formula psutil uses) so the job
    path does not pay psutil's import; elsewhere it asks psutil.
    """
    if sys.platform.startswith("linux"):
        fields = _linux_stat(pid)
        return None if fields is None else _start_from(fields)
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _start_from(fields: list[bytes]) -> float:
    return int(fields[19]) / os.sysconf("SC_CLK_TCK") + _linux_boot_time()


def is_alive(pid: int | None, recorded_start: float | None) -> bool:
    """True if ``pid`` is running *and* is the process that was recorded (not a zombie)."""
    if not pid:
        return False
    if sys.platform.startswith("linux"):
        fields = _linux_stat(pid)
        if fields is None or fields[0] in (b"Z", b"X"):
            return False
        now_start = _start_from(fields)
    else:
        import psutil

        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            now_start = proc.create_time()
        except psutil.Error:
            return False
    return recorded_start is None or abs(now_start - recorded_start) <= START_TIME_TOLERANCE


def describe_exit(returncode: int) -> str:
    """How a child ended, in words: 'exit code 3' or 'killed by signal 9 (SIGKILL)'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-returncode} ({name})"
    return f"exit code {returncode}"


def describe_wait_status(status: int) -> str:
    """``describe_exit`` for a raw ``os.waitpid`` status."""
    return describe_exit(os.waitstatus_to_exitcode(status))


_libc: Any = None


def load_libc() -> Any:
    """libc through ctypes, loaded once (the fork server's template loads it for its children)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl  # noqa: B018 - resolve the symbol now, not in every child
    return _libc


def _prctl(option: int, value: int) -> bool:
    return bool(load_libc().prctl(option, value, 0, 0, 0) == 0)


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux), so none escape a kill.

    A job's grandchild that starts its own session and whose parent exits would
    otherwise re-parent to init and be invisible to a tree walk.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


#: A job process names itself ``bgjob:<id>`` (Linux ``comm``, 15 bytes at most).
JOB_NAME_PREFIX = "bgjob:"


def job_process_name(job_id: int) -> str:
    digits = str(job_id)
    return JOB_NAME_PREFIX + digits[-(15 - len(JOB_NAME_PREFIX)):]


def mark_job_process(job_id: int) -> None:
    """Name this process after its job (``ps`` shows ``bgjob:42``): the proof `is_job_process` reads."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(job_process_name(job_id))
        except OSError:  # pragma: no cover - /proc without write access
            pass


def _protected() -> set[int]:
    """Pids never signalled on a store's word: 0, 1, this process and its ancestors."""
    protected = {0, 1, os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in protected:
        protected.add(pid)
        fields = _linux_stat(pid) if sys.platform.startswith("linux") else None
        if fields is None:
            break
        pid = int(fields[1])  # ppid
    return protected


def is_job_process(pid: int | None, recorded_start: float | None, job_id: int) -> bool:
    """True if ``pid`` is alive, has the recorded start time, and names job ``job_id``.

    The name is set by the job process itself (:func:`mark_job_process`); a spawned
    job process is also recognised by its command line (``run_job.py ... --job-id N``)
    before it has named itself. Without a recorded start time nothing is proven.
    """
    if not pid or pid in _protected() or recorded_start is None or not is_alive(pid, recorded_start):
        return False
    if not sys.platform.startswith("linux"):  # pragma: no cover - start time only
        return True
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            if f.read().strip() == job_process_name(job_id).encode():
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(a == b"--job-id" and b == str(job_id).encode() for a, b in zip(argv, argv[1:], strict=False))


def stop_job_tree(pid: int | None, recorded_start: float | None, job_id: int, *, grace: float,
                  root_extra: float = 0.0) -> bool:
    """`kill_tree` for a pid read from the store: only once `is_job_process` proves it. True if signalled."""
    if pid is None or not is_job_process(pid, recorded_start, job_id):
        return False
    return kill_tree(pid, recorded_start, grace=grace, root_extra=root_extra)


#: A job's supervisor, once its descendants are dead, gets this long to record its end and
#: exit before it is killed too (see ``kill_tree(root_extra=...)``).
SUPERVISOR_EXTRA_GRACE = 3.0


def kill_tree(pid: int, recorded_start: float | None, *, grace: float,
              include_root: bool = True, root_extra: float = 0.0) -> bool:
    """SIGTERM a process and all its descendants, then SIGKILL what is left after ``grace``.

    The tree is collected with psutil *before* any signal (children re-parent
    once their parent dies). ``root_extra``: a root that outlives the grace
    gets this much longer (a supervisor records the end once its children are
    dead) before it is killed too. Processes already gone count as success.
    Returns False only if the root is not the recorded process.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        if recorded_start is not None and abs(root.create_time() - recorded_start) > START_TIME_TOLERANCE:
            return False
        targets = root.children(recursive=True) + ([root] if include_root else [])
    except psutil.NoSuchProcess:
        return True
    protected = _protected()
    targets = [p for p in targets if p.pid not in protected]
    _signal_all(targets, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(targets, timeout=grace) if grace > 0 else ([], targets)
    root_alive = [p for p in alive if p.pid == root.pid]
    alive = [p for p in alive if p.pid != root.pid]
    if alive:
        # Grandchildren born during the grace period are collected again.
        more: list[Any] = []
        for p in alive:
            try:
                more.extend(p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        _signal_all(alive + more, signal.SIGKILL)
        psutil.wait_procs(alive + more, timeout=5)
    if root_alive:
        _gone, root_alive = psutil.wait_procs(root_alive, timeout=root_extra)
        _signal_all(root_alive, signal.SIGKILL)
        psutil.wait_procs(root_alive, timeout=5)
    return True


def _signal_all(procs: list[Any], sig: int) -> None:
    import psutil

    protected = _protected()
    for p in procs:
        if p.pid in protected:
            continue
        try:
            p.send_signal(sig)  # psutil checks the pid was not reused since it was collected
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
