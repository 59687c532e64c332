"""Fork-server launch mode: job processes forked from a warm template instead of a fresh Python.

``[runner] launch = "fork"``: the worker starts one *template* process
(``python -m bgrunner.launch.template``), a clean single-threaded interpreter that
has imported bgrunner, its store driver and (if installed) setproctitle's C
module once. Kept out on purpose: psutil (a job process needs it only to kill
a timed-out attempt's tree, and its megabyte of heap would make every fork and
exit dearer), and ``threading``, ``logging`` and ``random``, whose at-fork
handlers would run in every job process forked (with them a fork and exit cost
1.6-2.1 ms here, without them 0.85-1.1 ms; the PostgreSQL driver brings
``threading`` and ``logging`` along, so there they stay). Each job
process is forked from it, ahead of its job (see ``bgrunner.launch.template`` for
the hand-over: ``hand``, the worker records the pid, ``go``), and becomes a
full job process as ``run_job.py --job-id N`` would be: a session of its own,
stdin from /dev/null, output appended to ``<log dir>/output/<id>.out``, the
worker's environment (the template is started without the dashboard's secrets,
``Context.child_env``, and drops any it still finds) and working directory, the allowlist read from the file.
Cancellation and crash detection are unchanged. A job without a timeout runs
its method in this one process (``job.supervisor``, *inline*); one with a timeout (or a
memory or CPU limit) forks an attempt process, as in spawn mode, so its deadline is
enforced from outside.

Why a separate template rather than ``os.fork()`` in the worker: the worker may
hold threads, store connections and selectors; a child forked from it would
inherit them. The template holds no store connection and no threads, ever.

Staleness. The template runs the code it imported at start. The parent's
:meth:`ForkServer.stale` says when to renew it: the allowlist file or any
imported non-stdlib file (bgrunner, setproctitle, preloaded job modules and what they
imported) changed on disk, ``max_jobs`` children were forked, or the template
died. Between a change and the renewal nothing wrong can run: every child reads
the allowlist from the file again, and a child whose template imported a file
that has changed since re-executes itself as ``python run_job.py …`` (spawn
mode, same pid) before running the job.

``preload_jobs`` (default off) also imports the allow-listed job modules in the
template, so a job skips its own import too. The trade-off: their import-time
side effects run once, in the template, and are shared by every job (an open
file, a connection or a thread started at import would be shared or lost
across fork; a module-level counter no longer starts fresh per job), and an
edited module is picked up only after a renewal (or by the re-exec fallback,
at spawn cost). Keep it off unless job modules are import-heavy and fork-safe.

Spares (``spares``, the worker passes its concurrency, at most 4): job
processes the template keeps forked and set up while no job waits, so the fork
is off the way from submit to start.

Renewal keeps reports flowing: :meth:`ForkServer.renew` retires the current
template (it forks no more, reports its running children's exits, and exits
when they have all ended) and starts a new one. :meth:`ForkServer.close` stops
every template at once; running jobs keep running and record their own
outcome, but their exits are no longer reported (``reconcile`` covers them).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bgrunner.errors import ForkServerError

if TYPE_CHECKING:
    import subprocess  # the parent side imports it where used: the template must not carry threading

    from bgrunner.context import Context

#: Seconds the worker waits for a new template to say it is ready.
START_TIMEOUT = 30.0
#: Seconds the worker waits for the template to answer one launch request.
LAUNCH_TIMEOUT = 10.0
#: Seconds ``close()`` waits for a template to exit after its socket is closed.
CLOSE_TIMEOUT = 5.0
#: Modules every job process needs: imported once in the template.
WARM_IMPORTS = (
    "argparse", "ctypes", "json", "shutil", "sqlite3", "tomllib", "traceback",
    "bgrunner", "bgrunner.allowlist", "bgrunner.job.attempt", "bgrunner.context",
    "bgrunner.eventlog", "bgrunner.output", "bgrunner.jobs", "bgrunner.launch.spawn",
    "bgrunner.binding.loader",
    "bgrunner.binding.params", "bgrunner.procs", "bgrunner.job.reporting", "bgrunner.retry",
    "bgrunner.job.main", "bgrunner.job.supervisor", "bgrunner.store", "bgrunner.store.base",
)

FileStamp = tuple[int, int] | None  # (st_mtime_ns, st_size), None when the file is missing


def stamp(path: str) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def changed(files: dict[str, FileStamp]) -> list[str]:
    """The files whose stamp is no longer the recorded one."""
    return [path for path, old in files.items() if stamp(path) != old]


# =============================================================================
# Parent side: lives in the worker.
# =============================================================================

@dataclass
class _Template:
    """One template process as the parent sees it."""

    tid: int
    proc: subprocess.Popen[bytes]
    cmd: socket.socket
    pid: int = 0
    files: dict[str, FileStamp] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    launched: int = 0
    running: set[int] = field(default_factory=set)
    buffer: bytes = b""
    broken: bool = False

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request line and read one reply line (the template answers in order)."""
        try:
            self.cmd.settimeout(timeout)
            if message:
                self.cmd.sendall(json.dumps(message).encode() + b"\n")
            while b"\n" not in self.buffer:
                chunk = self.cmd.recv(65536)
                if not chunk:
                    raise ForkServerError(f"fork server {self.pid} exited "
                                          f"(status {self.proc.poll()})")
                self.buffer += chunk
        except (OSError, ValueError) as exc:  # timeout, broken pipe, closed socket
            self.broken = True
            raise ForkServerError(f"fork server {self.pid or self.proc.pid}: {exc}") from exc
        except ForkServerError:
            self.broken = True
            raise
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None


class ForkServer:
    """Parent-side handle of the fork server (lives in the worker).

    Not thread-safe: one thread (the worker's loop) calls it. ``fileno()``
    stays the same across ``renew()``, so it is registered with a selector once.
    """

    def __init__(self, ctx: Context, *, preload_jobs: bool = False, max_jobs: int = 10_000,
                 spares: int = 1) -> None:
        self.ctx = ctx
        self.preload_jobs = preload_jobs
        self.spares = max(0, spares)
        self.max_jobs = max(1, max_jobs)
        # One datagram socket receives the exit reports of every template (current and retired).
        self._events, self._events_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._events.setblocking(False)
        self._current: _Template | None = None
        self._retired: list[_Template] = []
        self._by_tid: dict[int, _Template] = {}
        self._next_tid = 1
        self._orphans: list[int] = []
        self._closed = False

    def __enter__(self) -> ForkServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Start the template and wait until it has imported everything and is ready."""
        if self._closed:
            raise ForkServerError("this fork server was closed")
        if self._current is None:
            self._current = self._start_template()

    def _start_template(self) -> _Template:
        import subprocess

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tid, self._next_tid = self._next_tid, self._next_tid + 1
        command = [sys.executable, "-m", "bgrunner.launch.template", "--fd", str(theirs.fileno()),
                   "--events-fd", str(self._events_child.fileno()), "--tid", str(tid),
                   "--parent", str(os.getpid()), "--spares", str(self.spares)]
        if self.preload_jobs:
            command.append("--preload-jobs")
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    env=self.ctx.child_env(), close_fds=True,
                                    pass_fds=(theirs.fileno(), self._events_child.fileno()))
        except OSError as exc:
            mine.close()
            raise ForkServerError(f"cannot start the fork server: {exc}") from exc
        finally:
            theirs.close()
        template = _Template(tid, proc, mine)
        try:
            hello = template.request({}, START_TIMEOUT)
        except ForkServerError:
            self._stop(template, kill=True)
            raise
        template.pid = int(hello["pid"])
        template.files = {path: (s[0], s[1]) if s is not None else None
                          for path, s in hello["files"].items()}
        template.notes = list(hello.get("notes") or [])
        self._by_tid[tid] = template
        return template

    def renew(self) -> None:
        """Retire the current template (it reports its running children, then exits); start anew."""
        old = self._current
        self._current = None
        if old is not None:
            if old.running and old.alive():
                try:
                    old.request({"op": "retire"}, LAUNCH_TIMEOUT)
                    self._retired.append(old)
                except ForkServerError:
                    self._bury(old)
            else:
                self._bury(old)
        self.start()

    def close(self) -> None:
        """Stop every template. Running jobs are not killed; their exits go unreported."""
        if self._closed:
            return
        self._closed = True
        for template in [t for t in [self._current, *self._retired] if t is not None]:
            self._stop(template, kill=False)
            self._orphans.extend(template.running)
        self._current, self._retired = None, []
        self._events.close()
        self._events_child.close()

    def _stop(self, template: _Template, *, kill: bool) -> None:
        import subprocess

        template.cmd.close()  # EOF: the template exits without touching its children
        if kill:
            template.proc.kill()
        try:
            template.proc.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            template.proc.kill()
            template.proc.wait()
        self._by_tid.pop(template.tid, None)

    def _bury(self, template: _Template) -> None:
        """A template that will report nothing more: what it still ran becomes an orphan."""
        self._stop(template, kill=False)
        self._orphans.extend(template.running)
        template.running.clear()

    # -- launching -----------------------------------------------------------------
    def hand(self, job_id: int, target: str, method: str, attempt: int) -> int:
        """Hand a job to a waiting process (forked now if none waits); its pid.

        The process prepares the job but starts it only after :meth:`go`;
        record the pid on the job in between (or :meth:`release` it). Raises
        ForkServerError if the template is gone or could not fork.
        """
        reply = self._request({"op": "hand", "job_id": job_id, "target": target,
                               "method": method, "attempt": attempt})
        return int(reply["pid"])

    def go(self, pid: int) -> None:
        """Let the process the job was handed to start it."""
        self._request({"op": "go", "pid": pid})
        assert self._current is not None
        self._current.launched += 1
        self._current.running.add(pid)

    def release(self, pid: int) -> None:
        """Take a handed job back: the process exits without running anything."""
        try:
            self._request({"op": "release", "pid": pid})
        except ForkServerError:
            pass  # the template is gone: the process reads EOF and exits all the same

    def launch(self, job_id: int, target: str, method: str, attempt: int) -> int:
        """:meth:`hand` and :meth:`go` in one call, without recording anything; the pid."""
        pid = self.hand(job_id, target, method, attempt)
        self.go(pid)
        return pid

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        template = self._current
        if template is None:
            raise ForkServerError("the fork server is not started")
        reply = template.request(message, LAUNCH_TIMEOUT)
        if "error" in reply:
            raise ForkServerError(f"fork server: {reply['error']}")
        return reply

    def fileno(self) -> int:
        """Readable when a template has reported child exits (call :meth:`exits`)."""
        return self._events.fileno()

    def exits(self) -> list[tuple[int, int]]:
        """``(pid, returncode)`` of children that ended since the last call.

        The return code reads as ``subprocess`` gives it: the exit status, or
        ``-N`` for a process killed by signal N.
        """
        if self._closed:
            return []
        dead = [t for t in self._retired if t.proc.poll() is not None]
        out: list[tuple[int, int]] = []
        while True:
            try:
                data = self._events.recv(256)
            except (BlockingIOError, InterruptedError):
                break
            tid, pid, code = (int(x) for x in data.split())
            template = self._by_tid.get(tid)
            if template is not None:
                template.running.discard(pid)
            out.append((pid, code))
        for template in dead:  # every report a template sent precedes its exit
            self._retired.remove(template)
            self._bury(template)
        return out

    def orphans(self) -> list[int]:
        """Pids of jobs whose exit will never be reported (their template died or was closed).

        They run on, detached; the worker should stop tracking them and leave
        them to ``jobs.reconcile`` (pid and start time). Cleared by the call.
        """
        if self._current is not None and not self._current.alive():
            self._bury(self._current)
            self._current = None
        out, self._orphans = self._orphans, []
        return out

    def running(self) -> int:
        """Children forked and not yet reported, over every template."""
        templates = [t for t in [self._current, *self._retired] if t is not None]
        return sum(len(t.running) for t in templates)

    # -- freshness -----------------------------------------------------------------
    def stale(self) -> bool:
        """True when the template should be renewed (see the module docstring)."""
        template = self._current
        if template is None or not template.alive():
            return True
        if template.launched >= self.max_jobs:
            return True
        return bool(changed(template.files))

    @property
    def pid(self) -> int | None:
        """The current template's pid."""
        return None if self._current is None else self._current.pid

    @property
    def notes(self) -> list[str]:
        """Warnings from the current template's start (a preloaded module failed or started threads)."""
        return [] if self._current is None else list(self._current.notes)


class ForkedProcess:
    """A forked job as the worker tracks it: the parts of ``Popen`` the worker uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode
