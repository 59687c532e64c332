"""The ``bgrunner`` command (also ``python -m bgrunner``): submit, status, list, cancel, logs, worker,
workers, schedules, jobs, prune, dashboard.

Errors are one line on stderr with the exit code of the error's class
(2 usage or config, 3 not allowed, 1 unknown job or nothing to do); never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from bgrunner import bounds
from bgrunner.cmdline import OneLineParser, add_location_flags, read_params, terminal_text
from bgrunner.errors import JobError, UsageError

if TYPE_CHECKING:
    from bgrunner.allowlist import JobSpec
    from bgrunner.context import Context


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bgrunner", description="Background jobs as OS processes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    p = sub.add_parser("submit", help="queue a job; prints its id")
    p.add_argument("target")
    p.add_argument("method")
    p.add_argument("params", nargs="?")
    p.add_argument("--json", dest="json_params", metavar="JSON")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0, metavar="S")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--retry-delay", type=float, metavar="S")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--queue", metavar="Q", help="the queue it waits in (default: its target's)")
    p.add_argument("--unique-key", metavar="K",
                   help="while an active job holds the key, print its id and record nothing")

    p = sub.add_parser("status", help="one job")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="jobs, newest first")
    p.add_argument("--status", choices=("pending", "running", "retrying", "completed", "failed",
                                        "cancelled"))
    p.add_argument("--target")
    p.add_argument("--queue", metavar="Q")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("id")

    p = sub.add_parser("logs", help="log events, of one job or all (rotated files too, oldest first)")
    p.add_argument("id", nargs="?")
    p.add_argument("--errors", action="store_true", help="only the errors log")
    p.add_argument("--follow", "-f", action="store_true", help="then the new lines, until interrupted")
    p.add_argument("--json", action="store_true",
                   help="JSON lines as written (the default when stdout is not a terminal)")
    p.add_argument("--output", action="store_true", help="the job's captured stdout/stderr")
    p.add_argument("--since", metavar="T",
                   help="from T: ISO 8601 (UTC unless it has an offset) or relative: 30s, 10m, 2h, 7d")
    p.add_argument("--until", metavar="T", help="up to T (same forms)")
    p.add_argument("--level", metavar="L", help="at least L: debug < info < warning < error < critical")
    p.add_argument("--event", action="append", metavar="E", dest="events", help="this event (repeatable)")
    p.add_argument("--target", metavar="T", help="this target (module:Class)")
    p.add_argument("--grep", metavar="REGEX", help="lines the regular expression finds something in")
    p.add_argument("-n", "--lines", type=int, metavar="N",
                   help="the last N matches (with --follow: the last N, then new ones)")

    p = sub.add_parser("worker", help="run queued jobs")
    p.add_argument("--queue", action="append", metavar="Q", dest="queues",
                   help="serve this queue (repeatable; default: every queue)")
    p.add_argument("--concurrency", type=int, metavar="N")
    p.add_argument("--burst", action="store_true", help="exit when nothing is ready or running")
    p.add_argument("--auto", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("workers", help="the live workers of this store")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("schedules", help="periodic jobs: list, or run/pause/resume one")
    p.add_argument("action", nargs="?", choices=("run", "pause", "resume"))
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")

    sub.add_parser("jobs", help="the allowed targets and methods")

    p = sub.add_parser("prune", help="delete finished jobs older than an age")
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m, 3600")

    p = sub.add_parser("dashboard", help="the web dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)

    for p in sub.choices.values():
        add_location_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bgrunner.context import Context

    ctx = Context.resolve(args.config, args.log_dir, args.database_url)
    handler = COMMANDS[args.command]
    try:
        return handler(ctx, args)
    except JobError as exc:
        print(terminal_text(f"bgrunner {args.command}: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner import jobs

    params = read_params(args.params, args.json_params)
    bounds.check_params(params)
    bounds.check_int(args.priority, what="--priority")
    delay = bounds.check_seconds(args.delay, what="--delay", maximum=bounds.MAX_DELAY)
    retry_delay = bounds.check_seconds(args.retry_delay, what="--retry-delay",
                                       maximum=bounds.MAX_RETRY_DELAY)
    timeout = bounds.check_seconds(args.timeout, what="--timeout", maximum=bounds.MAX_TIMEOUT)
    if args.max_attempts is not None:
        bounds.check_int(args.max_attempts, what="--max-attempts", minimum=1)
    spec = ctx.config.check(args.target, args.method)  # before anything is imported
    _check_cli_params(spec, args.method, params, ctx.config.runner.import_root)
    new = jobs.prepare(ctx, args.target, args.method, params, priority=args.priority,
                       delay=delay or 0.0, max_attempts=args.max_attempts,
                       retry_delay=retry_delay, timeout=timeout, queue=args.queue,
                       unique_key=args.unique_key)
    print(jobs.submit(ctx, new))
    return 0


def _check_cli_params(spec: JobSpec, method: str, params: list[Any] | dict[str, Any],
                      import_root: str | None) -> None:
    """Import the allowed class and bind the params, so a bad value is exit 2 now."""
    from bgrunner.binding.loader import load_class, signature_callable, use_import_root
    from bgrunner.binding.params import bind_params
    from bgrunner.errors import TargetLoadError

    use_import_root(import_root)
    try:
        cls = load_class(spec)
        bind_params(signature_callable(cls, method), params)
    except TargetLoadError as exc:
        raise UsageError(str(exc)) from exc


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner import jobs
    from bgrunner.cli.display import describe_job

    job = jobs.get(ctx, args.id)
    if args.json:
        print(json.dumps(job.to_dict()))
    else:
        print(describe_job(job, tty=sys.stdout.isatty()))
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner.cli.display import job_table

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    bounds.check_int(args.limit, what="--limit", minimum=1)
    if args.queue is not None:
        bounds.check_queue(args.queue, what="--queue")
    records = ctx.store.list(status=args.status, target=args.target, limit=args.limit,
                             queue=args.queue)
    if args.json:
        print(json.dumps([r.to_dict() for r in records]))
    else:
        print(job_table(records))
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    import getpass

    from bgrunner import jobs

    if jobs.cancel(ctx, args.id, actor=f"cli:{getpass.getuser()}"):
        print(f"job {args.id} cancelled")
        return 0
    job = ctx.store.get(jobs.parse_id(args.id))
    state = "unknown" if job is None else f"already {job.status}"
    print(f"bgrunner cancel: job {args.id} is {state}; nothing to cancel", file=sys.stderr)
    return 1


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner import logread
    from bgrunner.safefiles import UnsafePathError

    if args.lines is not None:
        bounds.check_int(args.lines, what="-n", minimum=0)
    if args.output:
        return _show_output(ctx, args)
    filt = logread.LogFilter.parse(
        since=args.since, until=args.until, level=args.level, events=tuple(args.events or ()),
        target=args.target, grep=args.grep, job_id=None if args.id is None else _log_job_id(args.id))
    if filt.since is not None and filt.until is not None and filt.since > filt.until:
        raise UsageError("--since is after --until")
    path = ctx.log.errors_path if args.errors else ctx.log.main_path
    stats = logread.ReadStats()
    tty = sys.stdout.isatty()
    if args.follow:
        lines = logread.follow(path, filt, last=args.lines, stats=stats)
    else:
        lines = logread.read(path, filt, last=args.lines, stats=stats)
    try:
        _print_log_lines(lines, human=tty and not args.json, colour=tty and not os.environ.get("NO_COLOR"),
                         flush=args.follow)
    except UnsafePathError as exc:
        raise UsageError(str(exc)) from None
    finally:
        for problem in stats.unreadable:
            print(terminal_text(f"bgrunner logs: could not read {problem}"), file=sys.stderr)
        if stats.malformed:
            s = "" if stats.malformed == 1 else "s"
            print(f"bgrunner logs: skipped {stats.malformed} malformed line{s}", file=sys.stderr)
    return 0


def _log_job_id(text: str) -> str:
    from bgrunner import jobs

    return str(jobs.parse_id(text))


def _print_log_lines(lines: Any, *, human: bool, colour: bool, flush: bool) -> None:
    from bgrunner.cli.display import format_event, json_line

    write = sys.stdout.write
    for line, event in lines:
        write((format_event(event, colour=colour) if human else json_line(line, event)) + "\n")
        if flush:
            sys.stdout.flush()


def _show_output(ctx: Context, args: argparse.Namespace) -> int:
    """``logs ID --output``: the job's captured stdout/stderr; ``-n`` and ``--grep`` work on its lines."""
    from bgrunner import jobs, logread
    from bgrunner.cli.display import follow_file
    from bgrunner.output import output_path

    if args.id is None:
        raise UsageError("--output needs a job id")
    for flag, value in (("--since", args.since), ("--until", args.until), ("--level", args.level),
                        ("--event", args.events), ("--target", args.target)):
        if value is not None:
            raise UsageError(f"{flag} filters log events, not a job's --output")
    grep = None if args.grep is None else logread.compile_grep(args.grep, what="--grep")
    path = output_path(ctx.output_dir, jobs.parse_id(args.id))
    if not os.path.exists(path) and not args.follow:
        print(f"bgrunner logs: no output captured for job {args.id}", file=sys.stderr)
        return 1
    for chunk in follow_file(path, follow=args.follow, raw=True, last=args.lines, grep=grep,
                             escape=sys.stdout.isatty()):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0


def cmd_worker(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner.worker import Worker

    runner = ctx.config.runner
    concurrency = args.concurrency if args.concurrency is not None else runner.cap
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    bounds.check_int(concurrency, what="--concurrency", minimum=1, maximum=100_000)
    idle = runner.worker_idle_exit if args.auto else None
    queues = tuple(bounds.check_queue(q, what="--queue") for q in args.queues or ())
    return Worker(ctx, concurrency=concurrency, burst=args.burst, idle_exit=idle,
                  queues=queues or None).run()


def cmd_workers(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner import jobs
    from bgrunner.cli.display import worker_table

    rows = jobs.live_workers(ctx)
    print(json.dumps(rows) if args.json else worker_table(rows))
    return 0


def cmd_schedules(ctx: Context, args: argparse.Namespace) -> int:
    import getpass

    from bgrunner import schedules
    from bgrunner.cli.display import schedule_table

    if args.action is None:
        if args.name is not None:
            raise UsageError(f"unknown action {args.name!r}: expected run, pause or resume NAME")
        rows = schedules.listing(ctx)
        print(json.dumps(rows) if args.json else schedule_table(rows))
        return 0
    if args.name is None:
        raise UsageError(f"schedules {args.action} needs a schedule name")
    actor = f"cli:{getpass.getuser()}"
    if args.action == "run":
        print(schedules.run_now(ctx, args.name, actor=actor))
    elif args.action == "pause":
        schedules.pause(ctx, args.name, actor=actor)
        print(f"schedule {args.name} paused")
    else:
        schedules.resume(ctx, args.name, actor=actor)
        print(f"schedule {args.name} resumed")
    return 0


def cmd_jobs(ctx: Context, args: argparse.Namespace) -> int:
    from bgrunner.binding.loader import use_import_root
    from bgrunner.cli.display import allowed_jobs_text

    use_import_root(ctx.config.runner.import_root)
    print(allowed_jobs_text(ctx.config))
    return 0


def parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text[-1:].lower() in units:
            return float(text[:-1]) * units[text[-1].lower()]
        return float(text)
    except ValueError:
        raise UsageError(f"--older-than: not an age: {text!r} (e.g. 30d, 12h, 3600)") from None


def cmd_prune(ctx: Context, args: argparse.Namespace) -> int:
    age = parse_age(args.older_than)
    if age < 0:
        raise UsageError("--older-than must not be negative")
    bounds.check_seconds(age, what="--older-than", maximum=1000 * bounds.MAX_DELAY)
    from bgrunner import jobs

    n = jobs.prune(ctx, finished_before=time.time() - age)  # their output files and old audit too
    print(f"deleted {n} finished job(s)")
    return 0


def cmd_dashboard(ctx: Context, args: argparse.Namespace) -> int:
    bounds.check_int(args.port, what="--port", minimum=0, maximum=65535)
    try:
        from bgrunner.dashboard.server import serve
    except ImportError as exc:
        raise UsageError(f"the dashboard needs its extra: pip install 'bgrunner[dashboard]' ({exc})") from exc
    return serve(ctx, host=args.host, port=args.port)


COMMANDS = {
    "submit": cmd_submit, "status": cmd_status, "list": cmd_list, "cancel": cmd_cancel,
    "logs": cmd_logs, "worker": cmd_worker, "workers": cmd_workers, "schedules": cmd_schedules,
    "jobs": cmd_jobs, "prune": cmd_prune,
    "dashboard": cmd_dashboard,
}
