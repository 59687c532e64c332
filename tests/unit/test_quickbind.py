"""The quick binder answers exactly as the full inspect-based path, or not at all."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, TypeVar

import pytest

import bgrunner.binding.quickbind
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


Number = int | float
T = TypeVar("T")


class Shapes:
    """One method per branch of the quick binder that More and Job leave out."""

    def posonly_then_named(self, a: int, /, b: int = 0) -> None: ...
    def self_posonly(self, /, a: int) -> None: ...
    def defaults(self, a: int, b: int = 2, c: str = "c") -> None: ...
    def self_default(self=None, a: int = 1, b: int = 2) -> None: ...  # type: ignore[assignment]
    def kw_defaults(self, *, flag: bool = False, n: int = 1) -> None: ...
    def kw_mixed(self, a: int, *, b: int, c: str = "c") -> None: ...
    def kw_untyped(self, *, k=None) -> None: ...  # type: ignore[no-untyped-def]
    def star_args(self, a: int, *rest: int) -> None: ...
    def star_kwargs(self, a: int, **rest: int) -> None: ...
    def dotted(self, when: dt.date) -> None: ...
    def generic(self, ids: list[int]) -> None: ...
    def alias(self, n: Number) -> None: ...
    def type_var(self, n: T) -> None: ...
    def builtin_non_class(self, n: len) -> None: ...  # type: ignore[valid-type]
    def any_class(self, n: Any) -> None: ...
    def converts_before_declining(self, n: int, when: dt.date) -> None: ...

    @classmethod
    def from_class(cls, n: int, color: Color = Color.RED) -> None: ...

    @staticmethod
    def static_posonly(n: int, /, m: int = 0) -> None: ...


def plain_function(a: int, b: str = "b", *, c: float = 0.5) -> None: ...


def posonly_function(a: int, /) -> None: ...


def _takes_n(n: int) -> int:
    return n


@functools.wraps(_takes_n)
def wraps_plain(n: int) -> int:
    return _takes_n(n)


def with_signature(n: int) -> None: ...


with_signature.__dict__["__signature__"] = inspect.signature(with_signature)


def real_annotations(n, ids, color):  # type: ignore[no-untyped-def]
    ...


real_annotations.__annotations__ = {"n": int, "color": Color}


def real_generic(ids):  # type: ignore[no-untyped-def]
    ...


real_generic.__annotations__ = {"ids": list[int]}


class CallableObject:
    def __call__(self, owner: Any, n: int) -> None: ...


ANSWERS, DECLINES, RAISES = "answers", "declines", "raises"

BRANCH_CASES = [
    pytest.param(Shapes().posonly_then_named, ["1", "2"], ANSWERS, id="posonly-list"),
    pytest.param(Shapes().posonly_then_named, {"b": "2"}, DECLINES, id="posonly-not-in-dict"),
    pytest.param(Shapes().posonly_then_named, {"a": "1", "b": "2"}, DECLINES, id="posonly-named-in-dict"),
    pytest.param(Shapes().self_posonly, {"a": "1"}, ANSWERS, id="only-self-posonly-dict"),
    pytest.param(Shapes().self_posonly, {"self": 1, "a": "1"}, DECLINES, id="self-by-name"),
    pytest.param(posonly_function, ["3"], ANSWERS, id="function-posonly-list"),
    pytest.param(posonly_function, {"a": "3"}, DECLINES, id="function-posonly-dict"),
    pytest.param(Shapes().defaults, ["1"], ANSWERS, id="fewest-positional"),
    pytest.param(Shapes().defaults, ["1", "2", "x"], ANSWERS, id="most-positional"),
    pytest.param(Shapes().defaults, [], DECLINES, id="too-few-positional"),
    pytest.param(Shapes().defaults, ["1", "2", "x", "4"], DECLINES, id="too-many-positional"),
    pytest.param(Shapes().defaults, {"a": "1", "c": "z"}, ANSWERS, id="dict-gap-goes-to-kwargs"),
    pytest.param(Shapes().defaults, {"c": "z", "b": "5", "a": "1"}, ANSWERS, id="dict-all-positional"),
    pytest.param(Shapes().defaults, {"b": "5"}, DECLINES, id="dict-missing-required"),
    pytest.param(Shapes().defaults, {"a": "1", "d": "4"}, DECLINES, id="dict-surplus-key"),
    pytest.param(Shapes().self_default, [], DECLINES, id="self-default-counts-as-required"),
    pytest.param(Shapes().self_default, ["1", "2"], ANSWERS, id="self-default-list"),
    pytest.param(Shapes().kw_defaults, [], ANSWERS, id="kw-defaults-empty-list"),
    pytest.param(Shapes().kw_defaults, ["x"], DECLINES, id="kw-defaults-surplus-list"),
    pytest.param(Shapes().kw_defaults, {"n": "4"}, ANSWERS, id="kw-defaults-dict"),
    pytest.param(Shapes().kw_defaults, {"flag": "yes", "n": "4"}, ANSWERS, id="kw-defaults-dict-all"),
    pytest.param(Shapes().kw_defaults, {"other": "4"}, DECLINES, id="kw-defaults-surplus-dict"),
    pytest.param(Shapes().kw_mixed, ["1"], DECLINES, id="kw-required-from-list"),
    pytest.param(Shapes().kw_mixed, {"a": "1"}, DECLINES, id="kw-required-missing-from-dict"),
    pytest.param(Shapes().kw_mixed, {"b": "2"}, DECLINES, id="kw-given-positional-missing"),
    pytest.param(Shapes().kw_mixed, {"c": "x", "b": "2", "a": "1"}, ANSWERS, id="kw-mixed-dict"),
    pytest.param(Shapes().kw_untyped, {"k": [1]}, ANSWERS, id="kw-untyped"),
    pytest.param(plain_function, ["1", "y"], ANSWERS, id="function-list"),
    pytest.param(plain_function, {"a": "1", "c": "2"}, ANSWERS, id="function-dict"),
    pytest.param(Shapes().star_args, ["1", "2"], DECLINES, id="star-args"),
    pytest.param(Shapes().star_args, ["1"], DECLINES, id="star-args-none-given"),
    pytest.param(Shapes().star_kwargs, {"a": "1"}, DECLINES, id="star-kwargs"),
    pytest.param(wraps_plain, ["1"], DECLINES, id="wrapped-plain-signature"),
    pytest.param(with_signature, ["1"], DECLINES, id="dunder-signature"),
    pytest.param(Shapes.from_class, ["1"], ANSWERS, id="classmethod-from-class"),
    pytest.param(Shapes().from_class, {"n": "1", "color": "green"}, ANSWERS, id="classmethod-from-instance"),
    pytest.param(Shapes.static_posonly, ["1", "2"], ANSWERS, id="staticmethod-from-class"),
    pytest.param(Shapes().static_posonly, ["1"], ANSWERS, id="staticmethod-from-instance"),
    pytest.param(Shapes.__dict__["static_posonly"], ["1"], DECLINES, id="staticmethod-object"),
    pytest.param(types.MethodType(CallableObject(), object()), ["1"], DECLINES, id="method-of-a-callable"),
    pytest.param(functools.partial(plain_function, 1), ["y"], DECLINES, id="partial"),
    pytest.param([].append, ["x"], DECLINES, id="builtin-method"),
    pytest.param(Opaque, [], DECLINES, id="class"),
    pytest.param(Shapes().dotted, ["2024-02-03"], DECLINES, id="dotted-name"),
    pytest.param(Shapes().generic, ["[1]"], DECLINES, id="subscripted-name"),
    pytest.param(Shapes().alias, ["1"], DECLINES, id="global-non-class"),
    pytest.param(Shapes().type_var, ["1"], DECLINES, id="type-var"),
    pytest.param(Shapes().builtin_non_class, ["1"], DECLINES, id="builtin-non-class"),
    pytest.param(Shapes().any_class, [[1]], ANSWERS, id="any-is-a-class"),
    pytest.param(Shapes().generic, [], DECLINES, id="missing-before-annotation"),
    pytest.param(Shapes().converts_before_declining, ["x", "2024-02-03"], RAISES, id="converts-in-order"),
    pytest.param(Shapes().converts_before_declining, ["1", "2024-02-03"], DECLINES, id="declines-later"),
    pytest.param(real_annotations, ["1", "[2]", "green"], ANSWERS, id="class-objects"),
    pytest.param(real_annotations, {"color": "red", "ids": [], "n": 1}, ANSWERS, id="class-objects-dict"),
    pytest.param(real_generic, ["[1]"], DECLINES, id="generic-object"),
]


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
SIDE_BY_SIDE = [*CASES, *(pytest.param(*case.values[:2], id=case.id) for case in BRANCH_CASES)]


@pytest.mark.parametrize(("func", "given"), SIDE_BY_SIDE)
def test_quick_bind_agrees_with_the_full_path(func: Any, given: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Where quick_bind answers, the full path gives the same args, kwargs and types."""
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


@pytest.mark.parametrize(("func", "given", "outcome"), BRANCH_CASES)
def test_quick_bind_answers_or_declines_as_pinned(func: Any, given: Any, outcome: str) -> None:
    """Each branch answers (or raises the full path's error) or declines exactly as pinned."""
    try:
        quick = quick_bind(func, given, params.coerce)
    except ParamsError:
        assert outcome == RAISES
        return
    assert (DECLINES if quick is None else ANSWERS) == outcome


def test_quick_bind_module_imports_neither_inspect_nor_typing() -> None:
    """Loaded on its own, the module leaves inspect and typing unimported (the job path must not page them in)."""
    path = Path(bgrunner.binding.quickbind.__file__)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('quickbind_alone', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({'inspect', 'typing', 'dataclasses'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
