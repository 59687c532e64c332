"""How a job process is started: ``python run_job.py module:Class method --job-id N``.

The one seam between the parent side and the job side: a job id and, in the
environment, where the store is. Params stay in the store, never on a command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

RUN_JOB = Path(__file__).resolve().parent.parent.parent / "run_job.py"


def job_command(target: str, method: str, job_id: int) -> list[str]:
    """``python run_job.py target method --job-id N`` (no params: they stay in the store)."""
    if RUN_JOB.is_file():
        return [sys.executable, str(RUN_JOB), target, method, "--job-id", str(job_id)]
    return [sys.executable, "-m", "bgrunner.job.main", target, method, "--job-id", str(job_id)]
