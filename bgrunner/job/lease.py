"""While a job's process lives: it renews the job's lease on the store's clock, and caps its output.

Whatever started the process (a worker, an auto-starting caller that exits at
once, a foreground ``run_job.py``), the lease is how every other host learns
that the job is still being worked on; a lease older than ``host_timeout``
means its process (or its host) is gone, and a worker anywhere gives the
attempt up (`jobs.recover_expired_leases`). Renewal runs in a daemon thread with
its own store connection, so a job's code never waits for it and a slow store
never stalls the job. The thread's first renewal is one interval after the
start: a job shorter than that never opens a second connection.

The same thread keeps the job's output file (its stdout and stderr) under
`MAX_OUTPUT_BYTES`: past it, all but the last `KEPT_OUTPUT_BYTES` are dropped
and a line says how much, so a chatty job cannot fill the disk.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING

from bgrunner import procs
from bgrunner.errors import StoreError
from bgrunner.store.factory import open_store

if TYPE_CHECKING:
    from bgrunner.context import Context

#: A job's output file is cut back once it grows past this (checked at each renewal).
MAX_OUTPUT_BYTES = 10 * 1024 * 1024
#: What is kept of it then: the newest bytes.
KEPT_OUTPUT_BYTES = 1024 * 1024


def hold(ctx: Context, job_id: int) -> threading.Event:
    """This process now works on job ``job_id``: name it after the job and keep the job's lease.

    The name (``bgjob:<id>``) is what lets a worker prove, before it signals a
    pid read from the store, that the pid is this job's process.
    """
    from bgrunner.output import output_path

    procs.mark_job_process(job_id)
    return keep_lease(ctx.database_url, job_id, timeout=ctx.config.runner.host_timeout,
                      output=output_path(ctx.output_dir, job_id))


def keep_lease(database_url: str, job_id: int, *, timeout: float,
               output: str | None = None) -> threading.Event:
    """Renew job ``job_id``'s lease every ``timeout / 3`` s from a daemon thread; set the event to stop.

    ``output``: the job's output file, capped if it is this process's stdout.
    """
    stop = threading.Event()
    pid = os.getpid()
    thread = threading.Thread(target=_renew, args=(database_url, job_id, pid, timeout / 3, stop, output),
                              name=f"bgrunner-lease-{job_id}", daemon=True)
    thread.start()
    return stop


def _renew(database_url: str, job_id: int, pid: int, interval: float, stop: threading.Event,
           output: str | None) -> None:
    store = None
    try:
        while not stop.wait(interval):
            if output is not None:
                cap_output(output)
            try:
                store = store or open_store(database_url)
                if not store.renew_lease(job_id, pid=pid):
                    return  # the job is no longer this process's (finished, cancelled, given up)
            except StoreError:
                continue  # the store is unreachable: try again next interval (the lease may lapse)
    finally:
        if store is not None:
            store.close()


def cap_output(path: str, *, limit: int = MAX_OUTPUT_BYTES, keep: int = KEPT_OUTPUT_BYTES) -> int:
    """Cut the output file back to its last ``keep`` bytes if it is over ``limit``; bytes dropped.

    Only when it is this process's stdout (a foreground run writing to a
    terminal, or to a file of the user's, is never touched). Writers append
    (``O_APPEND``), so they go on at the new end.
    """
    try:
        out = os.fstat(1)
        mine = os.stat(path, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISREG(out.st_mode) or (out.st_dev, out.st_ino) != (mine.st_dev, mine.st_ino):
        return 0
    if out.st_size <= limit:
        return 0
    reader = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # stdout is write-only
    try:
        tail = os.pread(reader, keep, out.st_size - keep)
    finally:
        os.close(reader)
    dropped = out.st_size - len(tail)
    os.ftruncate(1, 0)
    os.write(1, f"[bgrunner: output over {limit} bytes; the first {dropped} bytes were dropped]\n".encode()
             + tail)
    return dropped
