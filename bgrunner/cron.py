"""When a schedule's occurrences fall: cron expressions in an IANA timezone, or every N seconds.

Pure arithmetic, no I/O: the worker asks this on every tick for every schedule
(about 20-50 µs a call), and the allowlist checks expressions with it. ``cronsim``
(about 20 ms to import) and ``zoneinfo`` are imported at the first call, so a job
process that never looks at a schedule does not pay for them.

Every host must compute the same occurrences from the same configuration, so:

* ``every = N``: the occurrences are the multiples of N seconds since the epoch
  (UTC), whatever the timezone and whenever the worker started;
* ``cron``: 5 fields (minute hour day-of-month month day-of-week), or 6 with
  seconds first, read as wall-clock times in the schedule's timezone.

Daylight saving time (CONTRACT §11): a local time that does not exist (the hour
skipped when clocks go forward) is **skipped**; one that happens twice (clocks
go back) fires **once, the first time**. cronsim's own timezone handling does
neither: with an aware start it moves a fixed time that falls in the gap to the
gap's end (Debian cron's habit) and steps wildcard hours in absolute time, so
``30 * * * *`` fires at 02:30 before *and* after the clocks go back. So the
iteration here is over *naive* wall times, each converted with ``fold=0`` (the
first of a repeated time), and a wall time that does not survive the round trip
through UTC is dropped. Converted that way, later wall times give later
instants, which is what makes "first occurrence after t" and "latest at or
before t" one forward or backward step each. A gap or a repeated hour is
crossed in one jump (a binary search for the transition), never one candidate
at a time, so a once-a-second cron costs the same on the night clocks change.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime, tzinfo

__all__ = ["check", "check_every", "describe", "latest_at_or_before", "next_after", "spec_key"]

#: One microsecond: a start with a fraction makes cronsim's backward search include the start.
_MICRO = 1e-6
#: Gaps crossed in one search at most (a few a year are real; the bound only rules out a loop).
_MAX_GAPS = 200


# -- validation ----------------------------------------------------------------------------


def check(cron: str | None, timezone: str = "UTC") -> None:
    """Refuse a bad cron expression or an unknown timezone: ValueError with a one-line reason.

    ``cron`` None checks only the timezone (an ``every`` schedule names one too).
    An expression that can never fire (``0 0 30 2 *``) is refused as well.
    """
    _zone(timezone)
    if cron is not None:
        _parse(cron)


def check_every(every: object) -> float:
    """``every`` as a float if it is a positive, finite number of seconds, else ValueError."""
    if isinstance(every, bool) or not isinstance(every, int | float):
        raise ValueError(f"every must be a number of seconds, not {every!r}")
    seconds = float(every)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"every must be a positive number of seconds, not {every!r}")
    return seconds


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    """The IANA timezone ``name`` (cached: the worker converts with it on every tick)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"timezone must be an IANA name such as 'Europe/Berlin', not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as 'UTC' or 'Europe/Berlin')") from None


@functools.lru_cache(maxsize=256)
def _parse(cron: str) -> str:
    """``cron`` with its whitespace normalised, if cronsim accepts it and it ever fires."""
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    if not isinstance(cron, str):
        raise ValueError(f"cron must be a string, not {cron!r}")
    fields = cron.split()
    if len(fields) not in (5, 6):
        count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        raise ValueError(f"cron expression {cron!r} has {count}; it needs 5 "
                         "(minute hour day-of-month month day-of-week), or 6 with seconds first")
    expr = " ".join(fields)
    try:
        it = CronSim(expr, datetime(2000, 1, 1))
    except CronSimError as exc:  # "Bad minute": say which field, in the expression's words
        raise ValueError(f"bad cron expression {cron!r}: {str(exc).lower()} field") from None
    except (ValueError, IndexError, KeyError) as exc:  # guard against odd input cronsim trips on
        raise ValueError(f"bad cron expression {cron!r}: {exc}") from None
    try:
        next(it)
    except StopIteration:
        raise ValueError(f"cron expression {cron!r} never fires") from None
    return expr


# -- occurrences -----------------------------------------------------------------------------


def next_after(t: float, *, cron: str | None = None, every: float | None = None,
               timezone: str = "UTC") -> float:
    """The first occurrence strictly after ``t`` (epoch seconds).

    ValueError for a bad schedule, or a cron with no occurrence in the 50 years after ``t``.
    """
    if every is not None or cron is None:
        n = _every(cron, every)
        k = math.floor(t / n) + 1
        while k * n <= t:  # float rounding of t / n
            k += 1
        while (k - 1) * n > t:
            k -= 1
        return float(k * n)
    expr, tz = _parse(cron), _zone(timezone)
    s = math.floor(t)  # occurrences are whole seconds: after t is after its second
    here = _local(s, tz)
    start = here.replace(tzinfo=None)
    if here.fold == 1:
        # The second pass through a repeated hour: its wall times fired the first time round.
        # Go on from the first instant whose wall time is past the repeat.
        start = _wall(_first(s, s + _fold_span(here), lambda x: _local(x, tz).fold == 0), tz)
        start = _shift(start, -1)  # cronsim yields times after its start
    found = _first_valid(expr, tz, start, reverse=False)
    if found is None:
        from bgrunner.model import iso

        raise ValueError(f"cron expression {cron!r} has no occurrence in the 50 years after {iso(t)}")
    return found


def latest_at_or_before(t: float, *, cron: str | None = None, every: float | None = None,
                        timezone: str = "UTC") -> float | None:
    """The last occurrence at or before ``t``, or None if there is none (in the 50 years before).

    For catch-up: after an outage only the latest missed occurrence fires.
    """
    if every is not None or cron is None:
        n = _every(cron, every)
        k = math.floor(t / n)
        while k * n > t:
            k -= 1
        while (k + 1) * n <= t:
            k += 1
        return float(k * n)
    expr, tz = _parse(cron), _zone(timezone)
    s = math.floor(t)
    here = _local(s, tz)
    if here.fold == 1:
        # Every wall time of the repeated hour happened (the first time) before t.
        end = _first(s, s + _fold_span(here), lambda x: _local(x, tz).fold == 0)
        start = _wall(end, tz)  # exclusive: cronsim steps back from a whole second first
    else:
        start = _shift(here.replace(tzinfo=None), _MICRO)  # inclusive: t itself may be one
    return _first_valid(expr, tz, start, reverse=True)


def _every(cron: str | None, every: float | None) -> float:
    if (cron is None) == (every is None):
        raise ValueError("a schedule needs exactly one of cron and every")
    return check_every(every)


def _first_valid(expr: str, tz: tzinfo, start: datetime, *, reverse: bool) -> float | None:
    """The instant of the first wall time cronsim yields from ``start`` that exists in ``tz``.

    Forward it yields wall times after ``start``; backward, at or before it if
    ``start`` has a fraction of a second, else before it. Later wall times are
    later instants (``fold=0``), so the first one that exists is the answer.
    None when there is none in cronsim's 50 years, or before year 1 / after 9999.
    """
    from cronsim import CronSim

    for _ in range(_MAX_GAPS):
        try:
            wall = next(CronSim(expr, start, reverse=reverse))
        except (StopIteration, OverflowError, ValueError):
            return None
        at = _instant(wall, tz)
        if _wall(at, tz) == wall:
            return at
        # Inside a gap (clocks went forward): this wall time never happens. Cross the whole
        # gap in one step: forward from the wall time the clocks jumped to, backward from the
        # last one before the jump.
        jump = _gap(wall, tz)
        start = _shift(_wall(jump - 1, tz), _MICRO) if reverse else _shift(_wall(jump, tz), -1)
    return None  # a zone whose clocks jump that often is not one the tz database holds


# -- conversions ---------------------------------------------------------------------------


def _local(s: float, tz: tzinfo) -> datetime:
    """The aware local time of instant ``s`` (``fold`` 1 on the second pass of a repeated hour)."""
    from datetime import datetime

    return datetime.fromtimestamp(s, tz)


def _wall(s: float, tz: tzinfo) -> datetime:
    """The naive wall-clock time of instant ``s``."""
    return _local(s, tz).replace(tzinfo=None)


def _instant(wall: datetime, tz: tzinfo, fold: int = 0) -> float:
    """The instant of a naive wall time; ``fold`` 0 is the first of a repeated time."""
    return wall.replace(tzinfo=tz, fold=fold).timestamp()


def _shift(wall: datetime, seconds: float) -> datetime:
    from datetime import timedelta

    return wall + timedelta(seconds=seconds)


def _fold_span(here: datetime) -> int:
    """How long a repeated hour lasts: the first pass's offset minus the second's (seconds)."""
    first, second = here.replace(fold=0).utcoffset(), here.utcoffset()
    assert first is not None and second is not None
    return max(1, math.ceil((first - second).total_seconds()))


def _gap(wall: datetime, tz: tzinfo) -> int:
    """The instant the clocks jumped over ``wall`` (a wall time that does not exist).

    Read with the offset before the jump and with the one after it (``fold``), a
    missing wall time gives two instants on either side of the jump.
    """
    lo, hi = sorted((_instant(wall, tz, fold=0), _instant(wall, tz, fold=1)))
    before = _local(lo, tz).utcoffset()
    return _first(lo, hi, lambda x: _local(x, tz).utcoffset() != before)


def _first(lo: float, hi: float, changed: Callable[[int], bool]) -> int:
    """The first whole second in (lo, hi] where ``changed`` holds (false before it, true from it on)."""
    low, high = math.floor(lo), math.ceil(hi)
    while high - low > 1:
        mid = (low + high) // 2
        if changed(mid):
            high = mid
        else:
            low = mid
    return high


# -- display and identity --------------------------------------------------------------------


def spec_key(*, cron: str | None = None, every: float | None = None, timezone: str = "UTC") -> str:
    """What the store keeps to notice a changed schedule (a new key restarts its sequence).

    Whitespace and letter case of the expression do not count; for ``every`` the
    timezone does not either (its occurrences do not depend on it).
    """
    if every is not None or cron is None:
        return f"every {_every(cron, every)!r}"
    return f"cron {_parse(cron).upper()} {timezone}"


def describe(*, cron: str | None = None, every: float | None = None, timezone: str = "UTC") -> str:
    """One short line for people: ``0 3 * * * (Europe/Berlin)``, ``every 5 min``."""
    if every is not None or cron is None:
        n = _every(cron, every)
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if n >= size and n % size == 0:
                return f"every {n / size:g} {unit}"
        return f"every {n:g} s"
    return f"{' '.join(cron.split())} ({timezone})"
