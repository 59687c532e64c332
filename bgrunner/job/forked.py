"""A fork-mode job process's own side: get ready, wait for the job, become the job's process.

The fork server's template (``bgrunner.launch.template``) forks each job process
ahead of its job and calls :func:`run` in it; everything from there on is this
module's: get ready, read the job from the pipe, prepare it while the worker
records the pid, wait for ``go``, run the job as ``run_job.py --job-id N``
would (``job.main.run_queued``), exit. Imported by the template, so its
children find it loaded.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from bgrunner.allowlist import Config
    from bgrunner.context import Context

#: The template's parsed allowlist and the bytes it was parsed from.
ConfigCache = tuple[bytes, "Config"]


def run(job_fd: int, config_cache: ConfigCache | None, code_changed: Callable[[], bool]) -> NoReturn:
    """A freshly forked job process: get ready, wait on ``job_fd`` for a job, run it, exit.

    ``code_changed``: whether a file the template imported has changed on disk
    since; then the job runs as a fresh ``run_job.py`` (same pid).
    Random state needs no reseeding: ``random`` does it after every fork.
    """
    code = 1
    try:
        from bgrunner.context import Context
        from bgrunner.job.main import run_queued

        ctx = Context.resolve()
        get_ready(ctx, config_cache)
        pipe = JobPipe(job_fd)
        request = pipe.job()
        if request is None:  # renewed or closed before it got a job
            finish(0)
        job_id, target, method = int(request["job_id"]), str(request["target"]), str(request["method"])
        redirect_output(ctx.output_dir, job_id)
        set_title(f"bgrunner job {job_id} {target}.{method}")

        def wait_for_go() -> bool:
            return pipe.go() or recorded_as_mine(ctx, job_id)

        if code_changed():  # imported code edited since the template read it
            # Not before go: the exec closes the pipe, and the job must be ours to run.
            if not wait_for_go():
                finish(0)
            exec_spawn_mode(target, method, job_id)
        sys.argv = ["run_job.py", target, method, "--job-id", str(job_id)]
        if config_cache is not None:
            ctx.adopt_config(*config_cache)  # the file is read again: only the parsing is spared
        code = run_queued(ctx, target, method, job_id, inline=True, wait_for_go=wait_for_go)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - whatever happens, this process must end here
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        finish(code)


def get_ready(ctx: Context, config_cache: ConfigCache | None = None) -> None:
    """A job process's set-up before it has a job: what any job needs, nothing that goes stale.

    ``config_cache``: the template's parsed allowlist. The log needs its rotation
    settings; taking them from there spares parsing the TOML in every job
    process (~1.2 ms and ~150 page faults here: ``python bench/fork_child.py``).
    The allowlist itself is read from disk only once the job is known.
    """
    from bgrunner import procs

    procs.become_subreaper()
    log = ctx.preset_log(config_cache[1].runner) if config_cache is not None else ctx.log
    log.prepare()
    try:
        ctx.store.get(0)  # opens this process's own connection and warms it
    except Exception:  # noqa: BLE001 - an unreachable store: the job reports it itself
        pass


class JobPipe:
    """A waiting job process's end of its pipe: first the job (a JSON line), later ``go``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def _line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            try:
                chunk = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def job(self) -> dict[str, Any] | None:
        """Block until the job arrives; None when the pipe closes first."""
        line = self._line()
        if line is None:
            return None
        request: dict[str, Any] = json.loads(line)
        return request

    def go(self) -> bool:
        """Block until the worker has recorded this process on the job: True; False if released."""
        try:
            return self._line() == b"go"
        finally:
            os.close(self.fd)


def recorded_as_mine(ctx: Context, job_id: int) -> bool:
    """The pipe closed before ``go``: is the job still running with this process recorded?

    Then the worker recorded it and died (or lost the template) before saying go,
    and the job is this process's to run. Otherwise it was released, or never
    recorded (``jobs.reconcile`` gives such a claim back): run nothing.
    """
    from bgrunner import procs

    try:
        job = ctx.store.get(job_id)
    except Exception:  # noqa: BLE001 - no store: nothing may run unrecorded
        return False
    pid = os.getpid()
    return (job is not None and job.status == "running" and job.pid == pid
            and job.pid_ctime == procs.start_time(pid))


def redirect_output(output_dir: str, job_id: int) -> None:
    """stdin from /dev/null; stdout and stderr appended to the job's output file."""
    from bgrunner.output import open_output

    null = os.open(os.devnull, os.O_RDONLY)
    out = open_output(output_dir, job_id)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


_title_setter: Callable[[str], None] | None = None


def load_title_setter() -> Callable[[str], None] | None:
    """setproctitle's C function, loaded without the package around it (None if not installed).

    ``import setproctitle`` runs the package's ``__init__``, which imports ``logging``
    and with it ``threading``. Both register at-fork handlers, and in the fork
    server's template those would run in every job process it forks (a fork and
    exit cost 0.85 ms here without them, 1.6 ms with them). The extension module
    imports neither, so it is loaded from its file directly.
    """
    global _title_setter
    if _title_setter is not None:
        return _title_setter
    import importlib.machinery
    import importlib.util

    name = "setproctitle._setproctitle"
    module = sys.modules.get(name)
    if module is None:
        try:
            package = importlib.util.find_spec("setproctitle")
        except (ImportError, ValueError):
            return None
        folders = (package.submodule_search_locations or []) if package is not None else []
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        files = [os.path.join(folder, entry) for folder in folders for entry in os.listdir(folder)
                 if entry.startswith("_setproctitle") and entry.endswith(suffixes)]
        spec = importlib.util.spec_from_file_location(name, files[0]) if files else None
        if spec is None or spec.loader is None:
            return None
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError:
            return None
        sys.modules[name] = module
    _title_setter = module.setproctitle
    return _title_setter


def set_title(title: str) -> None:
    """Name the process in ``ps`` (setproctitle, when installed; else nothing)."""
    setter = load_title_setter()
    if setter is not None:
        setter(title)


def exec_spawn_mode(target: str, method: str, job_id: int) -> NoReturn:
    """Replace this process with a fresh ``run_job.py`` (same pid, session and output)."""
    from bgrunner.job.command import job_command

    command = job_command(target, method, job_id)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.execv(command[0], command)


def finish(code: int) -> NoReturn:
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
