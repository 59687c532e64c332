"""The attempt's own process: call the method and report the outcome to the supervisor.

Each attempt runs in a process forked from the supervising ``run_job.py``
process, in a process group of its own, so a timeout or a cancel can kill the
attempt's whole tree while the supervisor lives on to record what happened.
Messages go to the supervisor as JSON lines over a pipe.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

from bgrunner import bounds
from bgrunner.errors import JobInterrupted


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise JobInterrupted("terminated by SIGTERM")


def send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message, default=str) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def encode_result(value: Any, max_bytes: int) -> tuple[str | None, str | None]:
    """The result as JSON text, or None and the reason it cannot be kept."""
    if value is None:
        return None, None
    try:  # NaN and infinity stored as null, huge ints as text: every reader can encode it (§14)
        text = json.dumps(bounds.sanitize(value, strict=True), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, bounds.clip(f"result not stored: not JSON-serialisable ({exc})",
                                 bounds.MAX_ERROR_CHARS)
    limit = min(max_bytes or bounds.MAX_RESULT_BYTES, bounds.MAX_RESULT_BYTES)
    size = len(text.encode())
    if size > limit:
        return None, f"result not stored: {size} bytes exceeds result_max_bytes ({limit})"
    return text, None


def run(fd: int, cls: type, method: str, args: list[Any], kwargs: dict[str, Any],
        result_max_bytes: int, *, cpu_limit: float | None = None) -> NoReturn:
    """Body of the forked attempt process; never returns.

    ``cpu_limit``: the target's ``cpu_limit_s``; the supervisor enforces it on
    the whole tree, and the kernel's RLIMIT_CPU here is its backstop
    (``job.limits.apply_cpu_backstop``).
    """
    code = 1
    try:
        os.setpgid(0, 0)
        from bgrunner.procs import die_with_parent

        die_with_parent()
        if cpu_limit is not None:
            from bgrunner.job.limits import apply_cpu_backstop

            apply_cpu_backstop(cpu_limit)
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from bgrunner.job import reporting

        reporting._channel_fd = fd
        from bgrunner.binding.loader import bound_method

        value = bound_method(cls, method)(*args, **kwargs)
        text, note = encode_result(value, result_max_bytes)
        send(fd, {"type": "result", "result": text, "note": note})
        code = 0
    except BaseException as exc:  # everything the job raises is its outcome
        from bgrunner.settle import Outcome

        outcome = Outcome.from_exception(exc)
        try:
            send(fd, {"type": "error", "error": outcome.error, "traceback": outcome.traceback,
                      "names": list(outcome.names)})
        except OSError:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
