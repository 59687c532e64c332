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
from bgrunner.allowlist import Config
from bgrunner.context import Context, host_id
from bgrunner.dashboard.state import known_queues
from bgrunner.errors import JobError
from bgrunner.model import STATUSES, JobStatus
from bgrunner.store.base import Store

#: Upper bounds (seconds) of the duration histogram's buckets.
BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: The histogram covers jobs finished within this many seconds.
DURATION_WINDOW = 3600.0
#: Without a store method for it, attempts are summed over all jobs only up to this many jobs.
ATTEMPTS_WALK_LIMIT = 20_000
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
        config = _config(ctx)
        yield from queue_metrics(store, known_queues(config) if config is not None else [])
        yield GaugeMetricFamily("bgrunner_running_processes",
                                "Job processes alive now (this host's checked with pid and start time).",
                                value=running_processes(store))
        if config is not None:
            yield schedule_lateness(store, config)


def attempts_total(store: Store, jobs: int) -> int | None:
    """Sum of ``attempts`` over all jobs: from the store if it offers it, else a bounded walk."""
    own = getattr(store, "attempts_total", None)
    if callable(own):
        return int(own())
    if jobs > ATTEMPTS_WALK_LIMIT:
        return None
    return sum(int(job.tries) for job in _walk(store, None, ATTEMPTS_WALK_LIMIT))


def _config(ctx: Context) -> Config | None:
    """The allowlist, or None when it cannot be read (the store's metrics are served all the same)."""
    try:
        return ctx.config
    except JobError:
        return None


def queue_metrics(store: Store, configured: list[str]) -> Iterator[Metric]:
    """Per queue: jobs ready and waiting for a slot (depth), and jobs running.

    Every queue the allowlist names has a series (0 when empty), so an alert on a
    queue does not vanish when it drains; so has every queue holding jobs.
    """
    counts = store.queue_counts()
    depth = GaugeMetricFamily("bgrunner_queue_depth",
                              "Jobs ready to start and waiting for a worker slot, per queue.",
                              labels=["queue"])
    running = GaugeMetricFamily("bgrunner_queue_running", "Jobs running, per queue.", labels=["queue"])
    for queue in sorted(set(configured) | set(counts)):
        per = counts.get(queue, {})
        depth.add_metric([queue], per.get("ready", 0))
        running.add_metric([queue], per.get(JobStatus.RUNNING, 0))
    yield depth
    yield running


def schedule_lateness(store: Store, config: Config) -> GaugeMetricFamily:
    """Per enabled, unpaused schedule: how late (s) its earliest due occurrence that has not fired is.

    0 while it is on time. It grows when no worker serving the schedule's queue
    runs (or none can reach the store): alert on it rather than on missing runs.
    A schedule no worker has synced yet has no row and no series.
    """
    lateness = GaugeMetricFamily(
        "bgrunner_schedule_lateness_seconds",
        "Seconds the earliest due occurrence of the schedule has waited to be fired (0: on time).",
        labels=["schedule"])
    now = store.clock()
    for state in store.schedules():
        spec = config.schedules.get(state.name)
        if spec is None or not spec.enabled or state.paused or state.next_at is None:
            continue
        lateness.add_metric([state.name], max(0.0, now - state.next_at))
    return lateness


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
