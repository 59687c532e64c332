"""Human-readable output of the CLI: job details, tables, log lines, following files.

Everything here may hold text a job or its submitter chose (params, errors,
tracebacks, progress messages, captured output), and a terminal obeys escape
sequences: OSC 52 writes the clipboard, others retitle the window or rewrite
the screen. So the human format always goes through :func:`terminal_text`,
which shows every control character (C0 but newline and tab, DEL, C1) as an
escape such as ``\\x1b``. A job's captured output (``logs --output``) is
escaped when stdout is a terminal and passed through unchanged otherwise
(``> file`` keeps the exact output). ``--json`` output is escaped by JSON itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgrunner.allowlist import Config

from bgrunner.cmdline import terminal_text
from bgrunner.errors import UsageError
from bgrunner.model import JobRecord, iso
from bgrunner.safefiles import UnsafePathError, open_private

FOLLOW_POLL = 0.2

def progress_bar(progress: dict[str, Any], width: int = 30) -> str:
    done, total = progress.get("done"), progress.get("total")
    message = progress.get("message") or ""
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        frac = max(0.0, min(1.0, done / total))
        filled = int(round(frac * width))
        return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} {done}/{total} {message}".rstrip()
    return f"{done} {message}".rstrip()


def describe_job(job: JobRecord, *, tty: bool) -> str:
    d = job.to_dict()
    lines = [f"job {d['id']}: {d['status']}",
             f"  target:    {job.target} {job.method}",
             f"  params:    {json.dumps(job.params)}",
             f"  attempts:  {job.tries} of {job.max_attempts}",
             f"  priority:  {job.priority}",
             f"  created:   {d['created_at']}",
             f"  run at:    {d['run_at']}"]
    if job.started_at:
        lines.append(f"  started:   {d['started_at']}")
    if job.finished_at:
        lines.append(f"  finished:  {d['finished_at']}")
    if job.pid and not job.is_final:
        lines.append(f"  pid:       {job.pid} on {job.host}")
    if job.progress:
        shown = progress_bar(job.progress) if tty else json.dumps(job.progress)
        lines.append(f"  progress:  {shown}")
    if job.error:
        lines.append(f"  error:     {job.error}")
    if job.result is not None:
        lines.append(f"  result:    {json.dumps(job.result)[:500]}")
    return terminal_text("\n".join(lines))


def table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """Aligned columns, every cell escaped for the terminal."""
    cells = [tuple(terminal_text("" if c is None else str(c)) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *cells])


def job_table(records: list[JobRecord]) -> str:
    if not records:
        return "no jobs"
    return table(("ID", "STATUS", "TARGET", "METHOD", "QUEUE", "TRIES", "CREATED"),
                 [(r.id, r.status, r.target, r.method, r.queue, f"{r.tries}/{r.max_attempts}",
                   (iso(r.created_at) or "")[:19]) for r in records])


def worker_table(rows: list[dict[str, Any]]) -> str:
    """``bgrunner workers``: one line per live worker."""
    if not rows:
        return "no live workers"
    return table(("WORKER", "HOST", "PID", "QUEUES", "SLOTS", "RUNNING", "STARTED", "SEEN"),
                 [(w["id"], w["host"], w["pid"], ",".join(w["queues"]) if w["queues"] else "(all)",
                   w["concurrency"], ",".join(w["running"]) or "-", (w["started_at"] or "")[:19],
                   f"{w['seen_ago']:.0f}s ago") for w in rows])


def schedule_table(rows: list[dict[str, Any]]) -> str:
    """``bgrunner schedules``: one line per configured schedule."""
    if not rows:
        return "no schedules"

    def last(row: dict[str, Any]) -> str:
        run = row.get("last_run")
        return f"{run['job_id']} {run['status']}" if run else "-"

    return table(("NAME", "TARGET", "WHEN", "TZ", "QUEUE", "NEXT RUN", "LAST RUN", "STATE"),
                 [(r["name"], f"{r['target']} {r['method']}",
                   r["cron"] if r.get("cron") else f"every {r['every']:g}s", r["timezone"], r["queue"],
                   (r.get("next_run") or "-")[:19], last(r),
                   "paused" if r.get("paused") else ("disabled" if not r.get("enabled", True) else "active"))
                  for r in rows])


#: Widths of the human format's columns (a longer value pushes the rest along).
LOG_COLUMNS = {"time": 24, "level": 8, "event": 16, "job": 6, "target": 28}
#: Keys that have a column of their own (or, ``traceback``, lines of their own).
_LOG_OWN = frozenset({"timestamp", "level", "event", "job_id", "target", "method", "traceback"})
#: SGR colour of each level's column, on a terminal only.
LEVEL_COLOURS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "1;31"}
_PLAIN_VALUE = re.compile(r"[^\s\"'=]+")


def _shown_time(stamp: Any) -> str:
    """``2024-05-01T12:00:00.123Z``: the file's UTC time to the millisecond, or the value as given."""
    text = "" if stamp is None else str(stamp)
    if len(text) == 27 and text.endswith("Z") and text[19:20] == ".":
        return text[:23] + "Z"
    return text


def _value_text(value: Any) -> str:
    """A value as ``key=value`` shows it: a word as is, other text quoted on one line, the rest as JSON."""
    if isinstance(value, str):
        if _PLAIN_VALUE.fullmatch(value):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'  # control characters: terminal_text shows them as \x1b
    return json.dumps(value, ensure_ascii=False, default=str)


def format_event(event: dict[str, Any], *, colour: bool = False) -> str:
    """One log line for a person: aligned columns (time, level, event, job, target.method), then
    ``key=value`` for the rest and the traceback indented below; control characters escaped.

    ``colour``: the level in its colour (only ever for a terminal).
    """
    w = LOG_COLUMNS
    level = str(event.get("level") or "").lower()
    target, method = event.get("target"), event.get("method")
    where = "-" if target is None else f"{target}.{method}" if method is not None else str(target)
    job = event.get("job_id")
    cells = [terminal_text(_shown_time(event.get("timestamp"))).ljust(w["time"]),
             terminal_text(level.upper()).ljust(w["level"]),
             terminal_text(str(event.get("event", ""))).ljust(w["event"]),
             terminal_text("-" if job is None else str(job)).ljust(w["job"]),
             terminal_text(where).ljust(w["target"])]
    if colour and level in LEVEL_COLOURS:
        cells[1] = f"\x1b[{LEVEL_COLOURS[level]}m{cells[1]}\x1b[0m"
    rest = " ".join(f"{k}={_value_text(v)}" for k, v in event.items() if k not in _LOG_OWN and v is not None)
    text = " ".join(cells) + " " + terminal_text(rest)
    if event.get("traceback"):
        folded = str(event["traceback"]).rstrip().replace("\n", "\n    ")
        text = text.rstrip() + "\n    " + terminal_text(folded)
    return text.rstrip()


def json_line(line: str, event: dict[str, Any]) -> str:
    """The line as written; re-encoded (ASCII, escaped) when another program wrote it otherwise."""
    return line if line.isascii() else json.dumps(event)


def follow_file(path: str, *, follow: bool, raw: bool = False, escape: bool | None = None,
                last: int | None = None, grep: re.Pattern[str] | None = None) -> Iterator[str]:
    """The file's text, then (``follow``) whatever is appended, until interrupted.

    ``raw``: chunks as they come (a job's output), not lines. ``escape``: pass
    the text through :func:`terminal_text`; None means "raw, and stdout is a
    terminal". ``last``: only the last N lines already there (then new ones);
    ``grep``: only lines it finds something in; either means whole lines.
    The file is opened without following a link, and must be a regular file of
    ours (else ``UsageError``, one line).
    """
    if escape is None:
        escape = raw and sys.stdout.isatty()
    while not os.path.exists(path):
        if not follow:
            return
        time.sleep(FOLLOW_POLL)
    try:
        fd = open_private(path, os.O_RDONLY)
    except UnsafePathError as exc:
        raise UsageError(str(exc)) from None
    by_line = not raw or last is not None or grep is not None
    with open(fd, encoding="utf-8", errors="replace") as f:
        if by_line:
            yield from _file_lines(f, follow=follow, escape=escape, last=last, grep=grep)
            return
        while True:
            chunk = f.read()
            if chunk:
                yield terminal_text(chunk) if escape else chunk
                continue
            if not follow:
                return
            time.sleep(FOLLOW_POLL)


def _file_lines(f: Any, *, follow: bool, escape: bool, last: int | None,
                grep: re.Pattern[str] | None) -> Iterator[str]:
    """Whole lines of ``f`` (the last ``last`` of those there, then new ones if ``follow``)."""
    def wanted(line: str) -> bool:
        return grep is None or grep.search(line) is not None

    def shown(line: str) -> str:
        return terminal_text(line) if escape else line

    *whole, partial = f.read().split("\n")
    lines = [line + "\n" for line in whole]
    if partial and not follow:  # the file's last line, without its newline (yet)
        lines.append(partial)
    found = [line for line in lines if wanted(line.rstrip("\n"))]
    if last is not None:
        found = found[-last:] if last > 0 else []
    for line in found:
        yield shown(line)
    while follow:
        chunk = f.read()
        if not chunk:
            time.sleep(FOLLOW_POLL)
            continue
        *whole, partial = (partial + chunk).split("\n")
        for line in whole:
            if wanted(line):
                yield shown(line + "\n")


def allowed_jobs_text(config: Config) -> str:
    """Targets, methods with signatures and the first line of their docstrings."""
    from bgrunner.binding.loader import load_class, signature_callable
    from bgrunner.binding.params import describe_signature
    from bgrunner.errors import TargetLoadError

    out: list[str] = []
    for target, spec in sorted(config.jobs.items()):
        out.append(target)
        try:
            cls = load_class(spec)
        except TargetLoadError as exc:
            out.append(f"  (cannot load: {exc})")
            continue
        for method in spec.methods:
            try:
                func = signature_callable(cls, method)
                sig = describe_signature(func)
            except TargetLoadError as exc:
                out.append(f"  {method}: {exc}")
                continue
            doc = (getattr(cls, method).__doc__ or "").strip().splitlines()
            out.append(f"  {sig}" + (f"  — {doc[0]}" if doc else ""))
    return terminal_text("\n".join(out) if out else f"no jobs are allowed ({config.path})")
