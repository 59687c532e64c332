"""Stop signals for long-lived bgrunner processes (the worker, a job's supervisor).

Handlers only set a flag and write a byte to a pipe, so a ``select()`` wakes up;
``stop_signals`` installs them and restores the old ones afterwards.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: Signals that ask a job to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequested:
    """Flags set by signal handlers (handlers only set flags), plus a wake-up pipe for select()."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


@contextmanager
def stop_signals(stop: StopRequested) -> Iterator[None]:
    """Install flag-setting handlers for SIGTERM/SIGINT/SIGHUP; restore the old ones after."""
    old = {s: signal.signal(s, stop.handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
