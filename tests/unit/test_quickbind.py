"""The quick binder answers exactly as the full inspect-based path, or not at all."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

from bgrunner.binding import params
from bgrunner.binding.quickbind import quick_bind
from bgrunner.errors import ParamsError
from tests.unit.test_params import Color, Job, Opaque


class More:
    def mixed(self, a: int, b: str = "x", *, c: float = 1.0, d: Color = Color.RED) -> None: ...
    def needs_kw(self, a: int, *, b: int) -> None: ...
    def opaque(self, thing: Opaque, n: int) -> None: ...
    def quoted(self, n: "int") -> None: ...  # noqa: UP037 - a string inside the string annotation
    def union(self, n: int | None = None) -> None: ...
    def plain(self) -> None: ...

    @staticmethod
    def static(n: int) -> int:
        return n

    @functools.wraps(mixed)
    def wrapped(self, *args: Any, **kwargs: Any) -> None: ...


CASES: list[tuple[Any, Any]] = [
    (Job().process, ["x", "3"]),
    (Job().process, {"name": "x", "count": "3"}),
    (Job().process, {"count": "3", "name": "x"}),
    (Job().process, ["x"]),
    (Job().process, ["a", "1", "2"]),
    (Job().process, {"name": "a", "count": 1, "x": 2}),
    (Job().optional, {"name": "x"}),
    (Job().optional, {"count": "2", "name": "x"}),
    (Job().optional, ["x"]),
    (Job().keyword_only, {"when": "2024-02-03"}),
    (Job().keyword_only, []),
    (Job().positional_only, {"a": 1}),
    (Job().positional_only, ["4"]),
    (Job().variadic, ["1", "2"]),
    (Job().untyped, ["3", [1]]),
    (Job().half_broken, ["3", "raw"]),
    (More().mixed, ["1"]),
    (More().mixed, ["1", "y"]),
    (More().mixed, {"a": "1", "c": "2.5"}),
    (More().mixed, {"a": "1", "d": "green"}),
    (More().mixed, {"b": "z", "a": 2}),
    (More().needs_kw, ["1"]),
    (More().needs_kw, {"a": "1", "b": "2"}),
    (More().opaque, [Opaque(), "7"]),
    (More().quoted, ["5"]),
    (More().union, ["5"]),
    (More().union, []),
    (More().plain, []),
    (More().plain, ["surplus"]),
    (More.static, ["9"]),
    (More().wrapped, ["1"]),
]


@pytest.mark.parametrize(("func", "given"), CASES)
def test_quick_bind_agrees_with_the_full_path(func: Any, given: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Where quick_bind answers, the full path gives the same args, kwargs and types."""
    import bgrunner.binding.quickbind

    with monkeypatch.context() as m:
        m.setattr(bgrunner.binding.quickbind, "quick_bind", lambda *args: None)  # the full path only
        try:
            expected: Any = params.bind_params(func, given)
        except ParamsError as exc:
            expected = exc
    try:
        quick = quick_bind(func, given, params.coerce)
    except ParamsError as exc:
        assert isinstance(expected, ParamsError) and str(exc) == str(expected)
        return
    if quick is None:
        return  # the full path answers (and words any error)
    assert not isinstance(expected, ParamsError), f"quick bound what the full path refuses: {quick}"
    assert quick == expected
    assert [type(v) for v in quick[0]] == [type(v) for v in expected[0]]
    assert {k: type(v) for k, v in quick[1].items()} == {k: type(v) for k, v in expected[1].items()}


def test_most_cases_are_answered_by_the_quick_binder() -> None:
    """The side-by-side test above must not pass by the quick binder always declining."""
    answered = [case for case in CASES if quick_bind(case[0], case[1], params.coerce) is not None]
    assert len(answered) >= 12


def test_quick_bind_answers_the_common_shapes() -> None:
    """Plain methods with simple annotations never reach inspect."""
    assert quick_bind(Job().process, ["x", "3"], params.coerce) == (["x", 3], {})
    assert quick_bind(More().mixed, {"a": "1", "c": "2.5"}, params.coerce) == ([1], {"c": 2.5})
    assert quick_bind(More().plain, [], params.coerce) == ([], {})
    assert quick_bind(More().opaque, [Opaque(), "7"], params.coerce) is not None


@pytest.mark.parametrize(("func", "given"), [
    (Job().variadic, ["1"]), (More().wrapped, ["1"]), (Job().process, ["x"]),
    (More().quoted, ["5"]),
    (More().union, ["5"]), (Job().keyword_only, {"when": "2024-02-03"}), (More().quoted, ["5"]),
])
def test_quick_bind_leaves_the_rest_to_the_full_path(func: Any, given: Any) -> None:
    """*args, decorated functions, missing params and non-name annotations: None."""
    assert inspect.isfunction(getattr(func, "__func__", func))
    assert quick_bind(func, given, params.coerce) is None
