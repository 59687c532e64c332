"""Every exception bgrunner raises, in one place.

``JobError`` is the base of what an operation raises to its caller; each
subclass carries the exit code the command line maps it to. ``JobInterrupted``
stands beside it: it is raised *inside* a job, and derives from
``BaseException`` so a job's ``except Exception`` does not swallow it.
``JobMemoryLimit`` and ``JobCpuLimit`` are never raised at all: they name the
outcome of an attempt killed for its resource limits, for ``retry_on``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How ``run_job.py`` and ``bgrunner`` exit (CONTRACT §6, §7)."""

    COMPLETED = 0
    FAILED = 1
    USAGE = 2
    NOT_ALLOWED = 3
    CANCELLED = 4


class JobError(Exception):
    """A bgrunner operation could not be carried out."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(JobError):
    """The command line or the params are not usable."""

    exit_code = ExitCode.USAGE


class ParamsError(UsageError):
    """The params do not fit the method's signature."""


class ConfigError(JobError):
    """The allowlist configuration is missing, unreadable or invalid."""

    exit_code = ExitCode.USAGE


class NotAllowedError(JobError):
    """The target or method is not in the allowlist."""

    exit_code = ExitCode.NOT_ALLOWED


class JobNotFound(JobError):
    """No job has that id."""

    exit_code = ExitCode.FAILED


class StoreError(JobError):
    """The job store could not be opened or used."""

    exit_code = ExitCode.USAGE


class WaitTimeout(JobError, TimeoutError):
    """The job did not reach a final state in time."""


class TargetLoadError(JobError):
    """The allow-listed module, class or method could not be loaded (a failed job, not retried)."""


class ForkServerError(JobError):
    """The fork server's template could not be started or did not fork the job (nothing started)."""


class JobInterrupted(BaseException):
    """Raised inside a job when it is asked to stop (SIGTERM): cancel, timeout or shutdown.

    A ``BaseException`` so that a job's ``except Exception`` does not swallow it
    and its ``finally`` blocks still run.
    """


class JobMemoryLimit(Exception):
    """An attempt's process tree used more memory (RSS) than its target's ``memory_limit_mb``.

    Never raised inside the job: its supervisor kills the tree and records the
    attempt as failed with this name, so ``retry_on = {JobMemoryLimit = 2}``
    matches it. An ``Exception`` (not a ``JobError``): it is a job's outcome,
    not an operation's failure with an exit code.
    """


class JobCpuLimit(Exception):
    """An attempt's process tree used more CPU time than its target's ``cpu_limit_s``.

    Like :class:`JobMemoryLimit`: the supervisor kills the tree and records
    the attempt as failed with this name, for ``retry_on``.
    """
