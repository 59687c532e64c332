"""What every view shares: one store connection per thread, the allowlist, cached reads.

Store calls block, so views run them in worker threads (``Dashboard.run``).
Each thread gets its own ``Context`` (and so its own database connection:
an SQLite connection's transactions must not interleave between threads),
sharing the one loaded allowlist and event log. The allowlist is looked at
again (a ``stat``) at most once per ``CONFIG_CHECK_EVERY`` and parsed again
when its file changed, so a target removed from it can no longer be
dispatched. The dashboard only reads job state: it never reconciles it with
the OS (that would record deaths and relaunch jobs on a read, unaudited);
workers and the launching process do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from bgrunner.allowlist import Config, JobSpec
from bgrunner.context import Context
from bgrunner.dashboard.limits import StreamSlots
from bgrunner.model import JobRecord

T = TypeVar("T")

#: Counts are recomputed at most this often (or less, when counting is slow),
#: however many pages and streams ask.
COUNTS_TTL = 1.0
#: The allowlist file is checked for changes at most this often (seconds).
CONFIG_CHECK_EVERY = 1.0
#: Reads shared by the event streams are this fresh at worst (seconds).
SHARED_TTL = 0.5
#: Shared reads remembered at most (older ones are dropped first).
SHARED_MAX = 2000


class Dashboard:
    """The application's shared state, reached from a request as ``request.app.state.dashboard``."""

    def __init__(self, ctx: Context) -> None:
        self.base = ctx
        self.templates: Any = None  # the Jinja environment, set by create_app
        self._local = threading.local()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._counts_at = 0.0
        self._counts_ttl = COUNTS_TTL
        self._methods_lock = threading.Lock()
        self._methods: dict[tuple[str, str], Any] = {}
        self._config_lock = threading.Lock()
        self._config_stamp = _stamp(ctx.config_path)
        self._config_checked = time.monotonic()
        self._config_version = 0
        self._shared_lock = threading.Lock()
        self._shared: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self.streams = StreamSlots()

    # -- contexts --------------------------------------------------------------
    def ctx(self) -> Context:
        """This thread's context: its own store connection, the shared config and log."""
        ctx: Context | None = getattr(self._local, "ctx", None)
        if ctx is None:
            base = self.base
            ctx = Context(base.config_path, base.log_dir, base.database_url, base.autostart)
            if "log" in base.__dict__:  # cached_property values live in __dict__
                ctx.__dict__["log"] = base.__dict__["log"]
            self._local.ctx = ctx
            self._local.version = -1
        self._fresh_config(ctx)
        return ctx

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(ctx, *args, **kwargs)`` in a worker thread with that thread's context."""

        def call() -> T:
            return fn(self.ctx(), *args, **kwargs)

        return await anyio.to_thread.run_sync(call)

    # -- the allowlist, reloaded when its file changes -------------------------------
    def _fresh_config(self, ctx: Context) -> None:
        """Give this thread's context the allowlist as the file holds it now (checked each second)."""
        with self._config_lock:
            now = time.monotonic()
            if now - self._config_checked >= CONFIG_CHECK_EVERY:
                self._config_checked = now
                stamp = _stamp(self.base.config_path)
                if stamp != self._config_stamp:
                    self._config_stamp = stamp
                    self._config_version += 1
                    self.base.__dict__.pop("config", None)  # parsed again on next use
                    with self._methods_lock:
                        self._methods.clear()
            version = self._config_version
            if self._local.version != version:
                ctx.__dict__.pop("config", None)
                if "config" not in self.base.__dict__:
                    try:
                        self.base.config  # noqa: B018  parsed once for every thread
                    except Exception:  # a broken file: each use raises its ConfigError
                        pass
                if "config" in self.base.__dict__:
                    ctx.__dict__["config"] = self.base.__dict__["config"]
                self._local.version = version

    # -- reads shared by the streams -----------------------------------------------
    def shared(self, key: tuple[Any, ...], fetch: Callable[[], T], *,
               not_before: float | None = None) -> T:
        """``fetch()``, or what it returned for ``key`` less than ``SHARED_TTL`` ago.

        ``not_before`` (monotonic): a read started earlier is not reused. A stream
        passes its opening time, so the page a redirect after an action opens never
        gets a record read before the action.
        """
        now = time.monotonic()
        with self._shared_lock:
            hit = self._shared.get(key)
            if hit is not None and now - hit[0] < SHARED_TTL and (
                    not_before is None or hit[0] >= not_before):
                value: T = hit[1]
                return value
        value = fetch()
        with self._shared_lock:
            if len(self._shared) >= SHARED_MAX:
                for old in [k for k, (at, _) in self._shared.items() if now - at >= SHARED_TTL]:
                    del self._shared[old]
                if len(self._shared) >= SHARED_MAX:
                    self._shared.clear()
            self._shared[key] = (now, value)  # stamped when the read started
        return value

    def record(self, ctx: Context, job_id: int, *, not_before: float | None = None) -> JobRecord | None:
        """The job as the store has it (shared between streams; never reconciled)."""
        return self.shared(("job", job_id), lambda: ctx.store.get(job_id), not_before=not_before)

    # -- shared, cached reads ----------------------------------------------------
    def counts(self, ctx: Context) -> dict[str, int]:
        """Jobs per status, cached.

        Every open page stream asks each second; one query serves them all,
        and it is repeated no more than once per ten times its own duration.
        """
        with self._counts_lock:
            now = time.monotonic()
            if now - self._counts_at >= self._counts_ttl or not self._counts:
                self._counts = ctx.store.counts()
                self._counts_at = time.monotonic()
                # A slow count (a huge store) is repeated less often: at most 10% busy.
                self._counts_ttl = max(COUNTS_TTL, 10 * (self._counts_at - now))
            return dict(self._counts)

    def specs(self, ctx: Context) -> list[JobSpec]:
        """The allowed classes, sorted by target."""
        return [ctx.config.jobs[name] for name in sorted(ctx.config.jobs)]

    def method(self, ctx: Context, target: str, method: str) -> Any:
        """The allowed method's description (see ``forms.describe_method``), cached.

        Raises NotAllowedError for a target or method outside the allowlist;
        only then is nothing imported.
        """
        spec = ctx.config.check(target, method)
        key = (target, method)
        with self._methods_lock:
            if key not in self._methods:
                from bgrunner.binding.loader import use_import_root
                from bgrunner.dashboard.forms import describe_method

                use_import_root(ctx.config.runner.import_root)  # as the job will import it
                self._methods[key] = describe_method(spec, method)
            return self._methods[key]



def known_queues(config: Config) -> list[str]:
    """The queues the allowlist names (its targets' and schedules'), "default" always among them."""
    names = {"default"}
    names.update(spec.policy.queue for spec in config.jobs.values())
    names.update(spec.policy.queue for spec in config.schedules.values())
    return sorted(names)


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """What tells a changed file cheaply: inode, size, modification and change times (ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
