"""Jobs that hand back what a reader cannot encode: NaN, infinity, huge ints, huge text.

Used by ``tests/e2e/test_bounds.py`` and ``tests/e2e/test_fuzz.py`` (CONTRACT §14).
"""

from __future__ import annotations

from typing import Any

import bgrunner


class Unruly:
    """Each method produces one kind of value no store or reader should have to hold."""

    def nan_result(self) -> Any:
        """A return value with NaN, infinities and an integer outside 64 bits in it."""
        return {"nan": float("nan"), "inf": [float("inf"), float("-inf")], "big": 2**70, "ok": 1}

    def nan_progress(self) -> str:
        """Progress reported as NaN of infinity, with a message far over the cap."""
        bgrunner.progress(float("nan"), float("inf"), "m" * 100_000)
        return "done"

    def huge_error(self) -> None:
        """An exception whose message (and so its traceback) is 1 MB long."""
        raise ValueError("e" * 1_000_000)

    def huge_result(self) -> str:
        """A return value of 2 MB: over the cap of any configuration."""
        return "r" * 2_000_000

    def echo(self, value: Any = None) -> Any:
        """Return the params as given (the fuzz tests' job)."""
        return value

    def whoami(self) -> str:
        """Which copy of this module ran: the project's (a planted one says otherwise)."""
        return "real"
