"""The worker in fork mode, for the benchmarks, until ``bgrunner worker`` has it built in:

    python bench/fork_worker.py [--concurrency N] [--burst] [--preload-jobs]

``bgrunner.worker.Worker`` with only its launching and reaping swapped for a
``ForkServer``: claim exactly as the worker does (``store.claim_next``), fork
through the template, learn of exits from the server's socket. It doubles as
the reference for integrating fork mode into ``worker.py``.
"""

from __future__ import annotations

import argparse
import selectors
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgrunner.context import Context  # noqa: E402
from bgrunner.forkserver import ForkServer, ForkServerError, launch_job  # noqa: E402
from bgrunner.worker import Child, Worker  # noqa: E402


class ForkWorker(Worker):
    def __init__(self, ctx: Context, *, preload_jobs: bool = False, **kw: object) -> None:
        super().__init__(ctx, **kw)  # type: ignore[arg-type]
        self.server = ForkServer(ctx, preload_jobs=preload_jobs)

    def run(self) -> int:
        self.server.start()
        self.selector.register(self.server.fileno(), selectors.EVENT_READ, "forkserver")
        try:
            return super().run()
        finally:
            self.server.close()

    def _fill_slots(self) -> int:
        if self.server.stale():
            self.server.renew()
            self._forget_orphans()
        launched = 0
        cap = self.ctx.config.runner.cap
        while len(self.children) < self.concurrency:
            job = self.ctx.store.claim_next(now=time.time(), cap=cap, host=self.host)
            if job is None:
                break
            try:
                proc = launch_job(self.ctx, self.server, job)  # unclaims on failure
            except Exception as exc:
                self.log.emit("worker_launch_failed", level="error", job_id=str(job.id),
                              error=str(exc))
                if isinstance(exc.__cause__, ForkServerError):
                    break  # the template is gone: stale() renews it on the next round
                continue
            self.children[proc.pid] = Child(proc, job.id, job.attempts, None)
            launched += 1
        return launched

    def _reap(self) -> None:
        for pid, code in self.server.exits():
            child = self.children.get(pid)
            if child is not None:
                child.proc.returncode = code
        self._forget_orphans()
        super()._reap()

    def _forget_orphans(self) -> None:
        """Jobs whose template died: no exit will come; reconcile (pid + start time) has them."""
        for pid in self.server.orphans():
            self.children.pop(pid, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--preload-jobs", action="store_true")
    args = parser.parse_args()
    ctx = Context.resolve()
    concurrency = args.concurrency or ctx.config.runner.cap
    return ForkWorker(ctx, concurrency=concurrency, burst=args.burst,
                      preload_jobs=args.preload_jobs).run()


if __name__ == "__main__":
    sys.exit(main())
