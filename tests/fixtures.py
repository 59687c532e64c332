"""Job classes the tests run (one importable module, like rq's tests/fixtures.py).

Jobs prove what they did with sentinel files under the directory given to them.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bgrunner

#: The process that imported this module (a fork-mode template with preload_jobs, or the job).
IMPORTED_IN = os.getpid()


def _touch(path: str, text: str = "") -> None:
    """Append TEXT to PATH; a new file appears with its text already in it.

    Tests wait for the file to exist and then read it: creating it empty and
    writing after would let them read "" in between. The text is written to a
    file in the temp folder (not beside PATH, where tests count files) and
    hard-linked into place, which fails if PATH exists: then append.
    """
    fd, tmp = tempfile.mkstemp(prefix="bgrunner-touch-")
    try:
        os.write(fd, text.encode())
        os.close(fd)
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
    finally:
        os.unlink(tmp)
    with open(path, "a") as f:
        f.write(text)


class Probe:
    """Small jobs that leave evidence."""

    def mark(self, sentinel: str, text: str = "x") -> str:
        """Append TEXT to SENTINEL; return it."""
        _touch(sentinel, text + "\n")
        return text

    def record_pid(self, sentinel: str) -> int:
        """Write this process's pid, its session id and the cwd to SENTINEL."""
        with open(sentinel, "w") as f:
            f.write(f"{os.getpid()} {os.getsid(0)} {os.getcwd()} {os.environ.get('PROBE_VALUE', '')}")
        return os.getpid()

    def import_pid(self, sentinel: str) -> None:
        """Write the pid that imported this module and this process's pid to SENTINEL."""
        with open(sentinel, "w") as f:
            f.write(f"{IMPORTED_IN} {os.getpid()}")

    def typed(self, n: int, ratio: float, flag: bool, when: str = "") -> dict[str, object]:
        """Return what arrived, with its types."""
        return {"n": n, "ratio": ratio, "flag": flag, "types": [type(n).__name__,
                type(ratio).__name__, type(flag).__name__]}

    def noop(self) -> None:
        """Nothing at all."""

    def sleep(self, seconds: float, sentinel: str = "") -> str:
        """Sleep; touch SENTINEL first if given (so a test knows it started)."""
        if sentinel:
            _touch(sentinel, f"{os.getpid()}\n")
        time.sleep(seconds)
        return "slept"

    def fail_until(self, sentinel: str, failures: int) -> int:
        """Fail the first FAILURES attempts (counted in SENTINEL), then succeed."""
        _touch(sentinel, "a\n")
        count = len(Path(sentinel).read_text().splitlines())
        if count <= failures:
            raise ConnectionError(f"attempt {count} fails")
        return count

    def value_error(self) -> None:
        """Raise ValueError."""
        raise ValueError("bad value")

    def crash(self, sentinel: str) -> None:
        """Kill this attempt's own process with SIGKILL on the first attempt."""
        _touch(sentinel, "a\n")
        if len(Path(sentinel).read_text().splitlines()) == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def big_result(self, size: int) -> str:
        return "x" * size

    def unserialisable(self) -> object:
        return object()

    def progress(self, steps: int, delay: float) -> int:
        for i in range(1, steps + 1):
            bgrunner.progress(i, steps, f"step {i}")
            time.sleep(delay)
        return steps


class Stubborn:
    """Jobs that resist being stopped."""

    def ignore_term(self, sentinel: str, seconds: float = 60) -> None:
        """Ignore SIGTERM and sleep."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _touch(sentinel, f"{os.getpid()}\n")
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(0.05)

    def with_grandchild(self, sentinel: str, seconds: float = 60) -> None:
        """Start a grandchild in a session of its own (it ignores SIGTERM), record its pid, sleep."""
        code = ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(120)")
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        _touch(sentinel, f"{os.getpid()} {child.pid}\n")
        time.sleep(seconds)

    def busy_c(self, sentinel: str) -> None:
        """Spin inside C code holding the GIL (a huge regex backtrack), ignoring SIGTERM."""
        import re

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _touch(sentinel, f"{os.getpid()}\n")
        re.match(r"(a+)+$", "a" * 64 + "b")


class NotAClass:
    pass


def module_function() -> None:
    pass
