"""Every exception bgrunner raises, in one place.

``JobError`` is the base of what an operation raises to its caller; each
subclass carries the exit code the command line maps it to. ``JobInterrupted``
is the one sibling: it is raised *inside* a job, and derives from
``BaseException`` so a job's ``except Exception`` does not swallow it.
"""

from __future__ import annotations


class JobError(Exception):
    """A bgrunner operation could not be carried out."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(JobError):
    """The command line or the params are not usable."""

    exit_code = 2


class ParamsError(UsageError):
    """The params do not fit the method's signature."""


class ConfigError(JobError):
    """The allowlist configuration is missing, unreadable or invalid."""

    exit_code = 2


class NotAllowedError(JobError):
    """The target or method is not in the allowlist."""

    exit_code = 3


class JobNotFound(JobError):
    """No job has that id."""

    exit_code = 1


class StoreError(JobError):
    """The job store could not be opened or used."""

    exit_code = 2


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
