"""``bgrunner worker``: start ready jobs in order, keep status truthful, shut down gracefully.

Any number of workers may serve one store, on one host or many: each registers
under its own id (host id and pid), serves its queues (default: all), and
claims ready jobs (priority DESC, run_at ASC, id ASC) while it has free slots,
the global cap allows and each target's ``max_running`` / ``rate_limit`` do (the
store checks all three in the claim). It launches each job as a detached
process, reaps them, fires the schedules of its queues that are due, and sleeps
until the next ``run_at`` or occurrence, a submit's wake-up datagram, or a
child's exit, never busy-polling. SIGTERM once: stop claiming, let running jobs
finish (up to ``shutdown_grace``), exit. SIGTERM twice: cancel the running jobs,
exit. An auto-started worker (``--auto``) is one per store and host (a lock file).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bgrunner import jobs, procs, schedules
from bgrunner.context import Context, host_id, machine_id
from bgrunner.errors import ForkServerError, JobError, StoreError
from bgrunner.launch.wakeup import Listener, lock_path, run_dir
from bgrunner.model import WorkerRecord
from bgrunner.signals import StopRequested, stop_signals

if TYPE_CHECKING:
    from bgrunner.launch.forkserver import ForkServer
    from bgrunner.model import JobRecord
    from bgrunner.store.base import Notifications

#: How often the worker checks every active job against the OS, at most (seconds).
RECONCILE_INTERVAL = 2.0
#: A warm shutdown waits this long for running jobs before leaving them to finish alone.
SHUTDOWN_GRACE = 30.0
#: How often the worker looks for jobs of this host cancelled elsewhere, at most (seconds).
CANCEL_CHECK_INTERVAL = 0.5
#: Cancelled jobs older than this are no longer checked for a surviving process.
CANCEL_WINDOW = 3600.0
#: Fork mode: job processes the template keeps forked ahead, at most (one per slot below it).
MAX_SPARES = 4
#: A call to an unreachable store gives up after this long in the worker (its loop then
#: backs off and tries again, still answering signals); job processes wait far longer.
STORE_PATIENCE = 5.0
#: Backoff between rounds while the store is unreachable: doubled up to the maximum.
OUTAGE_BACKOFF = (0.2, 5.0)
#: Ready jobs exist but none may start (the cap, or their targets' limits): look again this often
#: (a finished job wakes PostgreSQL workers at once; this bounds the wait on SQLite).
BLOCKED_POLL = 0.2
#: Schedules are re-read at least this often (seconds), to see pauses, resumes and new rows.
SCHEDULE_CHECK_INTERVAL = 5.0


class JobProcess(Protocol):
    """A launched job's process as the worker tracks it: a spawned ``Popen`` or a forked one."""

    pid: int

    def poll(self) -> int | None: ...


@dataclass
class Child:
    """A job process this worker launched and reaps."""

    proc: JobProcess
    job_id: int
    attempt: int
    pidfd: int | None
    #: Fork mode: the exit code its template reported (a forked process is not our child).
    reported: int | None = None

    def exit_code(self) -> int | None:
        """How it ended, or None while it runs."""
        return self.reported if self.reported is not None else self.proc.poll()


class Worker:
    """The worker of one store on this host (see the module docstring)."""

    def __init__(self, ctx: Context, *, concurrency: int, burst: bool = False,
                 idle_exit: float | None = None, queues: tuple[str, ...] | None = None) -> None:
        self.ctx = ctx
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.idle_exit = idle_exit
        #: The queues this worker serves; None: every queue.
        self.queues = tuple(dict.fromkeys(queues)) if queues else None
        self.children: dict[int, Child] = {}
        self.stop = StopRequested()
        self.selector = selectors.DefaultSelector()
        self.host = host_id()
        self.id = jobs.worker_id(self.host, os.getpid())
        self.limits = ctx.config.limits()
        self.log = ctx.log.bind(worker_pid=os.getpid(), host=self.host)
        self._blocked = False
        self._schedule_check_at = 0.0
        self._last_reconcile = 0.0
        self._last_heartbeat = 0.0
        self._last_cancel_check = 0.0
        self._stopped_ids: set[int] = set()
        self._idle_since = time.monotonic()
        self.notifications: Notifications | None = None
        self.forkserver: ForkServer | None = None
        #: Since when (monotonic) the store has answered without a break; None during an outage.
        self._store_ok_since: float | None = time.monotonic()
        self._outage_backoff = OUTAGE_BACKOFF[0]

    # -- main loop -------------------------------------------------------------
    def run(self) -> int:
        # Signals only set a flag from here on: a SIGTERM during start-up (registering, starting
        # the template) stops the worker cleanly at its first round, its row removed.
        with stop_signals(self.stop):
            return self._run()

    def _run(self) -> int:
        from filelock import FileLock, Timeout

        lock = FileLock(lock_path(self.ctx), mode=0o600)
        if self.idle_exit is not None:  # auto-started: one is enough, another one already runs
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return 0
        self.ctx.store.patience = STORE_PATIENCE
        other = self._register()
        if other is not None:
            lock.release()
            print(f"bgrunner worker: host id {self.host!r} is used by a live worker on another machine"
                  f" (pid {other.pid} there); give each machine its own BGRUNNER_HOST_ID", file=sys.stderr)
            return 1
        listener = Listener(self.ctx)
        try:
            self.selector.register(listener, selectors.EVENT_READ, "wake")
            self.selector.register(self.stop.read_fd, selectors.EVENT_READ, "signal")
            self._listen()
            self._start_forkserver()
            self.log.emit("worker_started", worker=self.id, concurrency=self.concurrency,
                          burst=self.burst, queues=list(self.queues) if self.queues else None,
                          launch="fork" if self.forkserver is not None else "spawn")
            self._heartbeat(force=True)
            jobs.reconcile(self.ctx)  # recover what a killed worker left claimed
            code = self._loop()
            with contextlib.suppress(StoreError):  # left to expire when the store is down
                self.ctx.store.remove_worker(self.id)
            self.log.emit("worker_stopped", running=len(self.children))
            return code
        finally:
            if self.forkserver is not None:
                self.forkserver.close()
            self._drop_notifications()
            listener.close()
            lock.release()

    def _record(self) -> WorkerRecord:
        """This worker's row (the store sets its times)."""
        return WorkerRecord(id=self.id, host=self.host, pid=os.getpid(), queues=self.queues,
                            concurrency=self.concurrency, started_at=0.0, last_seen=0.0,
                            machine=machine_id(run_dir(self.ctx.log_dir)))

    def _register(self) -> WorkerRecord | None:
        """Register this worker; the live worker of another machine holding our host id, if any.

        Workers of one host id on one machine run side by side; the same id in
        use on another machine would make pids checked on the wrong one, so it
        is refused.
        """
        return self.ctx.store.register_worker(self._record(), timeout=self.ctx.config.runner.host_timeout)

    def _loop(self) -> int:
        while True:
            if self.stop.signum is not None:
                return self._shutdown()
            try:
                # Start what is ready first: the periodic checks below are all due after an idle
                # spell, and running them before the claim would delay the job's start.
                self._fire_schedules()
                launched = self._fill_slots()
                self._maybe_reconcile()
                self._heartbeat()
                self._stop_cancelled()
                if launched == 0 and self._done():
                    return 0
                timeout = self._sleep_time()
                self._store_answered()
            except StoreError as exc:
                timeout = self._store_failed(exc)
            self._wait(timeout)
            self._reap_safely()

    # -- riding out store outages ------------------------------------------------------
    def _store_failed(self, exc: StoreError) -> float:
        """The store did not answer: log it once per outage; how long to back off."""
        if self._store_ok_since is not None:
            self.log.emit("store_unreachable", level="error", error=str(exc))
            self._store_ok_since = None
            self._outage_backoff = OUTAGE_BACKOFF[0]
        else:
            self._outage_backoff = min(self._outage_backoff * 2, OUTAGE_BACKOFF[1])
        return self._outage_backoff

    def _store_answered(self) -> None:
        if self._store_ok_since is None:
            self._store_ok_since = time.monotonic()
            self.log.emit("store_reachable")
            self._heartbeat(force=True)
        if self.notifications is None:
            self._listen()

    def _listen(self) -> None:
        """(Re)open the store's notification channel; after a gap, the next claim catches up."""
        notifications = self.ctx.store.listen("bgrunner_jobs", "bgrunner_cancel")
        if notifications is None:
            return
        try:
            self.selector.register(notifications, selectors.EVENT_READ, "notify")  # connects
        except StoreError:
            notifications.close()
            return
        self.notifications = notifications

    def _drop_notifications(self) -> None:
        if self.notifications is not None:
            self.selector.unregister(self.notifications)
            self.notifications.close()
            self.notifications = None

    def _reap_safely(self) -> None:
        try:
            self._reap()
        except StoreError as exc:  # deaths not recorded now are found by reconcile (pid + start time)
            self._store_failed(exc)

    def _wait(self, timeout: float) -> None:
        """Sleep until a wake-up, a signal, a notification or a child's exit; consume them."""
        for key, _ in self.selector.select(timeout):
            if key.data == "wake" and isinstance(key.fileobj, Listener):
                key.fileobj.drain()
            elif key.data == "signal":
                self.stop.drain()
            elif key.data == "notify":
                if self.notifications is None:
                    continue
                try:
                    channels = {channel for channel, _ in self.notifications.events(0)}
                    if any(c.startswith("bgrunner_cancel") for c in channels):
                        self._stop_cancelled(force=True)
                except StoreError as exc:  # the LISTEN connection is lost: reopened once the store answers
                    self._drop_notifications()
                    self._store_failed(exc)

    def _done(self) -> bool:
        """Burst: nothing running and nothing ready. Auto-started: idle for ``idle_exit``."""
        if self.children:
            self._idle_since = time.monotonic()
            return False
        if self.burst:
            if any(j.pid is None and j.host == self.host for j in self.ctx.store.active()):
                return False  # claimed here but never started (a killed worker): reconcile returns it
            nxt = self.ctx.store.next_run_at(queues=self.queues)
            return nxt is None or nxt > time.time()
        if self.idle_exit is not None:
            if self.ctx.store.next_run_at() is not None or self.ctx.store.active():
                self._idle_since = time.monotonic()
                return False
            return time.monotonic() - self._idle_since >= self.idle_exit
        return False

    def _sleep_time(self) -> float:
        wait = min(RECONCILE_INTERVAL, CANCEL_CHECK_INTERVAL, self._heartbeat_interval())
        if self.ctx.config.schedules:
            wait = min(wait, max(0.0, self._schedule_check_at - time.monotonic()))
        if len(self.children) < self.concurrency:
            nxt = self.ctx.store.next_run_at(queues=self.queues)
            if nxt is not None:
                due_in = max(0.0, nxt - time.time())
                # Ready jobs that may not start yet (the cap, their targets' limits) are looked
                # at again soon, not at once: a claim that found nothing startable would spin.
                wait = min(wait, BLOCKED_POLL if self._blocked and due_in == 0 else due_in)
        if self.idle_exit is not None:
            wait = min(wait, max(0.05, self.idle_exit))
        return wait

    # -- claiming and launching ------------------------------------------------------
    def _start_forkserver(self) -> None:
        """Fork mode (the default where fork() exists): a warm template forks each job."""
        if self.ctx.config.runner.launch != "fork" or not hasattr(os, "fork"):
            return
        from bgrunner.launch.forkserver import ForkServer

        server = ForkServer(self.ctx, spares=min(self.concurrency, MAX_SPARES),
                            preload_jobs=self.ctx.config.runner.preload_jobs)
        try:
            server.start()
        except ForkServerError as exc:
            self.log.emit("forkserver_failed", level="error", error=str(exc), fallback="spawn")
            return
        for note in server.notes:
            self.log.emit("forkserver_note", level="warning", note=note)
        self.selector.register(server.fileno(), selectors.EVENT_READ, "forkserver")
        self.forkserver = server

    def _launch(self, job: JobRecord) -> tuple[JobProcess | None, int | None]:
        """Start a claimed job's process: forked by the template, or spawned.

        ``(None, None)``: the job was cancelled since its claim; nothing started.
        """
        if self.forkserver is not None:
            return jobs.launch_forked(self.ctx, self.forkserver, job), None
        proc = jobs.launch(self.ctx, job, watch=False)
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, ("child", proc.pid))
        return proc, pidfd

    def _fill_slots(self) -> int:
        if self.forkserver is not None and self.forkserver.stale():
            self._renew_forkserver()
        launched = 0
        cap = self.ctx.config.runner.cap
        self._blocked = False
        while len(self.children) < self.concurrency:
            job = self.ctx.store.claim_next(now=time.time(), cap=cap, host=self.host, worker=self.id,
                                            queues=self.queues, limits=self.limits)
            if job is None:
                self._blocked = True
                break
            try:
                proc, pidfd = self._launch(job)  # gives the claim back if it cannot start
            except JobError as exc:
                self.log.emit("worker_launch_failed", level="error", job_id=str(job.id),
                              error=str(exc))
                if isinstance(exc, ForkServerError):
                    break  # the template is gone: stale() renews it on the next round
                continue
            if proc is None:
                continue
            self.children[proc.pid] = Child(proc, job.id, job.attempts, pidfd)
            launched += 1
        return launched

    def _fire_schedules(self) -> None:
        """Fire the due occurrences of the schedules of our queues (the store lets one worker win each)."""
        if not self.ctx.config.schedules or time.monotonic() < self._schedule_check_at:
            return
        due_in = schedules.tick(self.ctx, queues=self.queues, log=self.log)
        wait = SCHEDULE_CHECK_INTERVAL if due_in is None else min(SCHEDULE_CHECK_INTERVAL, due_in)
        self._schedule_check_at = time.monotonic() + max(0.0, wait)

    def _renew_forkserver(self) -> None:
        """Code or allowlist changed on disk (or max jobs reached): a fresh template."""
        assert self.forkserver is not None
        try:
            self.forkserver.renew()
            self.log.emit("forkserver_renewed")
        except ForkServerError as exc:
            self.log.emit("forkserver_failed", level="error", error=str(exc))
        self._forget_orphans()

    def _forget_orphans(self) -> None:
        """Jobs whose template died: no exit will be reported; reconcile (pid + start time) has them."""
        assert self.forkserver is not None
        for pid in self.forkserver.orphans():
            self.children.pop(pid, None)

    def _reap(self) -> None:
        if self.forkserver is not None:
            for pid, reported in self.forkserver.exits():
                child = self.children.get(pid)
                if child is not None:
                    child.reported = reported
            self._forget_orphans()
        for pid, child in list(self.children.items()):
            code = child.exit_code()
            if code is None:
                continue
            del self.children[pid]
            if child.pidfd is not None:
                self.selector.unregister(child.pidfd)
                os.close(child.pidfd)
            job = self.ctx.store.get(child.job_id)
            if job is not None and job.owned and job.attempts == child.attempt and job.pid == pid:
                jobs.record_death(self.ctx, job, procs.describe_exit(code), relaunch=False)

    def _maybe_reconcile(self) -> None:
        now = time.monotonic()
        if now - self._last_reconcile >= RECONCILE_INTERVAL:
            self._last_reconcile = now
            jobs.reconcile(self.ctx)

    # -- several hosts on one store -------------------------------------------------------
    def _heartbeat_interval(self) -> float:
        return max(0.2, self.ctx.config.runner.host_timeout / 3)

    def _heartbeat(self, *, force: bool = False) -> None:
        """Say this worker is alive; give up the jobs whose lease expired, wherever they ran.

        Leases are judged only once the store has answered this worker for a whole
        ``host_timeout``: right after an outage (or this worker's start) the job
        processes that rode it out have not had their chance to renew yet.
        """
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self._heartbeat_interval():
            return
        self._last_heartbeat = now
        timeout = self.ctx.config.runner.host_timeout
        if not self.ctx.store.heartbeat(self.id):
            # Our row was dropped (taken for stale during a long pause): register again.
            other = self._register()
            if other is not None:
                self.log.emit("worker_refused", level="error", other_pid=other.pid,
                              error=f"host id {self.host!r} is in use on another machine")
                self.stop.signum = self.stop.signum or 15
        if self._store_ok_since is None or now - self._store_ok_since < timeout:
            return
        for job_id in jobs.recover_expired_leases(self.ctx, self.host, timeout=timeout):
            self.log.emit("lease_expired", job_id=str(job_id), level="warning")
        for worker in jobs.remove_stale_workers(self.ctx, self.id, timeout=timeout):
            self.log.emit("worker_lost", lost_worker=worker.id, lost_host=worker.host, level="warning")

    def _stop_cancelled(self, *, force: bool = False) -> None:
        """Stop this host's processes of jobs cancelled from anywhere (another host included)."""
        now = time.monotonic()
        if not force and now - self._last_cancel_check < CANCEL_CHECK_INTERVAL:
            return
        self._last_cancel_check = now
        for job in self.ctx.store.cancelled_on(self.host, since=time.time() - CANCEL_WINDOW):
            if job.id in self._stopped_ids or not procs.is_alive(job.pid, job.pid_ctime):
                continue
            if len(self._stopped_ids) > 10_000:
                self._stopped_ids.clear()
            if jobs.stop_process(self.ctx, job, wait=False):  # refused unless it proves to be the job's
                self._stopped_ids.add(job.id)

    # -- shutdown ---------------------------------------------------------------------
    def _shutdown(self) -> int:
        """Warm, then cold: the first SIGTERM waits for running jobs; a second one cancels them."""
        self._take_signal()  # before the event: a SIGTERM after it is a second one
        self.log.emit("worker_stopping", running=len(self.children))
        if self._wait_for_children(SHUTDOWN_GRACE, stop_on_signal=True):
            return 0
        for child in list(self.children.values()):
            jobs.cancel(self.ctx, child.job_id, reason="worker stopped (second SIGTERM)", wait=False)
        # The cancels' kill threads die with this process: give them the time they need.
        runner = self.ctx.config.runner
        self._wait_for_children(runner.cancel_grace + procs.SUPERVISOR_EXTRA_GRACE + 2,
                                stop_on_signal=False)
        return 0

    def _take_signal(self) -> None:
        """Consume the stop signal that arrived, so the next one can be told apart."""
        self.stop.signum = None
        self.stop.drain()

    def _wait_for_children(self, seconds: float, *, stop_on_signal: bool) -> bool:
        """Keep reaping (and acting on cancels from elsewhere) until no child runs: True.

        False when ``seconds`` passed first, or (``stop_on_signal``) another stop
        signal arrived.
        """
        deadline = time.monotonic() + seconds
        while self.children:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wait(min(0.5, left))
            self._reap_safely()
            try:
                self._heartbeat()
                self._stop_cancelled()  # a job cancelled from elsewhere must not hold the shutdown
            except StoreError as exc:
                self._store_failed(exc)
            if self.stop.signum is not None:
                self._take_signal()
                if stop_on_signal:
                    return False
        return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None

