"""One exception base class; each subclass carries the exit code the CLI maps it to."""

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


class ResultNotSerialisable(JobError):
    """The job's return value is not JSON-serialisable."""


class WaitTimeout(JobError, TimeoutError):
    """The job did not reach a final state in time."""
