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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bgrunner import bounds
from bgrunner.cmdline import OneLineParser, add_location_flags, read_params, terminal_text
from bgrunner.errors import ExitCode, JobError, UsageError

if TYPE_CHECKING:
    from bgrunner.allowlist import JobSpec
    from bgrunner.context import Context
    from bgrunner.model import JobRecord, NewJob
    from bgrunner.settle import Outcome


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
    from bgrunner.context import Context, scrub_environ

    scrub_environ()  # job code never sees the dashboard's secrets, even run by hand (CONTRACT §14)
    ctx = Context.resolve(args.config, args.log_dir, args.database_url)
    ctx.check_schedules = False  # a job process never fires them
    if args.job_id is not None:
        return run_queued(ctx, args.target, args.method, args.job_id)
    return _reporting_errors(ctx, args.target, args.method, lambda: run_foreground(ctx, args))


def _reporting_errors(ctx: Context, target: str, method: str, run: Callable[[], int]) -> int:
    """``run()``, with a JobError as one line on stderr, its exit code, and a ``job_rejected`` event."""
    try:
        return run()
    except JobError as exc:
        if exc.exit_code in (ExitCode.USAGE, ExitCode.NOT_ALLOWED):  # refused, not failed
            ctx.log.emit("job_rejected", level="error", target=target, method=method,
                         reason=str(exc))
        print(terminal_text(f"run_job.py: error: {exc}"), file=sys.stderr)
        return exc.exit_code


def run_foreground(ctx: Context, args: argparse.Namespace) -> int:
    """Record the job as running in this process and supervise it here, retries included."""
    from bgrunner.errors import TargetLoadError
    from bgrunner.job import lease
    from bgrunner.job.supervisor import Supervisor
    from bgrunner.model import NewJob
    from bgrunner.settle import Outcome

    spec = ctx.config.check(args.target, args.method)
    _capture_logging_if_set(ctx)
    params = read_params(args.params, args.json_params)
    bounds.check_params(params)  # the limits submit applies (CONTRACT §14), here too
    policy = spec.policy.with_overrides(**_policy_flags(args))
    new = NewJob(target=spec.target, method=args.method, params=params,
                 max_attempts=policy.max_attempts, retry_delay=policy.retry_delay,
                 timeout=policy.timeout)
    try:
        bound = _bind(spec, args.method, params, ctx.config.runner.import_root)
    except TargetLoadError as exc:  # recorded as a failed job; bad params are a usage error
        job = _record_running(ctx, new)
        _fail_unstarted(ctx, job, Outcome.unstartable("load_error", exc))
        print(terminal_text(f"run_job.py: job {job.id} failed: {exc}"), file=sys.stderr)
        return ExitCode.FAILED
    job = _record_running(ctx, new)
    os.environ["BGRUNNER_JOB_ID"] = str(job.id)
    _enter_job(ctx, job)
    lease.hold(ctx, job.id)
    code = Supervisor(ctx, spec, bound.cls, job, bound.args, bound.kwargs, foreground=True).run()
    _report(ctx, job.id)
    return code


def _policy_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--max-attempts``, ``--retry-delay``, ``--timeout`` checked: in range, finite, 64-bit."""
    if args.max_attempts is not None:
        bounds.check_int(args.max_attempts, what="max_attempts", minimum=1)
    return {
        "max_attempts": args.max_attempts,
        "retry_delay": bounds.check_seconds(args.retry_delay, what="retry_delay",
                                            maximum=bounds.MAX_RETRY_DELAY),
        "timeout": bounds.check_seconds(args.timeout, what="timeout", maximum=bounds.MAX_TIMEOUT),
    }


def _record_running(ctx: Context, new: NewJob) -> JobRecord:
    """Record a foreground job as running in this process (attempt 1)."""
    from bgrunner import procs
    from bgrunner.context import host_id

    pid = os.getpid()
    job = ctx.store.get(ctx.store.create_running(
        new, pid=pid, pid_ctime=procs.start_time(pid) or 0.0, host=host_id()))
    assert job is not None
    return job


def _report(ctx: Context, job_id: int) -> None:
    """One line on stderr saying how the foreground job ended (stdout stays the job's)."""
    job = ctx.store.get(job_id)
    if job is None:
        return
    detail = f": {job.error}" if job.error and job.status != "completed" else ""
    print(terminal_text(f"job {job_id} {job.status} after {job.tries} attempt(s){detail}"),
          file=sys.stderr)


def _enter_job(ctx: Context, job: JobRecord) -> None:
    """From here on, lines job code writes (``bgrunner.get_logger()``) carry this job's keys."""
    from bgrunner import joblog

    joblog.enter_job(ctx.log, job_id=str(job.id), target=job.target, method=job.method,
                     attempt=job.attempts)


def _capture_logging_if_set(ctx: Context) -> None:
    """``[runner] capture_logging``: the job's stdlib logging goes to the job log, from before
    its module is imported. Off by default: structlog and ``logging`` are imported only then."""
    if ctx.config.runner.capture_logging:
        from bgrunner import joblog

        joblog.capture_logging()


def _fail_unstarted(ctx: Context, job: JobRecord, outcome: Outcome) -> None:
    """Settle a job that could not start (no longer allowed, import error, bad params): failed."""
    from bgrunner.settle import settle_attempt

    log = ctx.log.bind(job_id=str(job.id), target=job.target, method=job.method)
    settle_attempt(ctx.store, log, job, job.attempts, outcome, None)


@dataclass(frozen=True)
class _Prepared:
    """A job ready to call: its allowlist entry, its class, and its params bound and converted."""

    spec: JobSpec
    cls: type
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class _Unstartable:
    """A job that cannot start, how it is recorded, and the exit code it ends this process with."""

    outcome: Outcome
    exit_code: int


def _bind(spec: JobSpec, method: str, params: list[Any] | dict[str, Any],
          import_root: str | None) -> _Prepared:
    """Import the allowed class (from ``import_root``, else the cwd) and bind the params
    (TargetLoadError, ParamsError)."""
    from bgrunner.binding.loader import load_class, signature_callable, use_import_root
    from bgrunner.binding.params import bind_params

    use_import_root(import_root)
    cls = load_class(spec)
    args, kwargs = bind_params(signature_callable(cls, method), params)
    return _Prepared(spec, cls, args, kwargs)


def _prepare(ctx: Context, job: JobRecord) -> _Prepared | _Unstartable:
    """Check the allowlist as it is on disk now, import, bind: ready, or why the job cannot start."""
    from bgrunner.errors import ParamsError, TargetLoadError
    from bgrunner.settle import Outcome

    try:
        spec = ctx.config.check(job.target, job.method)
    except JobError as exc:
        return _Unstartable(Outcome.unstartable("rejected", exc), exc.exit_code)
    _capture_logging_if_set(ctx)
    try:
        return _bind(spec, job.method, job.params, ctx.config.runner.import_root)
    except ParamsError as exc:
        return _Unstartable(Outcome.unstartable("invalid_params", exc), ExitCode.USAGE)
    except TargetLoadError as exc:
        return _Unstartable(Outcome.unstartable("load_error", exc), ExitCode.FAILED)


def run_queued(ctx: Context, target: str, method: str, job_id: int, *, inline: bool = False,
               wait_for_go: Callable[[], bool] | None = None) -> int:
    """Be the process of a job a launcher has claimed: prepare it, then supervise it.

    Spawned (``run_job.py --job-id N``): this process records itself on the job
    unless the launcher already did. Forked (``wait_for_go``): the launcher
    records it and then says go (False: the job was taken back); nothing is
    written before. ``inline``: a job with no timeout and no resource limit runs in this process,
    without an attempt fork (see ``job.supervisor``).
    """
    return _reporting_errors(ctx, target, method,
                             lambda: _run_queued(ctx, target, method, job_id, inline, wait_for_go))


def _run_queued(ctx: Context, target: str, method: str, job_id: int, inline: bool,
                go: Callable[[], bool] | None) -> int:
    from bgrunner import procs
    from bgrunner.job import lease
    from bgrunner.job.supervisor import Supervisor
    from bgrunner.model import JobStatus

    bounds.check_int(job_id, what="--job-id", minimum=1)
    job = ctx.store.get(job_id)
    if job is None:
        from bgrunner.store.base import redact_url

        raise UsageError(f"no job {job_id} in {redact_url(ctx.database_url)}")
    if (job.target, job.method) != (target, method):
        raise UsageError(f"job {job.id} is {job.target} {job.method}, not {target} {method}")
    pid = os.getpid()
    started = procs.start_time(pid) or 0.0
    recorded = job.pid == pid and job.pid_ctime == started
    if job.status != JobStatus.RUNNING or (go is None and not recorded and not ctx.store.set_process(
            job.id, job.attempts, pid=pid, pid_ctime=started)):
        current = job if job.status != JobStatus.RUNNING else ctx.store.get(job.id)
        return ExitCode.CANCELLED if current is not None and current.status == JobStatus.CANCELLED else 0
    job = replace(job, pid=pid, pid_ctime=started)
    os.environ["BGRUNNER_JOB_ID"] = str(job.id)
    _enter_job(ctx, job)
    lease.hold(ctx, job.id)
    prepared = _prepare(ctx, job)
    if go is not None and not go():
        return 0  # taken back (cancelled since the claim): nothing ran, nothing to record
    if isinstance(prepared, _Unstartable):
        _fail_unstarted(ctx, job, prepared.outcome)
        return prepared.exit_code
    return Supervisor(ctx, prepared.spec, prepared.cls, job, prepared.args, prepared.kwargs,
                      foreground=False, inline=inline).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
