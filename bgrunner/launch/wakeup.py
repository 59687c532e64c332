"""Waking the workers, and making sure one runs: a datagram socket per worker, a lock file per store.

A submit that cannot start its job at once (delayed, or the cap is reached)
makes sure some live worker serves the job's queue (else it starts one, serving
every queue; ``filelock`` keeps such auto-started workers to one per store and
host) and sends each worker of this store on this host one datagram, so they
sleep until the next ``run_at`` instead of polling.

Both live in a private *run folder*, never under the shared ``/tmp``: there
another local user could bind the socket first (every wake-up would then reach
them, and no worker would ever be started) or hold the lock. The run folder is
``$XDG_RUNTIME_DIR/bgrunner`` when ``XDG_RUNTIME_DIR`` is a folder of ours closed
to others, else ``<log dir>/.run``; either is created 0700 and must stay a real
folder of ours that nobody else may enter, or it is refused (one line, never
repaired). A caller and its worker find each other because they share these two
settings (an auto-started worker inherits both). Socket paths longer than
AF_UNIX allows are reached through ``/proc/self/fd`` (Linux).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

from bgrunner.context import DEFAULT_LOG_DIR, Context, host_id
from bgrunner.errors import UsageError
from bgrunner.output import private_output_dir
from bgrunner.safefiles import is_private_folder, open_private, run_folder

#: Longest socket path bound or sent to directly (``sun_path`` is 108 bytes on Linux, 104 on BSDs).
MAX_SOCKET_PATH = 100

#: A context, or (from callers not yet passing one) the store URL, the log folder then
#: coming from ``BGRUNNER_LOG_DIR`` as for any process of this store.
Where = Context | str


def _locate(where: Where) -> tuple[str, str]:
    """(store URL, log folder) of ``where``."""
    if isinstance(where, Context):
        return where.database_url, where.log_dir
    return where, os.path.abspath(os.environ.get("BGRUNNER_LOG_DIR") or DEFAULT_LOG_DIR)


def run_dir(log_dir: str) -> str:
    """The private folder of this user's sockets and locks, created and checked (``UnsafePathError``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and is_private_folder(runtime):
        return run_folder(os.path.join(runtime, "bgrunner"))
    private_output_dir(os.path.join(log_dir, "output"))  # the log folder: ours and private first
    return run_folder(os.path.join(log_dir, ".run"))


def _base(where: Where) -> str:
    url, log_dir = _locate(where)
    return os.path.join(run_dir(log_dir), _name(url, host_id()))


@functools.lru_cache(maxsize=16)
def _name(url: str, host: str) -> str:
    """A short name per store and host (the URL itself may hold a password: only its hash shows)."""
    return hashlib.sha256(f"{url}|{host}".encode()).hexdigest()[:16]


def socket_path(where: Where, pid: int | None = None) -> str:
    """The wake-up socket of this store's worker ``pid`` (default: this process)."""
    return f"{_base(where)}.{os.getpid() if pid is None else pid}.sock"


def _sockets(where: Where) -> list[str]:
    """The wake-up sockets of every worker of this store on this host."""
    base = _base(where)
    folder, prefix = os.path.split(base)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, n) for n in names
            if n.startswith(prefix + ".") and n.endswith(".sock")]


def lock_path(where: Where) -> str:
    return _base(where) + ".lock"


@contextlib.contextmanager
def _address(path: str) -> Iterator[str]:
    """``path`` as an AF_UNIX address: itself, or via its folder's descriptor when too long."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield path
        return
    folder, name = os.path.split(path)
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(f"socket path too long for AF_UNIX ({path}); "
                      "set XDG_RUNTIME_DIR or use a shorter log folder")
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


_sender: tuple[int, socket.socket] | None = None  # (owner pid, unbound datagram socket)


def notify(where: Where) -> bool:
    """Wake every worker of this store on this host; True if one listened. Never blocks, never raises.

    One unbound datagram socket per process serves every call (a submit pays a
    ``sendto`` per worker, not a socket's creation); a forked child makes its own.
    The socket of a worker that was killed is removed (the run folder is ours
    alone). A run folder that is refused counts as no worker (``ensure_worker`` says why).
    """
    global _sender
    if _sender is None or _sender[0] != os.getpid():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _sender = (os.getpid(), sock)
    try:
        paths = _sockets(where)
    except OSError:
        return False
    reached = False
    for path in paths:
        try:
            with _address(path) as address:
                _sender[1].sendto(b"!", address)
            reached = True
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                os.unlink(path)  # nobody listens there any more
        except OSError:  # a full queue: that worker has wake-ups pending already
            reached = True
    return reached


def worker_running(where: Where) -> bool:
    """True if some process holds this store's worker lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_path(where), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def ensure_worker(ctx: Context, queue: str | None = None) -> None:
    """Wake this host's workers; start a detached one if no live worker serves ``queue``.

    Live: seen within ``host_timeout`` on the store's clock, on any host. The
    auto-started worker serves every queue. A refused run or log folder is a
    ``UsageError`` naming it (the job stays recorded).
    """
    notify(ctx)
    if _served(ctx, queue):
        return
    try:
        if not worker_running(ctx):
            _start_worker(ctx)
    except OSError as exc:
        raise UsageError(f"cannot start a worker: {exc}") from exc
    notify(ctx)


def _served(ctx: Context, queue: str | None) -> bool:
    """True if a live worker on the store serves ``queue`` (None: any worker at all)."""
    timeout = ctx.config.runner.host_timeout
    workers = ctx.store.workers()
    if not workers:
        return False
    now = ctx.store.clock()
    return any(now - w.last_seen <= timeout and (queue is None or w.serves(queue)) for w in workers)


def _start_worker(ctx: Context) -> None:
    out = open_private(os.path.join(private_output_dir(ctx.output_dir), "worker.out"),
                       os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        from bgrunner.launch.spawn import detach_options

        proc = subprocess.Popen(
            [sys.executable, "-m", "bgrunner", "worker", "--auto"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=ctx.child_env(),
            close_fds=True, **detach_options(sys.platform),
        )
    finally:
        os.close(out)
    from bgrunner.launch.spawn import reaper

    reaper().watch(proc)


class Listener:
    """The worker's end: a bound datagram socket whose fd can be selected on.

    Raises ``UnsafePathError`` (an ``OSError``, one line) when the run folder is refused.
    """

    def __init__(self, where: Where) -> None:
        self.path = socket_path(where)
        try:
            os.unlink(self.path)  # a stale socket of a killed worker (the folder is ours alone)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            with _address(self.path) as address:
                self.sock.bind(address)
        except BaseException:
            self.sock.close()
            raise
        finally:
            os.umask(old)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        try:
            while self.sock.recv(64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
