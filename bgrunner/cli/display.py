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

import itertools
import json
import os
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


def format_event(event: dict[str, Any]) -> str:
    head = f"{event.get('timestamp', '')} {str(event.get('level', '')).upper():7} {event.get('event', '')}"
    skip = {"timestamp", "level", "event", "traceback"}
    rest = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                    for k, v in event.items() if k not in skip and v is not None)
    text = f"{head} {rest}".rstrip()
    if event.get("traceback"):
        text += "\n" + str(event["traceback"]).rstrip()
    return terminal_text(text)


def follow_file(path: str, *, follow: bool, raw: bool = False,
                escape: bool | None = None) -> Iterator[str]:
    """The file's text, then (``follow``) whatever is appended, until interrupted.

    ``raw``: chunks as they come (a job's output), not lines. ``escape``: pass
    raw chunks through :func:`terminal_text`; None means "if stdout is a terminal".
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
    with open(fd, encoding="utf-8", errors="replace") as f:
        while True:
            chunk = f.read() if raw else f.readline()
            if chunk:
                yield terminal_text(chunk) if escape else chunk
                continue
            if not follow:
                return
            time.sleep(FOLLOW_POLL)


def read_log_lines(path: str, *, job_id: str | None,
                   follow: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parsed log lines (of one job), rotated files first, skipping a malformed one; follows if asked."""
    from bgrunner.eventlog import log_files

    wanted = None if job_id is None else str(job_id)
    rotated = [p for p in log_files(path) if p != path]
    lines = (line for p in rotated for line in follow_file(p, follow=False))
    for line in itertools.chain(lines, follow_file(path, follow=follow)):
        line = line.rstrip("\n")
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if wanted is not None and str(event.get("job_id")) != wanted:
            continue
        if not line.isascii():  # not bgrunner's writing (its lines are ASCII): re-encode, escaped
            line = json.dumps(event)
        yield line, event


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
