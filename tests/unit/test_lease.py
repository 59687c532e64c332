"""The job process's keeper thread: lease renewal on the store's clock, and the output cap."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bgrunner.job.lease import keep_lease
from bgrunner.model import NewJob
from bgrunner.store.factory import open_store
from bgrunner.store.memory import drop_memory_store
from tests.conftest import ROOT, wait_until


def test_keep_lease_renews_until_the_job_is_no_longer_this_process() -> None:
    """The thread renews the lease every timeout/3; once the job is finished it stops (nothing to renew)."""
    import os

    url = "memory://lease-test"
    store = open_store(url)
    try:
        job_id = store.create(NewJob(target="m:C", method="run", params=[]))
        assert store.claim(job_id, now=9e9, cap=10, host="h") is not None
        assert store.set_process(job_id, 1, pid=os.getpid(), pid_ctime=1.0)
        assert store.renew_lease(job_id, pid=os.getpid(), now=100.0)
        stop = keep_lease(url, job_id, timeout=0.15)
        wait_until(lambda: (store.get(job_id).lease_at or 0) > 1000, timeout=5,
                   message="the lease to be renewed on the store's clock")
        stop.set()
    finally:
        store.close()
        drop_memory_store(url)


def test_cap_output_keeps_the_tail_of_this_processs_own_output(tmp_path: Path) -> None:
    """Over the limit, the output file (this process's stdout) keeps its last bytes after a marker line."""
    out = tmp_path / "5.out"
    code = textwrap.dedent(f"""
        import os
        from bgrunner.job.lease import cap_output
        fd = os.open({str(out)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        os.write(1, b"a" * 5000 + b"b" * 1000)
        print(cap_output({str(out)!r}, limit=4000, keep=1000), file=os.fdopen(2, "w"))
        os.write(1, b"after")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "5000"
    text = out.read_text()
    assert text == "[bgrunner: output over 4000 bytes; the first 5000 bytes were dropped]\n" + "b" * 1000 + "after"


def test_cap_output_never_touches_a_file_that_is_not_stdout(tmp_path: Path) -> None:
    """A foreground run writes to the user's terminal or file: the job's output path is left alone."""
    from bgrunner.job.lease import cap_output

    other = tmp_path / "7.out"
    other.write_bytes(b"x" * 5000)
    assert cap_output(str(other), limit=10, keep=1) == 0
    assert other.stat().st_size == 5000
