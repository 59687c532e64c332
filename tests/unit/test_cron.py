"""When schedules fire: cron in a timezone (DST: skip the gap, fire a repeated time once), and every N s."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from bgrunner import cron
from bgrunner.cron import check, check_every, describe, latest_at_or_before, next_after, spec_key

BERLIN = "Europe/Berlin"      # 2024-03-31 02:00 CET -> 03:00 CEST; 2024-10-27 03:00 CEST -> 02:00 CET
NEW_YORK = "America/New_York"  # 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST


def at(tz: str, *fields: int, fold: int = 0) -> float:
    """The instant of a wall time in ``tz`` (``fold`` 1: the second of a repeated time)."""
    return datetime(*fields).replace(tzinfo=ZoneInfo(tz), fold=fold).timestamp()  # type: ignore[arg-type]


def shown(t: float | None, tz: str) -> str | None:
    """An instant as local ISO text with its offset, the form the expectations are written in."""
    return None if t is None else datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat()


def run(expr: str, tz: str, start: float, count: int) -> list[str | None]:
    """The next ``count`` occurrences after ``start``, by chaining next_after."""
    out = []
    t = start
    for _ in range(count):
        t = next_after(t, cron=expr, timezone=tz)
        out.append(shown(t, tz))
    return out


def matches(expr: str, wall: datetime) -> bool:
    """Does the naive wall time satisfy the cron fields (cronsim asked about that one second)?"""
    return next(CronSim(expr, wall - timedelta(seconds=1))) == wall


def brute_force(expr: str, tz: str, start: float, end: float, step: int = 60) -> list[float]:
    """The contract's rule spelled out: every instant whose wall time matches, the first pass only.

    Walking instants (not wall times) never meets a wall time that does not exist,
    and ``fold == 0`` keeps the first of a repeated one.
    """
    zone = ZoneInfo(tz)
    found = []
    x = int(start) - int(start) % step + step
    while x <= end:
        local = datetime.fromtimestamp(x, zone)
        if local.fold == 0 and matches(expr, local.replace(tzinfo=None)):
            found.append(float(x))
        x += step
    return found


# -- DST: Europe/Berlin -----------------------------------------------------------------------


def test_a_daily_time_in_the_spring_gap_is_skipped_that_day() -> None:
    """02:30 does not exist on 2024-03-31 in Berlin: no run that day (cronsim alone would run at 03:00)."""
    assert run("30 2 * * *", BERLIN, at(BERLIN, 2024, 3, 30, 12, 0), 2) == [
        "2024-04-01T02:30:00+02:00", "2024-04-02T02:30:00+02:00"]


def test_hourly_and_every_minute_crons_jump_the_spring_gap() -> None:
    assert run("30 * * * *", BERLIN, at(BERLIN, 2024, 3, 31, 0, 0), 3) == [
        "2024-03-31T00:30:00+01:00", "2024-03-31T01:30:00+01:00", "2024-03-31T03:30:00+02:00"]
    assert run("* * * * *", BERLIN, at(BERLIN, 2024, 3, 31, 1, 58), 3) == [
        "2024-03-31T01:59:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:01:00+02:00"]
    assert run("* * * * * *", BERLIN, at(BERLIN, 2024, 3, 31, 1, 59, 58), 3) == [
        "2024-03-31T01:59:59+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:00:01+02:00"]


def test_latest_before_the_spring_gap_ends_is_the_last_time_before_it() -> None:
    end = at(BERLIN, 2024, 3, 31, 3, 0)  # the first instant after the gap
    assert shown(latest_at_or_before(end - 1, cron="* * * * * *", timezone=BERLIN), BERLIN) == \
        "2024-03-31T01:59:59+01:00"
    assert shown(latest_at_or_before(end, cron="* * * * * *", timezone=BERLIN), BERLIN) == \
        "2024-03-31T03:00:00+02:00"
    assert shown(latest_at_or_before(end + 3600, cron="30 2 * * *", timezone=BERLIN), BERLIN) == \
        "2024-03-30T02:30:00+01:00"
    assert shown(latest_at_or_before(end - 1, cron="*/7 * * * *", timezone=BERLIN), BERLIN) == \
        "2024-03-31T01:56:00+01:00"


def test_a_time_that_happens_twice_in_autumn_fires_once_the_first_time() -> None:
    """02:30 happens at +02:00 and again at +01:00 on 2024-10-27: one run, the first."""
    assert run("30 2 * * *", BERLIN, at(BERLIN, 2024, 10, 26, 12, 0), 2) == [
        "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]
    assert run("30 * * * *", BERLIN, at(BERLIN, 2024, 10, 27, 0, 0), 5) == [
        "2024-10-27T00:30:00+02:00", "2024-10-27T01:30:00+02:00", "2024-10-27T02:30:00+02:00",
        "2024-10-27T03:30:00+01:00", "2024-10-27T04:30:00+01:00"]
    assert run("*/20 * * * *", BERLIN, at(BERLIN, 2024, 10, 27, 2, 50), 3) == [
        "2024-10-27T03:00:00+01:00", "2024-10-27T03:20:00+01:00", "2024-10-27T03:40:00+01:00"]


def test_from_inside_the_second_pass_the_repeated_times_are_behind() -> None:
    """At 02:15 +01:00 (the repeat) every 02:xx has fired already, at +02:00."""
    second_pass = at(BERLIN, 2024, 10, 27, 2, 15, fold=1)
    assert shown(second_pass, BERLIN) == "2024-10-27T02:15:00+01:00"
    assert shown(next_after(second_pass, cron="*/20 * * * *", timezone=BERLIN), BERLIN) == \
        "2024-10-27T03:00:00+01:00"
    assert shown(next_after(second_pass, cron="* * * * * *", timezone=BERLIN), BERLIN) == \
        "2024-10-27T03:00:00+01:00"
    assert shown(latest_at_or_before(second_pass, cron="*/20 * * * *", timezone=BERLIN), BERLIN) == \
        "2024-10-27T02:40:00+02:00"
    assert shown(latest_at_or_before(second_pass, cron="* * * * * *", timezone=BERLIN), BERLIN) == \
        "2024-10-27T02:59:59+02:00"
    assert shown(latest_at_or_before(second_pass, cron="0 1 * * *", timezone=BERLIN), BERLIN) == \
        "2024-10-27T01:00:00+02:00"


# -- DST: America/New_York --------------------------------------------------------------------


def test_new_york_spring_gap_and_autumn_repeat() -> None:
    assert run("15 2 * * *", NEW_YORK, at(NEW_YORK, 2024, 3, 9, 12, 0), 2) == [
        "2024-03-11T02:15:00-04:00", "2024-03-12T02:15:00-04:00"]
    assert run("30 1 * * *", NEW_YORK, at(NEW_YORK, 2024, 11, 2, 12, 0), 2) == [
        "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]
    assert run("*/30 * * * *", NEW_YORK, at(NEW_YORK, 2024, 11, 3, 0, 45), 4) == [
        "2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-03T02:00:00-05:00",
        "2024-11-03T02:30:00-05:00"]
    assert run("*/30 * * * *", NEW_YORK, at(NEW_YORK, 2024, 3, 10, 1, 15), 3) == [
        "2024-03-10T01:30:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:30:00-04:00"]


@pytest.mark.parametrize(("tz", "day"), [(BERLIN, (2024, 3, 31)), (BERLIN, (2024, 10, 27)),
                                         (NEW_YORK, (2024, 3, 10)), (NEW_YORK, (2024, 11, 3))])
@pytest.mark.parametrize("expr", ["* * * * *", "*/7 * * * *", "30 * * * *", "0,59 1-3 * * *",
                                  "30 2 * * *", "0 */2 * * *", "45 0-4/2 * * SUN"])
def test_a_dst_day_agrees_with_the_rule_spelled_out(tz: str, day: tuple[int, int, int], expr: str) -> None:
    """Chained next_after, and latest_at_or_before at every minute, match the brute-force rule."""
    start, end = at(tz, *day, 0, 0) - 60, at(tz, *day, 6, 0)
    expected = brute_force(expr, tz, start, end)
    got = []
    t = start
    while (t := next_after(t, cron=expr, timezone=tz)) <= end:
        got.append(t)
    assert got == expected
    for minute in range(int(start) + 60, int(end), 60):
        before = [x for x in expected if x <= minute + 0.5]
        if before:
            assert latest_at_or_before(minute + 0.5, cron=expr, timezone=tz) == before[-1]


# -- cron in general ---------------------------------------------------------------------------


def test_occurrences_are_strictly_after_and_at_or_before() -> None:
    three = at("UTC", 2024, 5, 1, 3, 0)
    assert next_after(three, cron="0 3 * * *") == three + 86400
    assert next_after(three - 0.5, cron="0 3 * * *") == three
    assert latest_at_or_before(three, cron="0 3 * * *") == three
    assert latest_at_or_before(three - 0.001, cron="0 3 * * *") == three - 86400
    assert latest_at_or_before(three + 0.999, cron="0 3 * * *") == three


def test_five_fields_are_six_with_second_zero_and_seconds_come_first() -> None:
    t = at("UTC", 2024, 5, 1, 12, 0, 7)
    assert next_after(t, cron="*/5 * * * *") == next_after(t, cron="0 */5 * * * *")
    assert shown(next_after(t, cron="30 * * * * *"), "UTC") == "2024-05-01T12:00:30+00:00"
    assert shown(next_after(t, cron="*/10 * * * * *"), "UTC") == "2024-05-01T12:00:10+00:00"


def test_the_timezone_moves_the_wall_time() -> None:
    t = at("UTC", 2024, 1, 15, 0, 0)
    assert shown(next_after(t, cron="0 3 * * *", timezone=BERLIN), "UTC") == "2024-01-15T02:00:00+00:00"
    assert shown(next_after(t, cron="0 3 * * *", timezone="Asia/Kolkata"), "UTC") == "2024-01-15T21:30:00+00:00"


def random_cron(rng: random.Random) -> str:
    minute = rng.choice(["*", "0", "*/7", "15,45", "5-10", "59"])
    hour = rng.choice(["*", "0", "2", "*/3", "1-3", "23", "9-17"])
    dom = rng.choice(["*", "*", "1", "15", "L", "29", "1-7"])
    month = rng.choice(["*", "*", "2", "3,10,11", "*/4"])
    dow = rng.choice(["*", "*", "MON-FRI", "0", "SAT#1", "5L"])
    fields = [minute, hour, dom, month, dow]
    if rng.random() < 0.3:
        fields.insert(0, rng.choice(["0", "*/15", "59"]))
    return " ".join(fields)


def test_latest_at_or_before_agrees_with_next_after_on_random_crons() -> None:
    """L = latest(t) is an occurrence (the next one after just before it), L <= t < next_after(L)."""
    rng = random.Random(11)
    zones = ["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "Asia/Kathmandu", "America/Sao_Paulo"]
    for _ in range(400):
        expr, tz = random_cron(rng), rng.choice(zones)
        t = rng.uniform(at("UTC", 2016, 1, 1, 0, 0), at("UTC", 2030, 1, 1, 0, 0))
        latest = latest_at_or_before(t, cron=expr, timezone=tz)
        assert latest is not None, (expr, tz, t)
        assert latest <= t, (expr, tz, t)
        assert next_after(latest, cron=expr, timezone=tz) > t, (expr, tz, t)
        assert next_after(latest - 1, cron=expr, timezone=tz) == latest, (expr, tz, t)
        following = next_after(t, cron=expr, timezone=tz)
        assert following > t and latest_at_or_before(following - 0.5, cron=expr, timezone=tz) == latest


def test_the_ends_of_the_calendar() -> None:
    """Before the first occurrence there is no latest; past year 9999 there is no next (ValueError)."""
    assert shown(latest_at_or_before(0.0, cron="0 0 29 2 *"), "UTC") == "1968-02-29T00:00:00+00:00"
    assert latest_at_or_before(at("UTC", 1, 1, 1, 6, 0), cron="0 12 * * *") is None
    assert latest_at_or_before(at("UTC", 1, 1, 1, 6, 0), cron="0 3 * * *") == at("UTC", 1, 1, 1, 3, 0)
    with pytest.raises(ValueError, match="no occurrence in the 50 years after 9999-12-31T13:00:00Z"):
        next_after(at("UTC", 9999, 12, 31, 13, 0), cron="0 12 * * *")


# -- every N seconds --------------------------------------------------------------------------


def test_every_counts_multiples_since_the_epoch_whatever_the_timezone() -> None:
    assert next_after(600.0, every=300) == 900.0
    assert next_after(599.9, every=300) == 600.0
    assert latest_at_or_before(600.0, every=300) == 600.0
    assert latest_at_or_before(899.99, every=300) == 600.0
    assert next_after(1_700_000_123.4, every=3600, timezone=BERLIN) == 1_700_002_800.0
    assert next_after(10.0, every=0.1) > 10.0
    t = 1_700_000_000.05
    assert latest_at_or_before(t, every=0.1) <= t < next_after(t, every=0.1)  # type: ignore[operator]


def test_exactly_one_of_cron_and_every() -> None:
    with pytest.raises(ValueError, match="exactly one of cron and every"):
        next_after(0.0)
    with pytest.raises(ValueError, match="exactly one of cron and every"):
        latest_at_or_before(0.0, cron="* * * * *", every=60)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "60", None])
def test_every_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="every must be"):
        check_every(bad)


# -- checking, keys, display -----------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "tz", "message"), [
    ("0 3 * *", "UTC", "'0 3 * *' has 4 fields; it needs 5 (minute hour day-of-month month day-of-week), "
                       "or 6 with seconds first"),
    ("* * * * * * *", "UTC", "has 7 fields"),
    ("@daily", "UTC", "'@daily' has 1 field;"),
    ("61 * * * *", "UTC", "bad cron expression '61 * * * *': bad minute field"),
    ("0 25 * * *", "UTC", "bad hour field"),
    ("0 0 32 * *", "UTC", "bad day-of-month field"),
    ("0 0 * 13 *", "UTC", "bad month field"),
    ("0 0 * * FUN", "UTC", "bad day-of-week field"),
    ("61 0 0 * * *", "UTC", "bad second field"),
    ("0 0 30 2 *", "UTC", "bad day-of-month field"),
    ("0 3 * * *", "Europe/Nowhere", "unknown timezone 'Europe/Nowhere' (an IANA name"),
    ("0 3 * * *", "", "timezone must be an IANA name"),
    ("0 3 * * *", "../etc/passwd", "unknown timezone"),
])
def test_check_names_what_is_wrong_in_one_line(expr: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check(expr, tz)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_accepts_good_input_and_a_timezone_alone() -> None:
    check("0 3 * * MON-FRI", BERLIN)
    check("*/10 * * * * *", "UTC")
    check("0 0 L * *", NEW_YORK)
    check(None, "Asia/Tokyo")
    with pytest.raises(ValueError, match="unknown timezone"):
        check(None, "Mars/Olympus")
    with pytest.raises(ValueError, match="bad minute"):
        next_after(0.0, cron="x * * * *")


def test_spec_key_changes_with_what_changes_the_occurrences() -> None:
    base = spec_key(cron="0 3 * * mon", timezone=BERLIN)
    assert base == spec_key(cron=" 0  3 * *   MON ", timezone=BERLIN)
    assert base != spec_key(cron="0 4 * * mon", timezone=BERLIN)
    assert base != spec_key(cron="0 3 * * mon", timezone="UTC")
    assert spec_key(every=300) == spec_key(every=300.0, timezone=BERLIN) != spec_key(every=301)
    assert spec_key(every=300) != spec_key(cron="*/5 * * * *")


def test_describe_is_short() -> None:
    assert describe(cron="0  3 * * *", timezone=BERLIN) == "0 3 * * * (Europe/Berlin)"
    assert describe(every=300) == "every 5 min"
    assert describe(every=7200) == "every 2 h"
    assert describe(every=86400) == "every 1 d"
    assert describe(every=90) == "every 90 s"
    assert describe(every=1.5) == "every 1.5 s"


def test_importing_the_module_does_not_import_cronsim() -> None:
    """The allowlist imports it in every process; cronsim (~20 ms) waits for the first question."""
    code = "import sys, bgrunner.cron; print('cronsim' in sys.modules, 'zoneinfo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert cron.__all__  # the public names are declared
