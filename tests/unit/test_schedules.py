"""Schedules over a memory store: each occurrence fires once, catch-up, overlap, pause, changes, listing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgrunner import schedules
from bgrunner.context import Context
from bgrunner.errors import ExitCode, JobNotFound
from bgrunner.model import JobRecord, JobStatus
from bgrunner.store.memory import MemoryStore
from tests.unit.conftest import events, make_ctx

#: 2024-05-01T12:00:00Z, a whole hour (and so a multiple of every 60 s schedule).
T0 = 1_714_564_800.0

ALLOWLIST = """
[jobs."tests.fixtures:Probe"]
methods = ["noop", "mark"]
"""


def schedule(name: str, **keys: object) -> str:
    """A ``[schedules.NAME]`` table of Probe.noop; the keys given (TOML values) added."""
    keys.setdefault("target", '"tests.fixtures:Probe"')
    keys.setdefault("method", '"noop"')
    if "cron" not in keys:
        keys.setdefault("every", "60")
    lines = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return f"\n[schedules.{name}]\n{lines}\n"


class Clock:
    """The store's clock, set by the test (the memory store reads the host's otherwise)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0 + 0.25)
    monkeypatch.setattr(MemoryStore, "clock", lambda self: fake.now)
    return fake


@pytest.fixture
def setup(tmp_path: Path, memory_url: str, host: str, clock: Clock) -> Iterator[Setup]:
    yield Setup(tmp_path, memory_url)


class Setup:
    """Contexts over one memory store, each with an allowlist of its own (the same or another)."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp_path, self.url, self.count = tmp_path, url, 0

    def ctx(self, tables: str) -> Context:
        self.count += 1
        return make_ctx(self.tmp_path, self.url, ALLOWLIST + tables, name=f"allowed_{self.count}.toml")


def tick(ctx: Context, queues: list[str] | None = None) -> float | None:
    return schedules.tick(ctx, queues=queues, log=ctx.log)


def runs(ctx: Context, name: str) -> list[JobRecord]:
    """The jobs the schedule fired, oldest first."""
    return sorted((j for j in ctx.store.list(limit=10_000) if j.schedule == name), key=lambda j: j.id)


def row(ctx: Context, name: str) -> dict[str, object]:
    [found] = [r for r in schedules.listing(ctx) if r["name"] == name]
    return found


# -- firing ----------------------------------------------------------------------------------


def test_a_new_schedule_waits_for_its_next_occurrence_then_fires_it(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely", overlap='"allow"', priority=5, max_attempts=9, queue='"reports"'))
    assert tick(ctx) == pytest.approx(59.75)  # no run for the occurrence at T0: it was before the schedule
    assert runs(ctx, "minutely") == []
    clock.advance(60)
    assert tick(ctx) == pytest.approx(59.75)
    [job] = runs(ctx, "minutely")
    assert (job.scheduled_for, job.queue, job.priority, job.max_attempts) == (T0 + 60, "reports", 5, 9)
    assert (job.target, job.method, job.status) == ("tests.fixtures:Probe", "noop", JobStatus.PENDING)
    assert job.to_dict()["scheduled_for"] == "2024-05-01T12:01:00Z"
    [fired] = events(ctx.log_dir, "schedule_fired")
    assert (fired["schedule"], fired["job_id"], fired["scheduled_for"]) == ("minutely", str(job.id),
                                                                            "2024-05-01T12:01:00Z")
    assert [e["schedule"] for e in events(ctx.log_dir, "job_queued")] == ["minutely"]
    assert tick(ctx) == pytest.approx(59.75) and len(runs(ctx, "minutely")) == 1  # fired once only


def test_three_workers_ticking_at_once_fire_each_occurrence_once(setup: Setup, clock: Clock) -> None:
    tables = schedule("minutely", overlap='"allow"') + schedule("quarter", cron='"*/15 * * * * *"',
                                                                  overlap='"allow"', timezone='"Europe/Berlin"')
    contexts = [setup.ctx(tables) for _ in range(3)]
    steps = 40
    barrier = threading.Barrier(3, action=lambda: clock.advance(7.5))
    errors: list[BaseException] = []

    def work(ctx: Context) -> None:
        try:
            for _ in range(steps):
                barrier.wait()
                tick(ctx)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(ctx,)) for ctx in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    end = T0 + 0.25 + steps * 7.5
    minutely = [j.scheduled_for for j in runs(contexts[0], "minutely")]
    assert minutely == [T0 + 60 * k for k in range(1, int((end - T0) // 60) + 1)]
    quarter = [j.scheduled_for for j in runs(contexts[0], "quarter")]
    assert quarter == [T0 + 15 * k for k in range(1, int((end - T0) // 15) + 1)]
    fired = events(contexts[0].log_dir, "schedule_fired")
    assert len(fired) == len(minutely) + len(quarter)
    assert len({e["job_id"] for e in fired}) == len(fired)


def test_catch_up_fires_only_the_latest_missed_occurrence(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely", overlap='"allow"'))
    tick(ctx)
    clock.advance(10 * 60 + 30)  # no worker for ten minutes
    assert tick(ctx) == pytest.approx(29.75)
    [job] = runs(ctx, "minutely")
    assert job.scheduled_for == T0 + 600
    state = ctx.store.get_schedule("minutely")
    assert state is not None and state.next_at == T0 + 660 and state.last_job_id == job.id
    tick(ctx)
    assert len(runs(ctx, "minutely")) == 1


def test_catch_up_of_a_daily_cron_in_its_timezone(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("nightly", cron='"0 3 * * *"', timezone='"Europe/Berlin"'))
    tick(ctx)
    clock.advance(3 * 86400)
    tick(ctx)
    [job] = runs(ctx, "nightly")
    assert job.to_dict()["scheduled_for"] == "2024-05-04T01:00:00Z"  # 03:00 CEST


def test_overlap_skip_waits_for_the_previous_run_to_end(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely"))  # overlap = "skip" by default
    tick(ctx)
    clock.advance(60)
    tick(ctx)
    [first] = runs(ctx, "minutely")
    clock.advance(60)
    tick(ctx)
    assert runs(ctx, "minutely") == [first]
    [skipped] = events(ctx.log_dir, "schedule_skipped")
    assert skipped["schedule"] == "minutely"
    assert skipped["reason"] == f"previous run {first.id} has not ended"
    assert skipped["level"] == "info"
    ctx.store.cancel(first.id, now=clock.now)
    clock.advance(60)
    tick(ctx)
    assert [j.scheduled_for for j in runs(ctx, "minutely")] == [T0 + 60, T0 + 180]


def test_overlap_allow_fires_while_the_previous_run_goes_on(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely", overlap='"allow"'))
    tick(ctx)
    for _ in range(3):
        clock.advance(60)
        tick(ctx)
    assert [j.status for j in runs(ctx, "minutely")] == [JobStatus.PENDING] * 3
    assert events(ctx.log_dir, "schedule_skipped") == []


def test_a_disabled_schedule_never_fires_and_moves_on(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("off", enabled="false", overlap='"allow"'))
    assert tick(ctx) is None  # nothing to wake up for
    clock.advance(125)
    assert tick(ctx) is None
    assert runs(ctx, "off") == []
    state = ctx.store.get_schedule("off")
    assert state is not None and state.next_at == T0 + 180  # no catch-up once it is enabled again
    [skipped] = events(ctx.log_dir, "schedule_skipped")
    assert (skipped["reason"], skipped["level"]) == ("disabled", "debug")
    listed = row(ctx, "off")
    assert (listed["enabled"], listed["next_run"], listed["paused"]) == (False, None, False)
    on = setup.ctx(schedule("off", overlap='"allow"'))
    clock.advance(60)
    tick(on)
    assert [j.scheduled_for for j in runs(on, "off")] == [T0 + 180]


def test_only_the_queues_a_worker_serves(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("reports", queue='"reports"', overlap='"allow"') + schedule("plain", overlap='"allow"'))
    tick(ctx, ["default"])
    assert ctx.store.get_schedule("reports") is None  # not even synced by a worker of other queues
    clock.advance(60)
    tick(ctx, ["default"])
    assert [j.queue for j in runs(ctx, "plain")] == ["default"] and runs(ctx, "reports") == []
    tick(ctx, ["reports", "other"])
    clock.advance(60)
    tick(ctx, ["reports"])
    assert [j.queue for j in runs(ctx, "reports")] == ["reports"]


def test_a_changed_cron_restarts_the_sequence(setup: Setup, clock: Clock) -> None:
    old = setup.ctx(schedule("hourly", cron='"0 * * * *"', overlap='"allow"'))
    tick(old)
    state = old.store.get_schedule("hourly")
    assert state is not None and state.next_at == T0 + 3600
    clock.advance(3 * 3600)  # the old sequence is hours overdue when the configuration changes
    new = setup.ctx(schedule("hourly", cron='"30 * * * *"', overlap='"allow"'))
    assert tick(new) == pytest.approx(1800 - 0.25)  # no catch-up of the old sequence
    assert runs(new, "hourly") == []
    state = new.store.get_schedule("hourly")
    assert state is not None and state.next_at == T0 + 3 * 3600 + 1800
    assert state.spec == "cron 30 * * * * UTC"
    clock.advance(1800)
    tick(new)
    assert [j.scheduled_for for j in runs(new, "hourly")] == [T0 + 3 * 3600 + 1800]


def test_a_changed_timezone_restarts_it_but_reformatting_does_not(setup: Setup, clock: Clock) -> None:
    setup_a = setup.ctx(schedule("daily", cron='"0 3 * * *"'))
    tick(setup_a)
    first = setup_a.store.get_schedule("daily")
    same = setup.ctx(schedule("daily", cron='" 0  3 * * * "'))
    tick(same)
    assert same.store.get_schedule("daily") == first
    moved = setup.ctx(schedule("daily", cron='"0 3 * * *"', timezone='"Asia/Tokyo"'))
    tick(moved)
    state = moved.store.get_schedule("daily")
    assert state is not None and state.next_at == T0 + 6 * 3600  # 03:00 JST is 18:00 UTC


# -- pause, resume, run now ------------------------------------------------------------------------


def test_pause_stops_it_everywhere_and_resume_goes_on_from_the_next_occurrence(
        setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely", overlap='"allow"'))
    other = setup.ctx(schedule("minutely", overlap='"allow"'))
    tick(ctx)
    assert schedules.pause(ctx, "minutely", actor="cli:alice") is True
    assert schedules.pause(ctx, "minutely", actor="cli:alice") is False
    assert row(other, "minutely")["paused"] is True and row(other, "minutely")["next_run"] is None
    clock.advance(5 * 60)
    assert tick(other) is None
    assert runs(ctx, "minutely") == []
    clock.advance(10)
    assert schedules.resume(other, "minutely", actor="cli:bob") is True
    assert tick(ctx) == pytest.approx(49.75)  # the five missed while paused are not fired
    assert runs(ctx, "minutely") == []
    assert row(ctx, "minutely")["next_run"] == "2024-05-01T12:06:00Z"
    clock.advance(50)
    tick(ctx)
    assert [j.scheduled_for for j in runs(ctx, "minutely")] == [T0 + 360]
    audit = [(a.actor, a.action, a.detail) for a in reversed(ctx.store.audit())]
    assert audit == [("cli:alice", "schedule_pause", "minutely"),
                     ("cli:alice", "schedule_pause", "minutely (already paused)"),
                     ("cli:bob", "schedule_resume", "minutely")]
    assert [e["event"] for e in events(ctx.log_dir, "schedule_paused", "schedule_resumed")] == [
        "schedule_paused", "schedule_paused", "schedule_resumed"]


def test_a_schedule_paused_before_any_worker_saw_it_stays_paused(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely"))
    schedules.pause(ctx, "minutely")
    for _ in range(3):
        tick(ctx)
        clock.advance(60)
    assert runs(ctx, "minutely") == []
    schedules.resume(ctx, "minutely")
    clock.advance(60)
    tick(ctx)
    assert len(runs(ctx, "minutely")) == 1


def test_run_now_queues_one_run_and_leaves_the_sequence_alone(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("minutely"))  # overlap = "skip"
    tick(ctx)
    job_id = schedules.run_now(ctx, "minutely", actor="cli:alice")
    job = ctx.store.get(job_id)
    assert job is not None and (job.schedule, job.scheduled_for) == ("minutely", clock.now)
    state = ctx.store.get_schedule("minutely")
    assert state is not None and state.next_at == T0 + 60 and state.last_job_id == job_id
    assert row(ctx, "minutely")["last_run"] == {"job_id": str(job_id), "status": "pending",
                                                "scheduled_for": "2024-05-01T12:00:00.250000Z"}
    clock.advance(60)
    tick(ctx)  # the manual run is still pending: overlap = "skip" skips this occurrence
    assert [j.id for j in runs(ctx, "minutely")] == [job_id]
    [fired] = events(ctx.log_dir, "schedule_fired")
    assert (fired["job_id"], fired["manual"]) == (str(job_id), True)
    [entry] = ctx.store.audit()
    assert (entry.actor, entry.action, entry.job_id, entry.detail) == ("cli:alice", "schedule_run", job_id,
                                                                       "minutely")


def test_a_paused_or_disabled_schedule_can_still_be_run_by_hand(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("off", enabled="false"))
    schedules.pause(ctx, "off")
    assert ctx.store.get(schedules.run_now(ctx, "off")) is not None


@pytest.mark.parametrize("operation", [schedules.run_now, schedules.pause, schedules.resume])
def test_an_unknown_schedule_is_not_found(setup: Setup, operation: object) -> None:
    ctx = setup.ctx(schedule("minutely"))
    with pytest.raises(JobNotFound, match="no schedule 'nightly'") as caught:
        operation(ctx, "nightly")  # type: ignore[operator]
    assert caught.value.exit_code == ExitCode.FAILED


# -- listing and failures --------------------------------------------------------------------------


def test_listing_shows_every_configured_schedule(setup: Setup, clock: Clock) -> None:
    ctx = setup.ctx(schedule("b-every", every="300", queue='"reports"')
                    + schedule("a-cron", cron='"0 3 * * *"', timezone='"Europe/Berlin"', method='"mark"',
                               params='["/tmp/x"]'))
    rows = schedules.listing(ctx)  # before any worker synced them
    assert [r["name"] for r in rows] == ["a-cron", "b-every"]
    a, b = rows
    assert a == {"name": "a-cron", "target": "tests.fixtures:Probe", "method": "mark", "cron": "0 3 * * *",
                 "every": None, "timezone": "Europe/Berlin", "when": "0 3 * * * (Europe/Berlin)",
                 "queue": "default", "overlap": "skip", "priority": 0, "next_run": "2024-05-02T01:00:00Z",
                 "last_run": None, "paused": False, "enabled": True}
    assert (b["every"], b["when"], b["queue"], b["next_run"]) == (300.0, "every 5 min", "reports",
                                                                  "2024-05-01T12:05:00Z")
    tick(ctx)
    clock.advance(300)
    tick(ctx)
    [job] = runs(ctx, "b-every")
    ctx.store.cancel(job.id, now=clock.now)
    assert row(ctx, "b-every")["last_run"] == {"job_id": str(job.id), "status": "cancelled",
                                               "scheduled_for": "2024-05-01T12:05:00Z"}


def test_a_run_that_cannot_be_built_is_skipped_and_logged(setup: Setup, clock: Clock) -> None:
    """Probe is imported here, so params are bound at fire time: noop takes none."""
    import tests.fixtures  # noqa: F401

    ctx = setup.ctx(schedule("broken", params='["surplus"]', overlap='"allow"') + schedule("fine"))
    tick(ctx)
    clock.advance(60)
    tick(ctx)
    assert runs(ctx, "broken") == [] and len(runs(ctx, "fine")) == 1  # one bad schedule stops no other
    [skipped] = events(ctx.log_dir, "schedule_skipped")
    assert skipped["schedule"] == "broken" and skipped["level"] == "error"
    assert skipped["reason"].startswith("cannot queue a run: ")
    state = ctx.store.get_schedule("broken")
    assert state is not None and state.next_at == T0 + 120  # used up, not tried again every tick
