"""The supervising side of a job's process: attempts, timeouts, retries, and the record of each.

``run_job.py`` becomes the supervisor of its job. Each attempt is forked into a
process group of its own (see ``attempt.py``); the supervisor waits for it with
a deadline, kills its whole tree when the deadline passes or the job is
cancelled, and settles each attempt through ``settle.settle_attempt`` (the one
place that decides on a retry and writes it, fenced by the attempt number).

*Inline* (a queued job with no timeout): the job's process calls the method
itself, without the attempt fork. Nothing needs watching from outside: a
cancel kills the process tree from outside (``jobs.stop_process``), SIGTERM
raises ``JobInterrupted`` in the method, and a process that dies without
recording is noticed by its worker or ``jobs.reconcile`` (``JobCrashed``). A
retry is not slept on in-process: the job is released (``retrying``, no pid)
for a worker to claim into a fresh process when it is due. This saves a
fork, a second process exit and a pipe per job (see bench/RESULTS.md).

*Limits* (``memory_limit_mb``, ``cpu_limit_s``): a job with one set always runs
its attempts in an attempt process, and the wait for it samples the process
tree every 50 ms (``job.limits``); past a limit the tree is killed and the
attempt fails as ``JobMemoryLimit`` / ``JobCpuLimit``. Without limits none of
that is imported or run.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from bgrunner import joblog, procs
from bgrunner.allowlist import JobSpec, Policy
from bgrunner.context import Context
from bgrunner.errors import ExitCode
from bgrunner.eventlog import EventLog
from bgrunner.job.reporting import clean_report
from bgrunner.model import JobRecord, JobStatus
from bgrunner.settle import Complete, Outcome, Retry, settle_attempt
from bgrunner.signals import STOP_SIGNALS, StopRequested, stop_signals

if TYPE_CHECKING:
    from bgrunner.job.limits import Watchdog

#: How often progress reports reach the store at most (seconds).
PROGRESS_INTERVAL = 0.25


class Supervisor:
    """Runs one job to a final state (or hands it back for a later retry)."""

    def __init__(self, ctx: Context, spec: JobSpec, cls: type, job: JobRecord,
                 args: list[Any], kwargs: dict[str, Any], *, foreground: bool,
                 inline: bool = False) -> None:
        self.ctx, self.spec, self.cls, self.job = ctx, spec, cls, job
        self.args, self.kwargs = args, kwargs
        self.foreground = foreground
        self.policy: Policy = spec.policy.for_job(job)
        #: A resource limit is enforced from outside the attempt's process tree, like a deadline.
        self.limited = self.policy.memory_limit_mb is not None or self.policy.cpu_limit_s is not None
        # Inline only where no deadline or limit must be enforced from outside the method's process.
        self.inline = inline and not foreground and self.policy.timeout <= 0 and not self.limited
        self.attempt = job.attempts
        self.log: EventLog = ctx.log.bind(job_id=str(job.id), target=job.target, method=job.method)
        self.stop = StopRequested()
        self._progress_sent = 0.0
        self._progress_pending: dict[str, Any] | None = None

    # -- the job -------------------------------------------------------------------
    def run(self) -> int:
        procs.become_subreaper()  # a grandchild that setsid()s stays in our tree, killable
        with stop_signals(self.stop):
            while True:
                started = time.time()
                joblog.set_attempt(self.attempt)  # the job's own lines: inline, or in the attempt's fork
                self.log.emit("job_started", attempt=self.attempt)
                outcome = self._run_attempt()
                if outcome is None:
                    return self._stopped(started)
                code = self._settle(outcome, started)
                if code is not None:
                    return code

    def _settle(self, outcome: Outcome, started: float) -> int | None:
        """Settle the attempt; an exit code when this process is done, None to run the next attempt."""
        decision = settle_attempt(self.ctx.store, self.log, self.job, self.attempt, outcome,
                                  self.policy, release=self.inline, started_at=started)
        if decision is None:
            return self._lost_race()
        if isinstance(decision, Complete):
            self._enqueue_followups()
            return ExitCode.COMPLETED
        if not isinstance(decision, Retry) or self.inline:
            return ExitCode.FAILED  # failed, or released: a worker claims the next attempt into a new process
        if self._sleep(decision.delay):
            return self._stopped(None)
        if not self.ctx.store.begin_attempt(self.job.id, self.attempt, now=time.time()):
            return self._lost_race()
        self.attempt += 1
        return None

    def _stopped(self, started: float | None) -> int:
        """A stop signal arrived: cancelled (exit 4), or interrupted and handed back for a retry.

        ``started`` None: between attempts (the last one is settled already, the
        job kept here for its next): it is released to the workers as it is.
        """
        store = self.ctx.store
        job = store.get(self.job.id)
        if job is not None and job.status == JobStatus.CANCELLED:
            return ExitCode.CANCELLED
        signame = signal.Signals(self.stop.signum or signal.SIGTERM).name
        if self.foreground:
            # A person stopping a foreground job means cancel it.
            if store.cancel(self.job.id, now=time.time()) is not None:
                self.log.emit("job_cancelled", attempt=self.attempt, reason=f"{signame} received")
            return ExitCode.CANCELLED
        if started is None:
            store.release(self.job.id, self.attempt)
            return ExitCode.FAILED
        settle_attempt(store, self.log, self.job, self.attempt, Outcome.interrupted(signame),
                       self.policy, release=True, started_at=started)
        return ExitCode.FAILED

    def _lost_race(self) -> int:
        """A fenced write did not match: the job was cancelled, or given to a newer attempt."""
        job = self.ctx.store.get(self.job.id)
        if job is not None and job.status == JobStatus.CANCELLED:
            return ExitCode.CANCELLED
        self.log.emit("job_superseded", level="warning", attempt=self.attempt,
                      status=None if job is None else job.status)
        return ExitCode.FAILED

    def _sleep(self, seconds: float) -> bool:
        """Wait between attempts; True if a stop signal arrived meanwhile."""
        deadline = time.monotonic() + seconds
        while self.stop.signum is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.stop.read_fd], [], [], left)
            self.stop.drain()
        return True

    def _enqueue_followups(self) -> None:
        if not self.job.then:
            return
        from bgrunner.jobs import submit_followups

        submit_followups(self.ctx, self.job)

    # -- one attempt -----------------------------------------------------------------
    def _run_attempt(self) -> Outcome | None:
        """Run one attempt: its outcome, or None when a stop signal ended it."""
        if self.inline:
            try:
                return self._call_inline()
            finally:
                self._flush_progress(force=True)
        from bgrunner.job import attempt as attempt_process

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the attempt's process
            os.close(read_fd)
            os.close(self.stop.read_fd)
            os.close(self.stop.write_fd)
            attempt_process.run(write_fd, self.cls, self.job.method, self.args, self.kwargs,
                                self.ctx.config.runner.result_max_bytes, cpu_limit=self.policy.cpu_limit_s)
        os.close(write_fd)
        try:
            return self._watch(pid, read_fd)
        finally:
            os.close(read_fd)
            self._flush_progress(force=True)
            self._reap_orphans()

    def _call_inline(self) -> Outcome | None:
        """Call the method in this process; SIGTERM, SIGINT or SIGHUP raise ``JobInterrupted`` in it."""
        from bgrunner.binding.loader import bound_method
        from bgrunner.errors import JobInterrupted
        from bgrunner.job import reporting
        from bgrunner.job.attempt import encode_result

        def interrupt(signum: int, frame: FrameType | None) -> None:
            self.stop.handler(signum, frame)
            raise JobInterrupted(f"terminated by {signal.Signals(signum).name}")

        reporting._sink = self._on_progress
        try:
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, interrupt)
                if self.stop.signum is not None:  # stopped before the method began
                    raise JobInterrupted("stopped before start")
                value = bound_method(self.cls, self.job.method)(*self.args, **self.kwargs)
            finally:  # from here on a stop signal only sets the flag: the outcome gets recorded
                for sig in STOP_SIGNALS:
                    signal.signal(sig, self.stop.handler)
                reporting._sink = None
        except JobInterrupted:
            return None
        except BaseException as exc:  # everything the job raises is its outcome
            return Outcome.from_exception(exc)
        text, note = encode_result(value, self.ctx.config.runner.result_max_bytes)
        return Outcome.completed(text, note)

    def _on_progress(self, report: dict[str, Any]) -> None:
        self._progress_pending = report  # made by reporting.progress: already clean
        self._flush_progress(force=False)

    def _watch(self, pid: int, read_fd: int) -> Outcome | None:
        """Wait for the attempt's process: its outcome, or None when a stop signal came first."""
        timeout = self.policy.timeout
        deadline = time.monotonic() + timeout if timeout > 0 else None
        watchdog = self._watchdog() if self.limited else None
        usage: Any = None  # the attempt's rusage, read with its exit status when it has limits
        exit_fd = _pidfd(pid)
        buffer = b""
        final: dict[str, Any] | None = None
        status: int | None = None
        watched = [read_fd, self.stop.read_fd] + ([exit_fd] if exit_fd is not None else [])
        try:
            while status is None:
                wait = 0.2 if exit_fd is None else None
                if deadline is not None:
                    left = max(0.0, deadline - time.monotonic())
                    wait = left if wait is None else min(wait, left)
                if watchdog is not None:
                    wait = watchdog.wait() if wait is None else min(wait, watchdog.wait())
                ready, _, _ = select.select(watched, [], [], wait)
                if read_fd in ready:
                    chunk = os.read(read_fd, 65536)
                    if chunk:
                        buffer += chunk
                        buffer, final = self._messages(buffer, final)
                    else:
                        watched.remove(read_fd)
                if self.stop.signum is not None:
                    self._kill_attempt(pid)
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    self._kill_attempt(pid)
                    return Outcome.timed_out(f"timed out after {_secs(timeout)} s "
                                             f"(attempt {self.attempt}); its process tree was killed")
                if watchdog is None:
                    got, wstatus = os.waitpid(pid, os.WNOHANG)
                else:
                    exceeded = watchdog.check()
                    if exceeded is not None:
                        self._kill_attempt(pid, grace=exceeded.grace)
                        return exceeded.outcome()
                    got, wstatus, usage = os.wait4(pid, os.WNOHANG)
                if got == pid:
                    status = wstatus
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        if watchdog is not None and (exceeded := watchdog.at_exit(status, usage)) is not None:
            self._kill_attempt(pid, grace=exceeded.grace)  # what is left of its tree
            return exceeded.outcome()
        buffer, final = self._drain(read_fd, buffer, final)
        return _outcome_from(final, status)

    def _watchdog(self) -> Watchdog:
        """The sampler of this attempt's tree (everything below this process), for its limits."""
        from bgrunner.job.limits import Limits, Watchdog

        limits = Limits.of(self.policy)
        assert limits is not None
        return Watchdog(limits, os.getpid(), grace=self.ctx.config.runner.cancel_grace)

    def _drain(self, read_fd: int, buffer: bytes,
               final: dict[str, Any] | None) -> tuple[bytes, dict[str, Any] | None]:
        os.set_blocking(read_fd, False)
        try:
            while chunk := os.read(read_fd, 65536):
                buffer, final = self._messages(buffer + chunk, final)
        except (BlockingIOError, OSError):
            pass
        return buffer, final

    def _messages(self, buffer: bytes,
                  final: dict[str, Any] | None) -> tuple[bytes, dict[str, Any] | None]:
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "progress":
                self._progress_pending = clean_report(message.get("done"), message.get("total"),
                                                      message.get("message"))
                self._flush_progress(force=False)
            elif message.get("type") in ("result", "error"):
                final = message
        return rest, final

    def _flush_progress(self, *, force: bool) -> None:
        if self._progress_pending is None:
            return
        now = time.monotonic()
        if not force and now - self._progress_sent < PROGRESS_INTERVAL:
            return
        self.ctx.store.set_progress(self.job.id, self.attempt, self._progress_pending)
        self._progress_pending = None
        self._progress_sent = now

    def _kill_attempt(self, pid: int, grace: float | None = None) -> None:
        """Kill the attempt and every descendant (orphans re-parent here: we are a subreaper).

        ``grace``: between SIGTERM and SIGKILL; the runner's ``cancel_grace`` unless given.
        """
        grace = self.ctx.config.runner.cancel_grace if grace is None else grace
        if grace <= 0:  # at once (a memory limit): its group first, before psutil's import and tree walk
            try:
                os.killpg(pid, signal.SIGKILL)  # its group is its pid (attempt.run), ours while unreaped
            except OSError:
                pass
        procs.kill_tree(pid, None, grace=grace)
        procs.kill_tree(os.getpid(), None, grace=min(grace, 1.0), include_root=False)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    @staticmethod
    def _reap_orphans() -> None:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when the child exits (Linux ≥ 5.3), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _secs(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _outcome_from(final: dict[str, Any] | None, status: int | None) -> Outcome:
    """The attempt's last message (a result or an error), or how its process died without one."""
    if final is not None and final.get("type") == "result":
        return Outcome.completed(final.get("result"), final.get("note"))
    if final is not None:
        return Outcome.raised(str(final.get("error")), final.get("traceback"),
                              list(final.get("names") or []))
    return Outcome.crashed(procs.describe_wait_status(status) if status is not None else "vanished")
