"""The parent side of a job: start its process detached, and reap it.

A launched job runs ``python run_job.py module:Class method --job-id N`` in a
session of its own (or, on Windows, a detached new process group), with the
launcher's environment (less the dashboard's secrets) and working directory,
stdin from /dev/null and its output appended to ``<log dir>/output/<id>.out``
(opened without following a link, and refused unless it is a regular file of
ours: ``bgrunner.output``). Params are read from the store by the child, so
they never appear on a command line.

Long-lived launchers (web servers, the worker) must not collect zombies: every
child is watched by one daemon thread that reaps it as soon as it exits and,
if the job did not record its own end, records how the process died.

``subprocess`` and ``threading`` are imported where they are used: the fork
template imports this module and must not carry ``threading``, whose at-fork
handler would run in every job process forked.
"""

from __future__ import annotations

import os
import selectors
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bgrunner.context import launch_env
from bgrunner.output import open_output

if TYPE_CHECKING:
    import subprocess
    import threading

#: Windows creation flags (constants of the Win32 API; not present in subprocess on POSIX).
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200


def detach_options(platform: str) -> dict[str, Any]:
    """The ``Popen`` keywords that detach a child from its launcher on this platform."""
    if platform == "win32":
        return {"creationflags": DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def spawn(command: list[str], *, env: dict[str, str], output_dir: str, job_id: int) -> subprocess.Popen[bytes]:
    """Start a detached job process; its stdout and stderr go to its output file.

    ``env`` loses the dashboard's variables here too, whoever built it. Raises
    ``OSError`` (``UnsafePathError`` for a linked or foreign output file): nothing started.
    """
    import subprocess

    out = open_output(output_dir, job_id)
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=launch_env(env),
            close_fds=True, **detach_options(sys.platform),
        )
    finally:
        os.close(out)


#: Called in the reaper thread with the process that exited.
ExitCallback = Callable[["subprocess.Popen[bytes]"], None]


class Reaper:
    """One daemon thread that waits for launched children and reaps each as it exits."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._children: dict[int, tuple[subprocess.Popen[bytes], ExitCallback | None]] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._owner = os.getpid()

    def watch(self, proc: subprocess.Popen[bytes], on_exit: ExitCallback | None = None) -> None:
        pidfd = None
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass
        with self._lock:
            self._children[proc.pid] = (proc, on_exit)
            if pidfd is not None:
                self._selector.register(pidfd, selectors.EVENT_READ, proc.pid)
            if self._thread is None or not self._thread.is_alive():
                import threading

                self._thread = threading.Thread(target=self._loop, name="bgrunner-reaper",
                                                daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"\0")

    def _loop(self) -> None:
        while True:
            events = self._selector.select(timeout=0.5)
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
            self._reap()

    def _reap(self) -> None:
        with self._lock:
            done = [(pid, entry) for pid, entry in self._children.items()
                    if entry[0].poll() is not None]
            for pid, _ in done:
                del self._children[pid]
                for key in list(self._selector.get_map().values()):
                    if key.data == pid:
                        self._selector.unregister(key.fileobj)
                        os.close(key.fd)
        for _pid, (proc, on_exit) in done:
            if on_exit is not None:
                try:
                    on_exit(proc)
                except Exception as exc:  # a reaper must outlive a failing callback
                    print(f"bgrunner: warning: after job process {proc.pid} exited: {exc}",
                          file=sys.stderr)


_reaper: Reaper | None = None


def reaper() -> Reaper:
    """The process-wide reaper (a new one after fork: threads do not survive fork)."""
    global _reaper
    if _reaper is None or _reaper._owner != os.getpid():
        _reaper = Reaper()
    return _reaper
