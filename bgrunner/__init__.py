"""bgrunner: background jobs as detached OS processes, with no broker.

The job path imports this package, so only cheap names are bound eagerly; the
API functions load their modules on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bgrunner.errors import (
    ConfigError,
    JobCpuLimit,
    JobError,
    JobInterrupted,
    JobMemoryLimit,
    JobNotFound,
    NotAllowedError,
    ParamsError,
    StoreError,
    UsageError,
    WaitTimeout,
)
from bgrunner.job.reporting import cancel_requested, progress

__version__ = "0.1.0"

_LAZY = {
    "run_background_job": "bgrunner.api",
    "get_job": "bgrunner.api",
    "cancel_job": "bgrunner.api",
    "wait_for": "bgrunner.api",
    "list_jobs": "bgrunner.api",
    # structlog is imported by their first call, not by these names: a job that never logs pays nothing
    "get_logger": "bgrunner.joblog",
    "capture_logging": "bgrunner.joblog",
    }

if TYPE_CHECKING:
    from bgrunner.api import cancel_job, get_job, list_jobs, run_background_job, wait_for
    from bgrunner.joblog import capture_logging, get_logger


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgrunner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigError", "JobCpuLimit", "JobError", "JobInterrupted", "JobMemoryLimit", "JobNotFound",
    "NotAllowedError", "ParamsError",
    "StoreError", "UsageError", "WaitTimeout", "cancel_job", "cancel_requested", "capture_logging",
    "get_job", "get_logger", "list_jobs", "progress", "run_background_job", "wait_for",
]
