"""The fork server's template process: a warm, single-threaded interpreter that forks job processes.

Started by ``bgrunner.launch.forkserver.ForkServer`` as
``python -m bgrunner.launch.template --fd N --events-fd M --tid T`` (the design is
described in ``bgrunner.launch.forkserver``). It never opens the job store and never
starts a thread, so a forked child inherits nothing it must not share.

Every job process is forked *before* its job is known: it gets ready (its
own session, leaving the template's sockets and signals, a fresh store
connection, the log file open, the subreaper flag) and blocks reading a pipe.
A launch is two requests from the worker: ``hand`` (the template writes the job
to a waiting process, forking one if none waits, and answers with its pid) and,
once the worker has recorded that pid on the claimed job, ``go``. Meanwhile the
process prepares the job (output, title, allowlist check, import, params); it
waits for ``go`` before it writes anything or calls the method. So a job
process always finds itself recorded, and the worker's write and the
preparation overlap. ``release`` instead of ``go`` makes it exit unstarted.

Spares. The template keeps ``--spares`` such processes waiting, so neither the
fork nor the set-up is on the way from submit to start. A replacement is forked
once no launch has come for ``SPARE_DELAY``: forked at once, it would compete
for the CPU with the job just started; under a stream of launches each hand
forks on demand. A waiting process runs exactly one job, then exits; it reads
the allowlist and checks its code only once it has a job. One whose pipe closes
(release, renewal, the worker gone) exits without running anything. The job
process's own steps (get ready, read the pipe, output, exit) are in
``bgrunner.job.forked``.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any, NoReturn

from bgrunner.context import Context, scrub_environ
from bgrunner.job import forked
from bgrunner.launch.forkserver import WARM_IMPORTS, FileStamp, changed, stamp

#: Seconds without a launch before the template forks replacement spares.
SPARE_DELAY = 0.02


class Template:
    """The single-threaded process that forks job processes and reaps them."""

    def __init__(self, cmd: socket.socket, events: socket.socket, tid: int,
                 spares: int = 0) -> None:
        self.cmd, self.events, self.tid = cmd, events, tid
        self.children: dict[int, int] = {}  # pid -> job id
        self.spare_count = max(0, spares)
        self.spares: list[tuple[int, int]] = []  # (pid, write end of its pipe), waiting for a job
        self.handed: dict[int, tuple[int, int]] = {}  # pid -> (write end, job id): waits for go
        self.last_launch = 0.0
        self.pending: list[bytes] = []      # exit reports the worker has not taken yet
        self.retired = False
        self.files: dict[str, FileStamp] = {}
        self.code_files: dict[str, FileStamp] = {}
        self.notes: list[str] = []
        self.initial_signals = {s: signal.getsignal(s) for s in _RESET_SIGNALS}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.ctx = Context.resolve()
        self.config_cache: forked.ConfigCache | None = None

    # -- start -------------------------------------------------------------------------
    def warm_up(self, preload_jobs: bool) -> None:
        """Import what every job needs (and, optionally, the job modules); note what was read."""
        self.files[self.ctx.config_path] = stamp(self.ctx.config_path)
        self._parse_config()
        store = "postgres" if self.ctx.database_url.startswith("postgres") else "sqlite"
        for name in (*WARM_IMPORTS, f"bgrunner.store.{store}"):
            self._try_import(name)  # warmth only: a job imports what is missing itself
        forked.load_title_setter()  # setproctitle's C part, without logging and threading
        if sys.platform.startswith("linux"):
            from bgrunner import procs

            procs.load_libc()  # children inherit the loaded library and the boot time
            procs.start_time(os.getpid())
        if preload_jobs:
            self._preload_jobs()
        self._stamp_modules()
        # The allowlist is read again by every job; only imported code calls for a re-exec.
        self.code_files = {p: s for p, s in self.files.items() if p != self.ctx.config_path}
        if _thread_count() > 1:
            self.notes.append("a preloaded module started a thread: forking is not safe")

    def _parse_config(self) -> None:
        """Parse the allowlist once; a child uses it only if the file still holds these bytes."""
        from bgrunner.allowlist import parse_config

        try:
            with open(self.ctx.config_path, "rb") as fh:
                raw = fh.read()
            self.config_cache = (raw, parse_config(raw.decode("utf-8"), self.ctx.config_path))
        except Exception:  # noqa: BLE001 - unreadable or invalid: each job reports it itself
            self.config_cache = None

    def _try_import(self, name: str) -> None:
        import importlib

        try:
            importlib.import_module(name)
        except ImportError as exc:
            self.notes.append(f"{name} not preloaded: {exc}")

    def _preload_jobs(self) -> None:
        """Import the allow-listed modules, each file stamped *before* it is read."""
        import importlib
        import importlib.util

        try:
            specs = self.ctx.config.jobs.values()
        except Exception as exc:  # a broken allowlist: the jobs will report it themselves
            self.notes.append(f"allowlist not read, no job module preloaded: {exc}")
            return
        root = self.ctx.config.runner.import_root
        if root:  # as binding.loader.use_import_root: the project's folder, not the cwd
            sys.path[:] = [root] + [p for p in sys.path if p not in ("", ".", os.getcwd(), root)]
        for module in dict.fromkeys(spec.module for spec in specs):
            try:
                found = importlib.util.find_spec(module)
                if found is not None and found.origin and os.path.isfile(found.origin):
                    self.files[found.origin] = stamp(found.origin)
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - a broken job module must not stop the template
                self.notes.append(f"job module {module} not preloaded: {type(exc).__name__}: {exc}")

    def _stamp_modules(self) -> None:
        """Stamp every imported file outside the standard library (bgrunner, setproctitle, jobs)."""
        import sysconfig

        paths = sysconfig.get_paths()
        stdlib = tuple(os.path.join(paths[k], "") for k in ("stdlib", "platstdlib"))
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and os.path.isfile(path) and not path.startswith(stdlib):
                self.files.setdefault(path, stamp(path))

    # -- loop ---------------------------------------------------------------------------
    def serve(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the worker's to handle
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, _on_sigchld)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.events.setblocking(False)
        self.selector.register(self.cmd, selectors.EVENT_READ, "cmd")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "chld")
        self._send_line({"pid": os.getpid(), "files": self.files, "notes": self.notes})
        gc.collect()
        gc.freeze()  # children then share these pages instead of copying them on the next GC
        self._fork_spares()
        buffer = b""
        while True:
            missing = len(self.spares) < self.spare_count and not self.retired
            for key, mask in self.selector.select(timeout=SPARE_DELAY if missing else 5.0):
                if key.data == "cmd":
                    chunk = self.cmd.recv(65536)
                    if not chunk:
                        return 0  # the worker is gone: leave the jobs running, exit
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        self._handle(json.loads(line))
                elif key.data == "chld":
                    _drain(self.wake_r)
                elif key.data == "events" and mask & selectors.EVENT_WRITE:
                    pass  # flushed below
            self._reap()
            if not self._flush() or (self.retired and not self.children and not self.pending):
                return 0
            if time.monotonic() - self.last_launch >= SPARE_DELAY:
                self._fork_spares()

    def _handle(self, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "retire":
            self.retired = True
            self._drop_spares()
            self._send_line({"ok": True})
        elif op == "release":
            held = self.handed.pop(int(request["pid"]), None)
            if held is not None:
                os.close(held[0])  # it reads EOF and exits without running anything
            self._send_line({"ok": True})
        elif op == "go":
            self._send_line(self._go(int(request["pid"])))
        elif self.retired:
            self._send_line({"error": "this fork server is retired"})
        elif op == "hand":
            self._send_line(self._hand(request))
        else:
            self._send_line({"error": f"unknown request {op!r}"})

    def _hand(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give the job to a waiting process (forked now if none waits); it prepares, then waits for go."""
        self.last_launch = time.monotonic()
        line = json.dumps(request).encode() + b"\n"
        while True:
            try:
                pid, write_fd = self.spares.pop(0) if self.spares else self._fork_waiting()
            except OSError as exc:
                return {"error": str(exc)}
            try:  # one pipe write under PIPE_BUF arrives whole
                if os.write(write_fd, line) == len(line):
                    self.handed[pid] = (write_fd, int(request["job_id"]))
                    return {"pid": pid}
            except OSError:
                pass  # it died while waiting (reaped as a non-job): take the next one
            os.close(write_fd)

    def _go(self, pid: int) -> dict[str, Any]:
        """The worker has recorded ``pid`` on its job: let the process start the job."""
        held = self.handed.pop(pid, None)
        if held is None:
            return {"error": f"process {pid} holds no job here"}
        write_fd, job_id = held
        try:
            os.write(write_fd, b"go\n")
        except OSError as exc:
            return {"error": f"process {pid} is gone: {exc}"}
        finally:
            os.close(write_fd)
        self.children[pid] = job_id
        return {"pid": pid}

    # -- waiting processes ---------------------------------------------------------------
    def _fork_spares(self) -> None:
        while not self.retired and len(self.spares) < self.spare_count:
            try:
                self.spares.append(self._fork_waiting())
            except OSError:  # out of processes or memory: hand forks on demand meanwhile
                return

    def _fork_waiting(self) -> tuple[int, int]:
        """Fork a job process that gets ready, then waits for its job on a pipe: (pid, write end)."""
        read_fd, write_fd = os.pipe()
        try:
            pid = self._fork_process()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            os.close(write_fd)
            self._child(read_fd)
        os.close(read_fd)
        return pid, write_fd

    def _drop_spares(self) -> None:
        """Close the waiting processes' pipes: they read EOF and exit without running anything."""
        for write_fd in [fd for _pid, fd in self.spares] + [fd for fd, _ in self.handed.values()]:
            os.close(write_fd)
        self.spares, self.handed = [], {}

    def _send_line(self, message: dict[str, Any]) -> None:
        self.cmd.sendall(json.dumps(message).encode() + b"\n")

    def _reap(self) -> None:
        """Reap every ended child: report job processes; forget waiting ones that died."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.children.pop(pid, None) is not None:
                code = os.waitstatus_to_exitcode(status)
                self.pending.append(f"{self.tid} {pid} {code}".encode())
                continue
            for spare in [s for s in self.spares if s[0] == pid]:
                self.spares.remove(spare)
                os.close(spare[1])

    def _flush(self) -> bool:
        """Send the pending exit reports; False when the worker is gone."""
        while self.pending:
            try:
                self.events.send(self.pending[0])
            except (BlockingIOError, InterruptedError):
                break  # the worker is behind: keep them, retry when the socket is writable
            except OSError:
                return False
            self.pending.pop(0)
        registered = "events" in {k.data for k in self.selector.get_map().values()}
        if self.pending and not registered:
            self.selector.register(self.events, selectors.EVENT_WRITE, "events")
        elif not self.pending and registered:
            self.selector.unregister(self.events)
        return True

    # -- the child ------------------------------------------------------------------------
    def _fork_process(self) -> int:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        gc.freeze()
        return os.fork()

    def _child(self, job_fd: int) -> NoReturn:
        """In the forked process: leave the template behind, then be a job process (``job.forked``)."""
        try:
            os.setsid()
            self._leave_template()
        except BaseException:  # noqa: BLE001 - a process that cannot leave the template runs nothing
            os._exit(1)
        forked.run(job_fd, self.config_cache, lambda: bool(changed(self.code_files)))

    def _leave_template(self) -> None:
        """Drop everything of the template: its sockets, its SIGCHLD handling, its signal setup."""
        signal.set_wakeup_fd(-1)
        for sig, handler in self.initial_signals.items():
            signal.signal(sig, handler)
        self.selector.close()
        self.cmd.close()
        self.events.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        for write_fd in [fd for _pid, fd in self.spares] + [fd for fd, _ in self.handed.values()]:
            os.close(write_fd)  # the other waiting processes must see EOF when released
        self.spares, self.handed = [], {}


#: Signals whose disposition the template changes; a child gets the interpreter's defaults back.
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE)


def _on_sigchld(signum: int, frame: FrameType | None) -> None:
    """Only wakes the loop (the wake-up fd carries the news); reaping happens there."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _thread_count() -> int:
    if "threading" not in sys.modules:
        return 1
    import threading

    return threading.active_count()


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bgrunner.launch.template",
                                     description="bgrunner's fork server (started by the worker)")
    parser.add_argument("--fd", type=int, required=True, help="request socket")
    parser.add_argument("--events-fd", type=int, required=True, help="exit-report socket")
    parser.add_argument("--tid", type=int, default=1)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--preload-jobs", action="store_true")
    parser.add_argument("--spares", type=int, default=1, help="job processes forked ahead")
    args = parser.parse_args(list(argv) if argv is not None else None)
    scrub_environ()  # every child inherits os.environ: no dashboard secret may be in it
    if sys.path[0] != os.getcwd():
        sys.path.insert(0, os.getcwd())  # as run_job.py: job modules are relative to the cwd
    cmd = socket.socket(fileno=args.fd)
    events = socket.socket(fileno=args.events_fd)
    template = Template(cmd, events, args.tid, args.spares)
    template.warm_up(args.preload_jobs)
    forked.set_title(f"bgrunner forkserver (worker {args.parent})")
    return template.serve()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
