"""``python run_job.py module:Class method [params]``: run one job in the foreground, or a queued one.

Without ``--job-id`` the job is recorded and run here, with retries, and the
exit status tells how it ended (0 completed, 1 failed, 2 usage or config error,
3 not allowed, 4 cancelled). With ``--job-id N`` this process is the job's
process for a queued job that a launcher has claimed: it reads the params from
the store (so they never show in ``ps``) and records the outcome there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bgrunner.cmdline import OneLineParser, add_location_flags, read_params
from bgrunner.errors import JobError, NotAllowedError, UsageError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="run_job.py", description="Run an allow-listed job: "
                      "python run_job.py module:Class method [p1,p2,...]")
    p.add_argument("target", help="module:Class, as listed under [jobs] in the allowlist")
    p.add_argument("method", help="the method to call")
    p.add_argument("params", nargs="?", default=None,
                   help="comma-separated params (\\, is a literal comma), converted to the "
                        "method's annotated types")
    p.add_argument("--json", dest="json_params", metavar="JSON",
                   help="params as a JSON array (positional) or object (keyword)")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--retry-delay", type=float, metavar="S")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--job-id", type=int, metavar="N", help=argparse.SUPPRESS)
    add_location_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bgrunner.context import Context

    ctx = Context.resolve(args.config, args.log_dir, args.database_url)
    return _run(ctx, args)


def main_queued(ctx: Any, target: str, method: str, job_id: int, *, inline: bool = False,
                wait_for_go: Callable[[], bool] | None = None) -> int:
    """``main([target, method, "--job-id", N])`` without parsing a command line.

    For the fork server's children (argparse costs a job process ~1-2 ms): the
    arguments are the ones the worker sent, and ``ctx`` is resolved from the
    same environment a ``run_job.py`` child would read. ``inline``: a job with
    no timeout runs in this process, without an attempt fork (see ``runner``).
    ``wait_for_go``: the launcher records this process on the job itself and
    says when (False: the job was taken back); nothing is written before.
    """
    args = argparse.Namespace(target=target, method=method, params=None, json_params=None,
                              max_attempts=None, retry_delay=None, timeout=None, job_id=job_id,
                              config=None, log_dir=None, database_url=None, inline=inline,
                              wait_for_go=wait_for_go)
    return _run(ctx, args)


def _run(ctx: Any, args: argparse.Namespace) -> int:
    try:
        if args.job_id is not None:
            return run_queued(ctx, args)
        return run_foreground(ctx, args)
    except JobError as exc:
        if isinstance(exc, NotAllowedError | UsageError) or exc.exit_code in (2, 3):
            ctx.log.emit("job_rejected", level="error", target=args.target, method=args.method,
                         reason=str(exc))
        print(f"run_job.py: error: {exc}", file=sys.stderr)
        return exc.exit_code


def run_foreground(ctx: Any, args: argparse.Namespace) -> int:
    from bgrunner import procs
    from bgrunner.binding.loader import load_class, signature_callable
    from bgrunner.binding.params import bind_params
    from bgrunner.context import host_id
    from bgrunner.errors import TargetLoadError
    from bgrunner.job.supervisor import EXIT_FAILED, Supervisor
    from bgrunner.model import NewJob

    spec = ctx.config.check(args.target, args.method)
    params = read_params(args.params, args.json_params)
    policy = spec.policy.with_overrides(max_attempts=args.max_attempts,
                                        retry_delay=args.retry_delay, timeout=args.timeout)
    new = NewJob(target=spec.target, method=args.method, params=params,
                 max_attempts=policy.max_attempts, retry_delay=policy.retry_delay,
                 timeout=policy.timeout)
    pid = os.getpid()
    try:
        cls = load_class(spec)
        call_args, call_kwargs = bind_params(signature_callable(cls, args.method), params)
    except TargetLoadError as exc:
        job_id = ctx.store.create_running(new, pid=pid, pid_ctime=procs.start_time(pid) or 0.0,
                                          host=host_id())
        job = ctx.store.get(job_id)
        fail_unstarted(ctx, job, exc)
        print(f"run_job.py: job {job_id} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    job_id = ctx.store.create_running(new, pid=pid, pid_ctime=procs.start_time(pid) or 0.0,
                                      host=host_id())
    os.environ["BGRUNNER_JOB_ID"] = str(job_id)
    job = ctx.store.get(job_id)
    code = Supervisor(ctx, spec, cls, job, call_args, call_kwargs, foreground=True).run()
    report(ctx, job_id, code)
    return code


def report(ctx: Any, job_id: int, code: int) -> None:
    """One line on stderr saying how the foreground job ended (stdout stays the job's)."""
    job = ctx.store.get(job_id)
    if job is None:
        return
    detail = f": {job.error}" if job.error and job.status != "completed" else ""
    print(f"job {job_id} {job.status} after {job.attempts} attempt(s){detail}", file=sys.stderr)


def fail_unstarted(ctx: Any, job: Any, exc: BaseException, *, outcome: str = "load_error") -> None:
    """Record a job that could not start (import error, bad params) as failed, not retried."""
    from bgrunner.eventlog import format_exception
    from bgrunner.model import JobStatus

    error = str(exc)
    tb = format_exception(exc)
    if ctx.store.finish(job.id, job.attempts, status=JobStatus.FAILED, now=time.time(), error=error,
                        traceback=tb, outcome=outcome):
        ctx.log.emit("job_failed", level="error", job_id=str(job.id), target=job.target,
                     method=job.method, attempt=job.attempts, error=error, traceback=tb,
                     outcome=outcome)


def run_queued(ctx: Any, args: argparse.Namespace) -> int:
    """Run a job a launcher claimed for us: claim the process slot, then supervise it."""
    from bgrunner import procs
    from bgrunner.binding.loader import load_class, signature_callable
    from bgrunner.binding.params import bind_params
    from bgrunner.errors import ParamsError, TargetLoadError
    from bgrunner.job.supervisor import EXIT_CANCELLED, EXIT_FAILED, Supervisor

    job = ctx.store.get(args.job_id)
    if job is None:
        raise UsageError(f"no job {args.job_id} in {ctx.database_url}")
    if (job.target, job.method) != (args.target, args.method):
        raise UsageError(f"job {job.id} is {job.target} {job.method}, not {args.target} {args.method}")
    pid = os.getpid()
    started = procs.start_time(pid) or 0.0
    go: Callable[[], bool] | None = getattr(args, "wait_for_go", None)
    if job.status != "running":
        return EXIT_CANCELLED if job.status == "cancelled" else 0
    # Spawned: the launcher may have recorded this process already; then the write is skipped.
    recorded = job.pid == pid and job.pid_ctime == started
    if go is None and not recorded and not ctx.store.set_process(job.id, job.attempts, pid=pid,
                                                                 pid_ctime=started):
        current = ctx.store.get(job.id)
        return EXIT_CANCELLED if current is not None and current.status == "cancelled" else 0
    job = replace(job, pid=pid, pid_ctime=started)
    os.environ["BGRUNNER_JOB_ID"] = str(job.id)
    try:
        spec = ctx.config.check(job.target, job.method)
    except JobError as exc:
        if go is not None and not go():
            return 0
        fail_unstarted(ctx, job, exc, outcome="rejected")
        return exc.exit_code
    try:
        cls = load_class(spec)
        call_args, call_kwargs = bind_params(signature_callable(cls, job.method), job.params)
    except (TargetLoadError, ParamsError) as exc:
        if go is not None and not go():
            return 0
        fail_unstarted(ctx, job, exc, outcome="invalid_params" if isinstance(exc, ParamsError)
                       else "load_error")
        return 2 if isinstance(exc, ParamsError) else EXIT_FAILED
    if go is not None and not go():
        return 0  # taken back (cancelled since the claim): nothing ran, nothing to record
    return Supervisor(ctx, spec, cls, job, call_args, call_kwargs, foreground=False,
                      inline=getattr(args, "inline", False)).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
