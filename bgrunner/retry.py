"""Retry decisions as pure functions: a failed attempt in, a delay or "give up" out.

Kept free of I/O and clocks (the random source is a parameter) so every rule is
unit-tested; the job process and the worker share these exact answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # avoids importing typing in every job process
if TYPE_CHECKING:
    from bgrunner.allowlist import Policy

_MAX_DOUBLINGS = 1000  # 2.0 ** 1000 is still a finite float; the cap applies long before


def _uniform() -> float:
    """``random.random()``, imported on first use: ``random`` reseeds itself after every
    fork, and in a fork-mode template that would run in every job process forked."""
    import random

    return random.random()


def exception_names(exc_type: type[BaseException]) -> list[str]:
    """Names an exception answers to in `retry_on`, most specific class first.

    Each class of the MRO (object excluded) gives "Name" then "module.QualName", so
    both spellings in the config match; the first match in this order wins.
    """
    names: list[str] = []
    for cls in exc_type.__mro__:
        if cls is object:
            continue
        names.append(cls.__name__)
        names.append(f"{cls.__module__}.{cls.__qualname__}")
    return names


def attempts_allowed(policy: Policy, names: Sequence[str]) -> int:
    """Total attempts for a failure with these names: the most specific `retry_on` entry
    wins over a base class's; with none listed, `policy.max_attempts`."""
    for name in names:
        allowed = policy.retry_on.get(name)
        if allowed is not None:
            return allowed
    return policy.max_attempts


def retry_delay(policy: Policy, attempt: int, rand: Callable[[], float] | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Exponential backoff uses full jitter (a uniform draw below the capped delay) so
    many jobs failing together do not retry in lockstep.
    """
    if policy.backoff != "exponential":
        return policy.retry_delay
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    ceiling = min(policy.max_retry_delay, policy.retry_delay * 2.0**doublings)
    return (rand or _uniform)() * ceiling


def next_retry(
    policy: Policy,
    attempt: int,
    names: Sequence[str],
    rand: Callable[[], float] | None = None,
) -> float | None:
    """After failed attempt `attempt` (1-based): seconds until the next one, or None to give up."""
    if attempt >= attempts_allowed(policy, names):
        return None
    return retry_delay(policy, attempt, rand)
