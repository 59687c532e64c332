"""A job's captured stdout and stderr: one private file per job, ``<log dir>/output/<id>.out``.

Written by the job's process (spawned or forked), read by the CLI and the dashboard.
Both ends go through :mod:`bgrunner.safefiles`: a symbolic link, a FIFO or someone
else's file at ``<id>.out`` is refused (one-line ``UnsafePathError``), never written
through or shown, and a log or output folder others may write in is made private first.
"""

from __future__ import annotations

import os
import sys

from bgrunner.safefiles import check_folder, open_private

#: Bytes of output a viewer gets at most per read (the dashboard's tail and each poll).
OUTPUT_TAIL = 64 * 1024


def output_path(output_dir: str, job_id: int) -> str:
    return os.path.join(output_dir, f"{job_id}.out")


def private_output_dir(output_dir: str) -> str:
    """``output_dir`` and the log folder holding it, created 0700 or made private (a warning says so)."""
    for folder, what in ((os.path.dirname(output_dir) or ".", "log folder"),
                         (output_dir, "output folder")):
        note = check_folder(folder, what)
        if note is not None:
            _warn(note)
    return output_dir


def open_output(output_dir: str, job_id: int) -> int:
    """The job's output file, private, opened for appending (a retry adds to it).

    Raises ``UnsafePathError`` (an ``OSError``) if the file is a link or not ours,
    or the folder is someone else's and open to others.
    """
    private_output_dir(output_dir)
    return open_private(output_path(output_dir, job_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def read_output(output_dir: str, job_id: int, offset: int | None = None,
                limit: int = OUTPUT_TAIL) -> tuple[str, int, bool]:
    """(text, new offset, truncated): the output from ``offset``, or its tail if None.

    At most ``limit`` bytes are read; ``truncated`` says earlier bytes were skipped.
    A missing file is empty output (the job has not started, or printed nothing);
    so is a file that is refused (a link, not a regular file, not ours).
    """
    try:
        fd = open_private(output_path(output_dir, job_id), os.O_RDONLY)
    except OSError:
        return "", offset or 0, False
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - limit) if offset is None else min(max(offset, 0), size)
        truncated = False
        if size - start > limit:
            start, truncated = size - limit, True
        elif offset is None and start > 0:
            truncated = True
        f.seek(start)
        data = f.read(size - start)
    return data.decode("utf-8", "replace"), start + len(data), truncated


def _warn(message: str) -> None:
    try:
        print(f"bgrunner: warning: {message}", file=sys.stderr, flush=True)
    except Exception:  # a job process may have no usable stderr
        pass
