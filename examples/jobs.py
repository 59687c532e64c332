"""Sample jobs used by the README and the tests' smoke checks."""

from __future__ import annotations

import time

import bgrunner


class SampleJob:
    """A job that succeeds: greets, counts and returns what it did."""

    def process(self, name: str, times: int = 1, loud: bool = False) -> dict[str, object]:
        """Greet NAME a number of TIMES, optionally in capitals."""
        greeting = f"hello {name}"
        if loud:
            greeting = greeting.upper()
        for _ in range(times):
            print(greeting, flush=True)
        return {"greeting": greeting, "times": times}

    def handle(self) -> str:
        """Do nothing much, successfully."""
        return "handled"


class FlakyJob:
    """A job that fails: raises until it is told how many times to fail."""

    def fail(self, message: str = "something went wrong") -> None:
        """Always raise RuntimeError(MESSAGE)."""
        raise RuntimeError(message)


class SlowJob:
    """A slow job that reports its progress."""

    def run(self, steps: int = 10, delay: float = 0.5) -> int:
        """Take STEPS steps of DELAY seconds each, reporting progress after each."""
        for step in range(1, steps + 1):
            time.sleep(delay)
            bgrunner.progress(step, steps, f"step {step} of {steps}")
        return steps
