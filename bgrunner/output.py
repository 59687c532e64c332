"""A job's captured stdout and stderr: one private file per job, ``<log dir>/output/<id>.out``.

Written by the job's process (spawned or forked), read by the CLI and the dashboard.
"""

from __future__ import annotations

import os


def output_path(output_dir: str, job_id: int) -> str:
    return os.path.join(output_dir, f"{job_id}.out")


def open_output(output_dir: str, job_id: int) -> int:
    """The job's output file, private, opened for appending (a retry adds to it)."""
    os.makedirs(output_dir, mode=0o700, exist_ok=True)
    return os.open(output_path(output_dir, job_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
