"""Jobs the benchmarks run."""

from __future__ import annotations

import time


class Bench:
    def noop(self) -> None:
        """Nothing: measures the runner, not the job."""

    def stamp(self, path: str) -> None:
        """Write the time the method started (submit → start latency)."""
        with open(path, "w") as f:
            f.write(repr(time.time()))
