"""Retry decisions: attempts allowed per exception, delays, give-up."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bgrunner.allowlist import Policy
from bgrunner.retry import attempts_allowed, exception_names, next_retry, retry_delay


class FlakyError(ConnectionError):
    """A subclass of a builtin, defined in this test module."""


class Outer:
    class NestedError(ValueError):
        """An exception nested in a class, to check qualified names."""


def always(value: float) -> Callable[[], float]:
    """A fixed stand-in for random.random."""
    return lambda: value


def test_exception_names_walk_the_mro_with_both_spellings() -> None:
    """Each class gives "Name" then "module.Name", most specific first, object excluded."""
    assert exception_names(ValueError) == [
        "ValueError",
        "builtins.ValueError",
        "Exception",
        "builtins.Exception",
        "BaseException",
        "builtins.BaseException",
    ]


def test_exception_names_of_a_user_class_are_module_qualified() -> None:
    """A user exception is named by its own module and qualified name, then its bases."""
    names = exception_names(Outer.NestedError)
    assert names[:3] == ["NestedError", f"{__name__}.Outer.NestedError", "ValueError"]
    assert "object" not in names and "builtins.object" not in names


def test_without_retry_on_max_attempts_applies() -> None:
    """No matching retry_on entry: the policy's max_attempts is the limit."""
    policy = Policy(max_attempts=4, retry_on={"KeyError": 9})
    assert attempts_allowed(policy, exception_names(ValueError)) == 4


def test_a_listed_base_class_applies_to_its_subclass() -> None:
    """retry_on for ConnectionError covers a subclass raised by the job."""
    policy = Policy(max_attempts=2, retry_on={"ConnectionError": 5})
    assert attempts_allowed(policy, exception_names(FlakyError)) == 5


def test_the_most_specific_listed_class_wins() -> None:
    """A subclass listed beats its listed base, whatever the order in the table."""
    policy = Policy(retry_on={"Exception": 7, "OSError": 6, "FlakyError": 2})
    assert attempts_allowed(policy, exception_names(FlakyError)) == 2
    assert attempts_allowed(policy, exception_names(ConnectionError)) == 6
    assert attempts_allowed(policy, exception_names(KeyError)) == 7


def test_qualified_names_match() -> None:
    """A `module.Name` key matches like the short name does."""
    policy = Policy(retry_on={f"{__name__}.FlakyError": 4, "builtins.ValueError": 1})
    assert attempts_allowed(policy, exception_names(FlakyError)) == 4
    assert attempts_allowed(policy, exception_names(ValueError)) == 1


def test_a_qualified_name_of_another_module_does_not_match() -> None:
    """`other.mod.FlakyError` is a different class from this module's FlakyError."""
    policy = Policy(max_attempts=3, retry_on={"other.mod.FlakyError": 9})
    assert attempts_allowed(policy, exception_names(FlakyError)) == 3


def test_retry_on_one_gives_up_at_once() -> None:
    """retry_on = 1 means the first failure is final, whatever max_attempts says."""
    policy = Policy(max_attempts=5, retry_delay=0, retry_on={"ValueError": 1})
    assert next_retry(policy, 1, exception_names(ValueError)) is None
    assert next_retry(policy, 1, exception_names(KeyError)) == 0.0


def test_next_retry_counts_attempts_including_the_first() -> None:
    """With max_attempts = 3, attempts 1 and 2 are retried and attempt 3 is the last."""
    policy = Policy(max_attempts=3, retry_delay=2.5)
    names = exception_names(RuntimeError)
    assert [next_retry(policy, n, names) for n in (1, 2, 3, 4)] == [2.5, 2.5, None, None]


def test_max_attempts_one_never_retries() -> None:
    """max_attempts = 1 gives up after the first failure."""
    assert next_retry(Policy(max_attempts=1), 1, exception_names(RuntimeError)) is None


def test_fixed_delay_ignores_the_attempt_and_jitter() -> None:
    """Fixed backoff waits retry_delay every time, without randomness."""
    policy = Policy(retry_delay=5, backoff="fixed")
    assert [retry_delay(policy, n, always(0.0)) for n in (1, 2, 10)] == [5.0, 5.0, 5.0]


def test_exponential_delay_doubles_from_retry_delay() -> None:
    """Exponential backoff with no jitter draw (rand = 1.0) is delay * 2**(attempt-1)."""
    policy = Policy(retry_delay=1.5, backoff="exponential", max_retry_delay=1000)
    delays = [retry_delay(policy, n, always(1.0)) for n in (1, 2, 3, 4)]
    assert delays == [1.5, 3.0, 6.0, 12.0]


def test_exponential_delay_uses_full_jitter() -> None:
    """The delay is the random draw times the exponential ceiling."""
    policy = Policy(retry_delay=2, backoff="exponential", max_retry_delay=1000)
    assert retry_delay(policy, 3, always(0.5)) == 4.0
    assert retry_delay(policy, 3, always(0.0)) == 0.0


def test_exponential_delay_is_capped() -> None:
    """max_retry_delay caps the ceiling, and huge attempt numbers do not overflow."""
    policy = Policy(retry_delay=10, backoff="exponential", max_retry_delay=60)
    assert retry_delay(policy, 3, always(1.0)) == 40.0
    assert retry_delay(policy, 4, always(1.0)) == 60.0
    assert retry_delay(policy, 10_000, always(0.5)) == 30.0


def test_exponential_delay_with_real_randomness_stays_in_range() -> None:
    """With the default random source the delay lies between 0 and the ceiling."""
    policy = Policy(retry_delay=1, backoff="exponential", max_retry_delay=3)
    delays = [retry_delay(policy, 5) for _ in range(200)]
    assert all(0.0 <= d <= 3.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(("draw", "expected"), [(1.0, 8.0), (0.25, 2.0)])
def test_next_retry_passes_the_random_source_through(draw: float, expected: float) -> None:
    """next_retry's delay is the backoff delay for the attempt that failed."""
    policy = Policy(max_attempts=10, retry_delay=2, backoff="exponential")
    assert next_retry(policy, 3, exception_names(OSError), always(draw)) == expected
