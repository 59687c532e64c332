"""``/metrics``: Prometheus text read from the store at each scrape (a custom collector).

Nothing is counted in this process: every value comes from the store when
Prometheus asks, so several dashboards (or a restart) never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from bgrunner import procs
from bgrunner.context import Context, host_id
from bgrunner.model import STATUSES, JobStatus
from bgrunner.store.base import Store

#: Upper bounds (seconds) of the duration histogram's buckets.
BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: The histogram covers jobs finished within this many seconds.
DURATION_WINDOW = 3600.0
#: Without a store method for it, attempts are summed over all jobs only up to this many jobs.
ATTEMPTS_WALK_LIMIT = 20_000
#: Without a store method for it, ready jobs are counted up to this many per status.
READY_WALK_LIMIT = 10_000
PAGE = 1000

__all__ = ["CONTENT_TYPE_LATEST", "StoreCollector", "render"]


class StoreCollector:
    """Reads the store on each ``collect()``; ``ctx_of()`` gives the calling thread's context."""

    def __init__(self, ctx_of: Any) -> None:
        self.ctx_of = ctx_of

    def describe(self) -> list[Metric]:
        return []  # names are only known at scrape time; do not collect at registration

    def collect(self) -> Iterator[Metric]:
        ctx: Context = self.ctx_of()
        store = ctx.store
        counts = store.counts()
        jobs = GaugeMetricFamily("bgrunner_jobs", "Jobs in the store, by status.",
                                 labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        attempts = attempts_total(store, sum(counts.values()))
        if attempts is not None:
            yield CounterMetricFamily("bgrunner_attempts",
                                      "Attempts made, over all jobs in the store.", value=attempts)
        yield duration_histogram(store, time.time())
        yield GaugeMetricFamily(
            "bgrunner_queue_depth",
            f"Jobs ready to start and waiting for a slot (counted up to {READY_WALK_LIMIT}).",
            value=ready_count(store, time.time()))
        yield GaugeMetricFamily("bgrunner_running_processes",
                                "Job processes alive now (this host's checked with pid and start time).",
                                value=running_processes(store))


def attempts_total(store: Store, jobs: int) -> int | None:
    """Sum of ``attempts`` over all jobs: from the store if it offers it, else a bounded walk."""
    own = getattr(store, "attempts_total", None)
    if callable(own):
        return int(own())
    if jobs > ATTEMPTS_WALK_LIMIT:
        return None
    return sum(int(job.tries) for job in _walk(store, None, ATTEMPTS_WALK_LIMIT))


def ready_count(store: Store, now: float) -> int:
    """Pending (or released retrying) jobs whose time has come."""
    own = getattr(store, "ready_count", None)
    if callable(own):
        return int(own(now))
    n = 0
    for status in (JobStatus.PENDING, JobStatus.RETRYING):
        n += sum(1 for job in _walk(store, status, READY_WALK_LIMIT)
                 if job.pid is None and job.run_at <= now)
    return n


def running_processes(store: Store) -> int:
    me = host_id()
    alive = 0
    for job in store.active():
        if job.host not in (None, me):
            alive += job.pid is not None  # another host's: trust the store
        elif procs.is_alive(job.pid, job.pid_ctime):
            alive += 1
    return alive


def duration_histogram(store: Store, now: float) -> HistogramMetricFamily:
    seconds = [s for _t, s, _st in store.finished_since(now - DURATION_WINDOW) if s is not None]
    cumulative, buckets = 0, []
    for bound in BUCKETS:
        cumulative = sum(1 for s in seconds if s <= bound)
        buckets.append((_le(bound), cumulative))
    buckets.append(("+Inf", len(seconds)))
    return HistogramMetricFamily(
        "bgrunner_job_duration_seconds",
        f"Run time of the jobs finished in the last {DURATION_WINDOW:.0f} s.",
        buckets=buckets, sum_value=sum(seconds))


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _walk(store: Store, status: str | None, limit: int) -> Iterator[Any]:
    before: int | None = None
    seen = 0
    while seen < limit:
        page = store.list(status=status, before_id=before, limit=min(PAGE, limit - seen))
        if not page:
            return
        yield from page
        seen += len(page)
        before = page[-1].id


def render(ctx_of: Any) -> bytes:
    """One scrape: a fresh registry around the collector (no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(ctx_of))
    return generate_latest(registry)
