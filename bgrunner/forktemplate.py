"""The fork server's template process: a warm, single-threaded interpreter that forks job processes.

Started by ``bgrunner.forkserver.ForkServer`` as
``python -m bgrunner.forktemplate --fd N --events-fd M --tid T`` (the design is
described in ``bgrunner.forkserver``). It never opens the job store and never
starts a thread, so a forked child inherits nothing it must not share.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from bgrunner.forkserver import WARM_IMPORTS, FileStamp, changed, stamp


class Template:
    """The single-threaded process that forks job processes and reaps them."""

    def __init__(self, cmd: socket.socket, events: socket.socket, tid: int) -> None:
        self.cmd, self.events, self.tid = cmd, events, tid
        self.children: dict[int, int] = {}  # pid -> job id
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
        self.ctx: Any = None
        self.config_cache: tuple[bytes, Any] | None = None

    # -- start -------------------------------------------------------------------------
    def warm_up(self, preload_jobs: bool) -> None:
        """Import what every job needs (and, optionally, the job modules); note what was read."""
        from bgrunner.context import Context

        self.ctx = Context.resolve()
        self.files[self.ctx.config_path] = stamp(self.ctx.config_path)
        self._parse_config()
        store = "postgres" if self.ctx.database_url.startswith("postgres") else "sqlite"
        for name in (*WARM_IMPORTS, f"bgrunner.store.{store}", "setproctitle"):
            self._try_import(name)  # warmth only: a job imports what is missing itself
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
            if name != "setproctitle":
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
        for module in dict.fromkeys(spec.module for spec in specs):
            try:
                found = importlib.util.find_spec(module)
                if found is not None and found.origin and os.path.isfile(found.origin):
                    self.files[found.origin] = stamp(found.origin)
                importlib.import_module(module)
            except BaseException as exc:  # noqa: BLE001 - a broken job module must not stop the template
                self.notes.append(f"job module {module} not preloaded: {type(exc).__name__}: {exc}")

    def _stamp_modules(self) -> None:
        """Stamp every imported file outside the standard library (bgrunner, psutil, jobs)."""
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
        buffer = b""
        while True:
            for key, mask in self.selector.select(timeout=5.0):
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

    def _handle(self, request: dict[str, Any]) -> None:
        if request.get("op") == "retire":
            self.retired = True
            self._send_line({"ok": True})
            return
        if self.retired:
            self._send_line({"error": "this fork server is retired"})
            return
        try:
            pid = self._fork(request)
        except OSError as exc:
            self._send_line({"error": str(exc)})
            return
        self.children[pid] = int(request["job_id"])
        self._send_line({"pid": pid})

    def _send_line(self, message: dict[str, Any]) -> None:
        self.cmd.sendall(json.dumps(message).encode() + b"\n")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.children.pop(pid, None) is not None:
                code = os.waitstatus_to_exitcode(status)
                self.pending.append(f"{self.tid} {pid} {code}".encode())

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
    def _fork(self, request: dict[str, Any]) -> int:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            self._child(int(request["job_id"]), str(request["target"]), str(request["method"]))
        return pid

    def _child(self, job_id: int, target: str, method: str) -> NoReturn:
        """Become the job's process and run it as ``run_job.py … --job-id N`` would."""
        code = 1
        try:
            os.setsid()
            self._leave_template()
            argv = [target, method, "--job-id", str(job_id)]
            _redirect_output(self.ctx.output_dir, job_id)
            _set_title(f"bgrunner job {job_id} {target}.{method}")
            import random

            random.seed()
            if changed(self.code_files):  # imported code edited since the template read it
                _exec_spawn_mode(argv)
            sys.argv = ["run_job.py", *argv]
            from bgrunner.context import Context
            from bgrunner.run_cli import main_queued

            ctx = Context.resolve()
            if self.config_cache is not None:
                ctx.adopt_config(*self.config_cache)
            code = main_queued(ctx, target, method, job_id)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever happens, this process must end here
            try:
                import traceback

                traceback.print_exc()
            except BaseException:  # noqa: BLE001
                pass
        finally:
            _finish(code)

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


#: Signals whose disposition the template changes; a child gets the interpreter's defaults back.
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE)


def _on_sigchld(signum: int, frame: Any) -> None:
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


def _redirect_output(output_dir: str, job_id: int) -> None:
    """stdin from /dev/null; stdout and stderr appended to the job's output file."""
    from bgrunner.launcher import open_output

    null = os.open(os.devnull, os.O_RDONLY)
    out = open_output(output_dir, job_id)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def _exec_spawn_mode(argv: list[str]) -> NoReturn:
    """Replace this process with a fresh ``run_job.py`` (same pid, session and output)."""
    from bgrunner.launcher import job_command

    command = job_command(argv[0], argv[1], int(argv[3]))
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.execv(command[0], command)


def _finish(code: int) -> NoReturn:
    """End the job's process as an interpreter exit would: atexit, flush, then leave."""
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code if 0 <= code <= 255 else 1)


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bgrunner.forktemplate",
                                     description="bgrunner's fork server (started by the worker)")
    parser.add_argument("--fd", type=int, required=True, help="request socket")
    parser.add_argument("--events-fd", type=int, required=True, help="exit-report socket")
    parser.add_argument("--tid", type=int, default=1)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--preload-jobs", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if sys.path[0] != os.getcwd():
        sys.path.insert(0, os.getcwd())  # as run_job.py: job modules are relative to the cwd
    cmd = socket.socket(fileno=args.fd)
    events = socket.socket(fileno=args.events_fd)
    template = Template(cmd, events, args.tid)
    template.warm_up(args.preload_jobs)
    _set_title(f"bgrunner forkserver (worker {args.parent})")
    return template.serve()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
