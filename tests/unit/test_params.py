"""Params: the comma syntax, --json, binding to a signature and conversion to annotations."""

# ruff: noqa: UP007, UP045  -- Optional[X] and Union[A, B] are spellings under test

from __future__ import annotations

import datetime as dt
import enum
import pathlib
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

import pytest

from bgrunner.binding.params import (
    bind_params,
    coerce,
    describe_signature,
    parse_json_params,
    split_params,
)
from bgrunner.errors import ParamsError, UsageError


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Opaque:
    """A class params.py knows nothing about."""


class Job:
    def process(self, name: str, count: int) -> None: ...

    def optional(self, name: str, count: int = 1) -> None: ...

    def variadic(self, *items: int, flag: bool = False, **extra: float) -> None: ...

    def keyword_only(self, *, when: dt.date) -> None: ...

    def positional_only(self, a: int, /) -> None: ...

    def untyped(self, value, other=None):  # type: ignore[no-untyped-def]
        ...

    def half_broken(self, count: int, thing: Undefined) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b", ["a", "b"]),
        ("a\\,b,c", ["a,b", "c"]),
        ("", []),
        ("\\\\", ["\\"]),
        ("a,", ["a", ""]),
        (",", ["", ""]),
        ("one", ["one"]),
        (" a , b ", [" a ", " b "]),
        ("C:\\dir\\file", ["C:\\dir\\file"]),
        ("end\\", ["end\\"]),
        ("x\\\\,y", ["x\\", "y"]),
    ],
)
def test_split_params(text: str, expected: list[str]) -> None:
    """Commas split, `\\,` is a comma, `\\\\` a backslash, other backslashes and spaces stay."""
    assert split_params(text) == expected


@pytest.mark.parametrize(("text", "expected"), [('["x", 3]', ["x", 3]), ('{"a": 1}', {"a": 1})])
def test_parse_json_params_accepts_array_or_object(text: str, expected: Any) -> None:
    """--json takes a JSON array (positional) or object (keyword) as is."""
    assert parse_json_params(text) == expected


def test_parse_json_params_rejects_invalid_json() -> None:
    """Invalid JSON is a usage error carrying the decoder's reason."""
    with pytest.raises(UsageError, match=r"^--json: invalid JSON: Expecting value: line 1"):
        parse_json_params("[1,")


@pytest.mark.parametrize("text", ['"x"', "3", "null", "true"])
def test_parse_json_params_rejects_scalars(text: str) -> None:
    """A JSON scalar is neither positional nor keyword params."""
    with pytest.raises(UsageError) as info:
        parse_json_params(text)
    assert str(info.value) == "--json must be a JSON array or object"


def test_bind_positional_converts_to_annotations() -> None:
    """Positional strings bind in order and are converted to the annotated types."""
    assert bind_params(Job().process, ["x", "3"]) == (["x", 3], {})


def test_bind_keyword_converts_and_leaves_defaults_to_the_function() -> None:
    """A dict binds by name (returned in call order); unset defaults are not filled in."""
    assert bind_params(Job().optional, {"name": "x"}) == (["x"], {})
    assert bind_params(Job().optional, {"count": "2", "name": "x"}) == (["x", 2], {})
    assert bind_params(Job().keyword_only, {"when": "2024-02-03"}) == (
        [],
        {"when": dt.date(2024, 2, 3)},
    )


def test_bind_reports_a_missing_parameter_with_the_signature() -> None:
    """A missing required parameter is named along with the method's signature."""
    with pytest.raises(ParamsError) as info:
        bind_params(Job().process, ["x"])
    assert str(info.value) == "missing parameter 'count' of process(name: str, count: int)"


def test_bind_reports_too_many_params() -> None:
    """More positional params than the method takes says how many it takes and got."""
    with pytest.raises(ParamsError) as info:
        bind_params(Job().process, ["a", "1", "2"])
    assert str(info.value) == "too many params: process takes 2, got 3"


def test_bind_reports_too_many_params_with_defaults() -> None:
    """With optional parameters, the count is an upper bound."""
    with pytest.raises(ParamsError, match=r"^too many params: optional takes at most 2, got 3$"):
        bind_params(Job().optional, ["a", "1", "2"])


def test_bind_reports_an_unexpected_keyword() -> None:
    """A keyword the method does not have is named."""
    with pytest.raises(ParamsError, match=r"^unexpected parameter 'x' of process\("):
        bind_params(Job().process, {"name": "a", "count": 1, "x": 2})


def test_bind_positional_only_by_keyword_is_explained() -> None:
    """Passing a positional-only parameter by name says to pass a list instead."""
    with pytest.raises(ParamsError, match="'a' of positional_only.* is positional-only"):
        bind_params(Job().positional_only, {"a": 1})


def test_bind_keyword_only_missing_from_a_list_is_explained() -> None:
    """A keyword-only parameter cannot come from a list; the message says to use an object."""
    with pytest.raises(ParamsError, match="missing parameter 'when' .*keyword-only"):
        bind_params(Job().keyword_only, [])


def test_bind_converts_var_positional_and_var_keyword_elements() -> None:
    """*args and **kwargs elements are converted to their element annotation."""
    assert bind_params(Job().variadic, ["1", "2"]) == ([1, 2], {})
    assert bind_params(Job().variadic, {"flag": "yes", "z": "2.5"}) == (
        [],
        {"flag": True, "z": 2.5},
    )
    with pytest.raises(ParamsError, match=r"^parameter 'items\[1\]': cannot convert 'x' to int$"):
        bind_params(Job().variadic, ["1", "x"])


def test_bind_leaves_unannotated_parameters_unchanged() -> None:
    """Without annotations the values are passed exactly as given."""
    assert bind_params(Job().untyped, ["3", [1]]) == (["3", [1]], {})


def test_bind_resolves_annotations_next_to_an_undefined_one() -> None:
    """One unresolvable annotation does not stop the others from converting."""
    assert bind_params(Job().half_broken, ["3", "raw"]) == ([3, "raw"], {})


def test_bind_reports_a_conversion_error_before_the_call() -> None:
    """A value that does not convert is a ParamsError naming the parameter and type."""
    with pytest.raises(ParamsError) as info:
        bind_params(Job().process, ["x", "abc"])
    assert str(info.value) == "parameter 'count': cannot convert 'abc' to int"


def test_describe_signature() -> None:
    """Signatures read as written in source, without quotes, self or return type."""
    assert describe_signature(Job().optional) == "optional(name: str, count: int = 1)"
    assert (
        describe_signature(Job().variadic)
        == "variadic(*items: int, flag: bool = False, **extra: float)"
    )
    assert describe_signature(Job().untyped) == "untyped(value, other=None)"


UTC = dt.UTC


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        ("3", int, 3),
        (" 7 ", int, 7),
        (3, int, 3),
        (4.0, int, 4),
        ("2.5", float, 2.5),
        (3, float, 3.0),
        ("true", bool, True),
        ("YES", bool, True),
        ("On", bool, True),
        ("1", bool, True),
        ("false", bool, False),
        ("no", bool, False),
        ("OFF", bool, False),
        ("0", bool, False),
        (False, bool, False),
        ("text", str, "text"),
        ("", str, ""),
        ("/tmp/x", pathlib.Path, pathlib.Path("/tmp/x")),
        ("a/b", pathlib.PurePosixPath, pathlib.PurePosixPath("a/b")),
        ("2024-01-02T03:04:05Z", dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02", dt.date, dt.date(2024, 1, 2)),
        ("03:04:05Z", dt.time, dt.time(3, 4, 5, tzinfo=UTC)),
        ("1.10", Decimal, Decimal("1.10")),
        (2, Decimal, Decimal(2)),
        ("[1, 2]", list, [1, 2]),
        ('[1, "2"]', list[int], [1, 2]),
        (["1", 2], list[int], [1, 2]),
        ('{"a": "1"}', dict[str, int], {"a": 1}),
        ({"1": "x"}, dict[int, str], {1: "x"}),
        ('[1, "a"]', tuple[int, str], (1, "a")),
        ('["1", "2"]', tuple[int, ...], (1, 2)),
        ("[1, 1, 2]", set[int], {1, 2}),
        ("", Optional[int], None),
        ("None", Optional[int], None),
        ("NULL", int | None, None),
        (None, int | None, None),
        ("4", Optional[int], 4),
        ("", Optional[str], None),
        ("4", Union[int, str], 4),
        ("x", Union[int, str], "x"),
        (4, Union[str, int], 4),
        ("red", Color, Color.RED),
        ("GREEN", Color, Color.GREEN),
        (2, Level, Level.HIGH),
        ("2", Level, Level.HIGH),
        ("LOW", Level, Level.LOW),
        ("b", Literal["a", "b"], "b"),
        ("2", Literal[1, 2], 2),
        ("5", Annotated[int, "meta"], 5),
    ],
)
def test_coerce_converts(value: Any, annotation: Any, expected: Any) -> None:
    """Strings and JSON values convert to the annotated type, with the exact result type."""
    result = coerce(value, annotation, "p")
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "annotation"),
    [
        ("abc", int),
        ("3.5", int),
        (3.5, int),
        (True, int),
        ("", int),
        ("none", int),
        (None, int),
        (True, float),
        ("x", float),
        ("maybe", bool),
        (1, bool),
        ("", bool),
        (3, str),
        (None, str),
        ("", pathlib.Path),
        (3, pathlib.Path),
        ("2024-13-01", dt.date),
        ("soon", dt.datetime),
        ("abc", Decimal),
        (True, Decimal),
        ("[1,", list[int]),
        ('{"a": 1}', list),
        ("[1]", dict),
        ("[1, 2, 3]", tuple[int, str]),
        ("purple", Color),
        (3, Level),
        ("c", Literal["a", "b"]),
        ("x", Union[int, float]),
        ("", Union[int, float]),
    ],
)
def test_coerce_rejects(value: Any, annotation: Any) -> None:
    """Values that do not convert are a ParamsError naming the parameter."""
    with pytest.raises(ParamsError, match=r"^parameter 'p': cannot convert "):
        coerce(value, annotation, "p")


def test_coerce_error_names_parameter_value_and_type() -> None:
    """The message carries the parameter, the value's repr and the type name."""
    with pytest.raises(ParamsError) as info:
        coerce("abc", int, "count")
    assert str(info.value) == "parameter 'count': cannot convert 'abc' to int"


def test_coerce_error_truncates_long_values() -> None:
    """A long value is cut to 60 characters of repr so the message stays one short line."""
    with pytest.raises(ParamsError) as info:
        coerce("z" * 500, int, "count")
    shown = str(info.value).split("convert ", 1)[1].rsplit(" to int", 1)[0]
    assert len(shown) == 60 and shown.endswith("...")


def test_coerce_error_inside_a_container_names_the_element() -> None:
    """A bad element of a list is reported with its index."""
    with pytest.raises(ParamsError, match=r"^parameter 'ids\[1\]': cannot convert 'x' to int$"):
        coerce('[1, "x"]', list[int], "ids")


def test_coerce_bool_error_lists_the_accepted_words() -> None:
    """A bad bool says which words are accepted."""
    with pytest.raises(ParamsError, match=r"to bool \(use true/false, yes/no, on/off or 1/0\)$"):
        coerce("maybe", bool, "flag")


@pytest.mark.parametrize("annotation", [Any, object, "Unresolved", Opaque, TypeVar("T")])
def test_coerce_leaves_value_for_untyped_or_unsupported(annotation: Any) -> None:
    """Any, object, unresolved names and unknown classes pass the value through untouched."""
    value = ["same", {"object": 1}]
    assert coerce(value, annotation, "p") is value


@pytest.mark.parametrize(
    ("value", "annotation"),
    [
        ("3", int),
        ("2.5", float),
        ("yes", bool),
        ("2024-01-02T03:04:05Z", dt.datetime),
        ('{"a": ["1"]}', dict[str, list[int]]),
        ("HIGH", Level),
        ("", Optional[int]),
        ("/x", pathlib.Path),
    ],
)
def test_coerce_is_idempotent(value: Any, annotation: Any) -> None:
    """Converting an already converted value changes nothing (JSON values pass through)."""
    once = coerce(value, annotation, "p")
    assert coerce(once, annotation, "p") == once
