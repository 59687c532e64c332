"""The overview's two charts, drawn server-side as SVG: jobs finished per minute, and durations.

Input is ``Store.finished_since`` rows: ``(finished_at, seconds, status)``.
Colours come from CSS classes (the page's style sheet), so the SVG carries no
inline style and passes a strict Content-Security-Policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

Finished = Sequence[tuple[float, float | None, str]]

WIDTH, HEIGHT = 640, 190
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 12, 26
FINAL = ("completed", "failed", "cancelled")
#: More points than this are thinned evenly (the SVG stays small).
MAX_POINTS = 1500


def _x(t: float, start: float, span: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (t - start) / span


def _y(value: float, top: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top if top else 0)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _svg(label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body) + "</svg>"
    )


def _axes(start: float, span: float, top: float, unit: str) -> list[str]:
    bottom = HEIGHT - BOTTOM
    parts = [f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>']
    for frac in (0.5, 1.0):
        y = _y(top * frac, top)
        text = _number(top * frac) + unit
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(text)}</text>")
    parts.append(f'<text class="tick" x="{LEFT - 6}" y="{bottom + 4}" text-anchor="end">0</text>')
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        t = start + span * frac
        x = _x(t, start, span)
        clock = datetime.fromtimestamp(t, UTC).strftime("%H:%M")
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                     f"{clock}</text>")
    return parts


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}"


def throughput(finished: Finished, now: float, minutes: int = 60) -> Markup:
    """Stacked bars: jobs finished in each minute of the last ``minutes``, by final status."""
    start = now - minutes * 60
    buckets = [dict.fromkeys(FINAL, 0) for _ in range(minutes)]
    for finished_at, _seconds, status in finished:
        index = int((finished_at - start) // 60)
        if 0 <= index < minutes and status in FINAL:
            buckets[index][status] += 1
    top = _nice(max((sum(b.values()) for b in buckets), default=0))
    parts = _axes(start, minutes * 60.0, top, "")
    bar = (WIDTH - LEFT - RIGHT) / minutes
    for i, bucket in enumerate(buckets):
        base = 0
        x = LEFT + i * bar + 1
        minute = datetime.fromtimestamp(start + i * 60, UTC).strftime("%H:%M")
        for status in FINAL:
            n = bucket[status]
            if not n:
                continue
            y1, y0 = _y(base + n, top), _y(base, top)
            parts.append(
                f'<rect class="bar {status}" x="{x:.1f}" y="{y1:.1f}" width="{max(bar - 2, 1):.1f}" '
                f'height="{y0 - y1:.1f}"><title>{minute} UTC: {n} {status}</title></rect>')
            base += n
    if not finished:
        parts.append(_empty("no job finished in the last hour"))
    return _svg("jobs finished per minute, last hour", parts)


def durations(finished: Finished, now: float, minutes: int = 60) -> Markup:
    """Dots: each finished job's duration (y) at the time it finished (x)."""
    start = now - minutes * 60
    points = [(t, s, st) for t, s, st in finished if s is not None and s >= 0 and t >= start]
    if len(points) > MAX_POINTS:
        step = len(points) / MAX_POINTS
        points = [points[int(i * step)] for i in range(MAX_POINTS)]
    top = _nice(max((s for _, s, _ in points), default=0))
    parts = _axes(start, minutes * 60.0, top, " s")
    for t, seconds, status in points:
        cls = status if status in FINAL else "other"
        parts.append(
            f'<circle class="dot {cls}" cx="{_x(t, start, minutes * 60.0):.1f}" '
            f'cy="{_y(seconds, top):.1f}" r="3"><title>{seconds:.2f} s, {escape(status)}</title>'
            f"</circle>")
    if not points:
        parts.append(_empty("no durations to show"))
    return _svg("job durations, last hour", parts)


def _empty(text: str) -> str:
    return (f'<text class="empty" x="{(WIDTH + LEFT) / 2:.0f}" y="{HEIGHT / 2:.0f}" '
            f'text-anchor="middle">{escape(text)}</text>')


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
