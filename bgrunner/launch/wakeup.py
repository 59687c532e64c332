"""Waking the worker, and making sure one runs: a datagram socket and a lock file per store.

A submit that cannot start its job at once (delayed, or the cap is reached)
makes sure one worker per store runs on this host (``filelock`` makes it a
singleton) and sends it one datagram, so the worker sleeps until the next
``run_at`` instead of polling.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import subprocess
import sys
import tempfile

from bgrunner.context import Context, host_id


def _base(url: str) -> str:
    return _base_for(url, host_id(), os.getuid())


@functools.lru_cache(maxsize=16)
def _base_for(url: str, host: str, uid: int) -> str:
    digest = hashlib.sha256(f"{url}|{host}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"bgrunner-{uid}-{digest}")


def socket_path(url: str) -> str:
    return _base(url) + ".sock"


def lock_path(url: str) -> str:
    return _base(url) + ".lock"


_sender: tuple[int, socket.socket] | None = None  # (owner pid, unbound datagram socket)


def notify(url: str) -> bool:
    """Wake the worker of this store, if one listens. Never blocks.

    One unbound datagram socket per process serves every call (a submit pays a
    ``sendto``, not a socket's creation); a forked child makes its own.
    """
    global _sender
    if _sender is None or _sender[0] != os.getpid():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _sender = (os.getpid(), sock)
    try:
        _sender[1].sendto(b"!", socket_path(url))
        return True
    except OSError:
        return False


def worker_running(url: str) -> bool:
    """True if some process holds this store's worker lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_path(url), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def ensure_worker(ctx: Context) -> None:
    """Start a detached worker for this store if none runs here, then wake it."""
    if notify(ctx.database_url):
        return
    if not worker_running(ctx.database_url):
        out = os.open(os.path.join(_ensure_dir(ctx.output_dir), "worker.out"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
    notify(ctx.database_url)


def _ensure_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class Listener:
    """The worker's end: a bound datagram socket whose fd can be selected on."""

    def __init__(self, url: str) -> None:
        self.path = socket_path(url)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
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
