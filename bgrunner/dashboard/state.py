"""What every view shares: the settings, one store connection per thread, cached counts.

Store calls block, so views run them in worker threads (``Dashboard.run``).
Each thread gets its own ``Context`` (and so its own database connection:
an SQLite connection's transactions must not interleave between threads),
sharing the one loaded allowlist and event log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from bgrunner import jobs
from bgrunner.allowlist import JobSpec
from bgrunner.context import Context

T = TypeVar("T")

#: Counts are recomputed at most this often (or less, when counting is slow),
#: however many pages and streams ask.
COUNTS_TTL = 1.0
#: Dead job processes are looked for (``jobs.reconcile``) at most this often.
RECONCILE_EVERY = 5.0


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
        self._reconciled_at = 0.0
        self._methods_lock = threading.Lock()
        self._methods: dict[tuple[str, str], Any] = {}

    # -- contexts --------------------------------------------------------------
    def ctx(self) -> Context:
        """This thread's context: its own store connection, the shared config and log."""
        ctx: Context | None = getattr(self._local, "ctx", None)
        if ctx is None:
            base = self.base
            ctx = Context(base.config_path, base.log_dir, base.database_url, base.autostart)
            for shared in ("config", "log"):
                if shared in base.__dict__:  # cached_property values live in __dict__
                    ctx.__dict__[shared] = base.__dict__[shared]
            self._local.ctx = ctx
        return ctx

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(ctx, *args, **kwargs)`` in a worker thread with that thread's context."""

        def call() -> T:
            return fn(self.ctx(), *args, **kwargs)

        return await anyio.to_thread.run_sync(call)

    # -- shared, cached reads ----------------------------------------------------
    def counts(self, ctx: Context) -> dict[str, int]:
        """Jobs per status, cached; also keeps statuses truthful (``jobs.reconcile``).

        Every open page stream asks each second; one query serves them all,
        and it is repeated no more than once per ten times its own duration.
        """
        with self._counts_lock:
            now = time.monotonic()
            if now - self._reconciled_at >= RECONCILE_EVERY:
                self._reconciled_at = now
                try:
                    jobs.reconcile(ctx)
                except Exception:  # a failed check must not take the pages down
                    pass
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
                from bgrunner.dashboard.forms import describe_method

                self._methods[key] = describe_method(spec, method)
            return self._methods[key]

