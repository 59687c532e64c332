"""Params from the command line or JSON, bound to a method's signature and converted to its types.

Everything is checked before the first attempt, so a job that would only die of a
TypeError is refused as a usage error instead of being retried.
"""

from __future__ import annotations

import builtins
import collections.abc as cabc
import datetime as dt
import decimal
import enum
import inspect
import math
import pathlib
import types
import typing
from collections.abc import Callable
from typing import Any

from bgrunner import bounds
from bgrunner.binding import quickbind
from bgrunner.errors import ParamsError, UsageError

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NONE = frozenset({"", "none", "null"})
_SEQUENCES = (list, cabc.Sequence, cabc.MutableSequence, cabc.Iterable, cabc.Collection)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)
_SETS = (set, frozenset, cabc.Set, cabc.MutableSet)
_EMPTY = inspect.Parameter.empty


class _CannotConvert(Exception):
    """Internal: this value does not convert to this type (the caller names the parameter)."""

    def __init__(self, hint: str = "") -> None:
        super().__init__(hint)
        self.hint = hint


def split_params(text: str) -> list[str]:
    """Split the PHP-style comma list: `\\,` is a literal comma, `\\\\` a literal backslash.

    Nothing is trimmed, and any other backslash is kept as typed (Windows paths survive).
    """
    if text == "":
        return []
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, None)
            if following is None:
                current.append("\\")
            elif following in ",\\":
                current.append(following)
            else:
                current.append("\\" + following)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_json_params(text: str) -> list[Any] | dict[str, Any]:
    """The `--json` argument: an array binds positionally, an object by keyword."""
    value = bounds.loads(text, what="--json")  # NaN, 64-bit ints, depth, size: CONTRACT §14
    if not isinstance(value, list | dict):
        raise UsageError("--json must be a JSON array or object")
    return value


def describe_signature(func: Callable[..., Any]) -> str:
    """`process(name: str, count: int = 1)`: the form listings and error messages show."""
    name = _name(func)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return f"{name}(...)"
    hints = _annotations(func, sig)
    shown = [
        p.replace(annotation=_Shown(hints[p.name])) if p.name in hints else p
        for p in sig.parameters.values()
    ]
    return f"{name}{sig.replace(parameters=shown, return_annotation=_EMPTY)}"


class _Shown:
    """Annotation wrapper whose repr is how a user would write the type (no quotes)."""

    def __init__(self, annotation: Any) -> None:
        self.text = _type_name(annotation)

    def __repr__(self) -> str:
        return self.text


def bind_params(
    func: Callable[..., Any], params: list[Any] | dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Bind params to `func`'s signature and convert each to its annotation.

    Returns (args, kwargs) ready for `func(*args, **kwargs)`; defaults are left to
    the function. Raises ParamsError naming the parameter and the problem.
    """
    quick = quickbind.quick_bind(func, params, coerce)  # plain functions, simple annotations: no inspect
    if quick is not None:
        return quick
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # no introspectable signature: pass params as given
        return ([], dict(params)) if isinstance(params, dict) else (list(params), {})
    try:
        bound = sig.bind(**params) if isinstance(params, dict) else sig.bind(*params)
    except TypeError as exc:
        raise ParamsError(_bind_problem(func, sig, params) or str(exc)) from None
    hints = _annotations(func, sig)
    for name, value in bound.arguments.items():
        annotation = hints.get(name, _EMPTY)
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            value = tuple(coerce(v, annotation, f"{name}[{i}]") for i, v in enumerate(value))
        elif kind is inspect.Parameter.VAR_KEYWORD:
            value = {k: coerce(v, annotation, k) for k, v in value.items()}
        else:
            value = coerce(value, annotation, name)
        bound.arguments[name] = value
    return list(bound.args), dict(bound.kwargs)


def _bind_problem(
    func: Callable[..., Any], sig: inspect.Signature, params: list[Any] | dict[str, Any]
) -> str | None:
    """Explain a failed bind in the user's terms; None falls back to Python's message."""
    P = inspect.Parameter
    kinds = [p.kind for p in sig.parameters.values()]
    positional_kinds = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    positional = [p for p in sig.parameters.values() if p.kind in positional_kinds]
    if isinstance(params, list | tuple):
        if P.VAR_POSITIONAL not in kinds and len(params) > len(positional):
            takes = len(positional)
            required = sum(p.default is _EMPTY for p in positional)
            count = str(takes) if required == takes else f"at most {takes}"
            return f"too many params: {_name(func)} takes {count}, got {len(params)}"
        given: set[str] = {p.name for p in positional[: len(params)]}
    else:
        for key in params:
            param = sig.parameters.get(key)
            if param is not None and param.kind is P.POSITIONAL_ONLY:
                where = describe_signature(func)
                return f"parameter {key!r} of {where} is positional-only: pass params as a list"
            named = param is not None and param.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
            if not named and P.VAR_KEYWORD not in kinds:
                return f"unexpected parameter {key!r} of {describe_signature(func)}"
        given = set(params)
    for param in sig.parameters.values():
        if param.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD) or param.default is not _EMPTY:
            continue
        if param.name not in given:
            keyword_only = param.kind is P.KEYWORD_ONLY and not isinstance(params, dict)
            hint = " (keyword-only: pass params as a JSON object)" if keyword_only else ""
            return f"missing parameter {param.name!r} of {describe_signature(func)}{hint}"
    return None


def _name(func: Callable[..., Any]) -> str:
    """The callable's plain name for messages."""
    return getattr(func, "__name__", type(func).__name__)


def _annotations(func: Callable[..., Any], sig: inspect.Signature) -> dict[str, Any]:
    """Resolved annotations by parameter name; string ones resolved one at a time on failure.

    typing.get_type_hints fails as a whole when any one name is undefined; falling
    back per parameter keeps `count: "int"` converting next to a broken neighbour.
    """
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # any error in user annotations: resolve what we can below
        hints = {}
    namespace = getattr(inspect.unwrap(getattr(func, "__func__", func)), "__globals__", {})
    out: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        if name in hints:
            out[name] = hints[name]
        elif isinstance(param.annotation, str):
            out[name] = _resolve_string(param.annotation, namespace)
        elif param.annotation is not _EMPTY:
            out[name] = param.annotation
    return out


def _resolve_string(text: str, namespace: dict[str, Any]) -> Any:
    """Evaluate one string annotation as typing.get_type_hints would; leave it as text if not.

    Evaluated at most twice: `x: "int"` under `from __future__ import annotations`
    is stored as the text "'int'".
    """
    scope = {"__builtins__": builtins, **namespace}
    value: Any = text
    for _ in range(2):
        try:  # eval is what get_type_hints does; the text is the job's own (imported) code
            value = eval(value, scope)
        except Exception:
            return value
        if not isinstance(value, str):
            break
    return value


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert one value to `annotation`, idempotently: values of the right type pass through.

    Unannotated, Any, unresolved (string) and unsupported annotations leave the value
    unchanged. Raises ParamsError: "parameter 'count': cannot convert 'abc' to int".
    """
    try:
        return _convert(value, annotation, name)
    except _CannotConvert as exc:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        hint = f" ({exc.hint})" if exc.hint else ""
        message = f"parameter {name!r}: cannot convert {shown} to {_type_name(annotation)}{hint}"
        raise ParamsError(message) from None


def _convert(value: Any, annotation: Any, name: str) -> Any:
    """Dispatch on the annotation's shape; raise _CannotConvert (or ParamsError for elements)."""
    if annotation in (_EMPTY, Any, object) or isinstance(annotation, str | typing.TypeVar):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _convert(value, args[0], name)
    if origin is typing.Union or origin is types.UnionType:
        return _union(value, args, name)
    if origin is typing.Literal:
        return _literal(value, args, name)
    container = origin or annotation
    if container in _SEQUENCES or container in _SETS or container is tuple:
        return _collection(value, container, args, name)
    if container in _MAPPINGS:
        return _mapping(value, args, name)
    if annotation is type(None):
        if value is None:
            return None
        raise _CannotConvert()
    if isinstance(annotation, type):
        return _scalar(value, annotation)
    return value


def _union(value: Any, args: tuple[Any, ...], name: str) -> Any:
    """Optional: "", "none", "null" mean None only if None is allowed; then try each type."""
    allows_none = type(None) in args
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        if allows_none:
            return None
        if value is None:
            raise _CannotConvert()
    for option in args:
        if option is type(None):
            continue
        try:
            return _convert(value, option, name)
        except (_CannotConvert, ParamsError):
            continue
    raise _CannotConvert()


def _literal(value: Any, choices: tuple[Any, ...], name: str) -> Any:
    """A Literal accepts its own values, or a string converting to one of them."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return choice
    for choice in choices:
        try:
            if _convert(value, type(choice), name) == choice:
                return choice
        except (_CannotConvert, ParamsError):
            continue
    raise _CannotConvert("expected one of: " + ", ".join(repr(c) for c in choices))


def _from_json_text(value: Any) -> Any:
    """Containers arrive from the command line as JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return bounds.loads(value, what="JSON")
    except UsageError as exc:
        raise _CannotConvert(str(exc)) from None


def _collection(value: Any, container: Any, args: tuple[Any, ...], name: str) -> Any:
    """list/tuple/set (and abstract sequences), converting each element."""
    value = _from_json_text(value)
    if not isinstance(value, list | tuple | set | frozenset):
        raise _CannotConvert()
    items = list(value)
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _CannotConvert(f"expected {len(args)} items, got {len(items)}")
        pairs = enumerate(zip(items, args, strict=True))
        return tuple(coerce(v, a, f"{name}[{i}]") for i, (v, a) in pairs)
    element = args[0] if args else _EMPTY
    converted = [coerce(v, element, f"{name}[{i}]") for i, v in enumerate(items)]
    if container is tuple:
        return tuple(converted)
    if container in _SETS:
        try:
            return frozenset(converted) if container is frozenset else set(converted)
        except TypeError:
            raise _CannotConvert("items must be hashable") from None
    return converted


def _mapping(value: Any, args: tuple[Any, ...], name: str) -> dict[Any, Any]:
    """dict[K, V] (and abstract mappings): keys and values converted (JSON keys are text)."""
    value = _from_json_text(value)
    if not isinstance(value, dict):
        raise _CannotConvert()
    key_type, value_type = args if len(args) == 2 else (_EMPTY, _EMPTY)
    out: dict[Any, Any] = {}
    for key, item in value.items():
        new_key = coerce(key, key_type, f"{name} key")
        out[new_key] = coerce(item, value_type, f"{name}[{key!r}]")
    return out


def _scalar(value: Any, cls: type) -> Any:
    """Plain classes: the supported ones from text (or a compatible JSON value), others as is."""
    if issubclass(cls, enum.Enum):
        return _enum(value, cls)
    converter = _SCALARS.get(cls)
    if converter is None:
        if issubclass(cls, pathlib.PurePath):
            return _path(value, cls)
        return value
    if type(value) is cls:
        return value
    if isinstance(value, bool):  # bool is not an int (nor a float, str, date...) here
        raise _CannotConvert()
    try:
        return converter(value)
    except (ValueError, TypeError, ArithmeticError):
        raise _CannotConvert() from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _CannotConvert("use true/false, yes/no, on/off or 1/0")


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise TypeError
    if not bounds.INT_MIN <= number <= bounds.INT_MAX:
        raise _CannotConvert("outside 64 bits")
    return number


def _to_float(value: Any) -> float:
    if isinstance(value, str | int | float):
        number = float(value)
        if not math.isfinite(number):
            raise _CannotConvert("NaN and infinity are not allowed")
        return number
    raise TypeError


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError


def _to_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, str):
        number = decimal.Decimal(value.strip())
    elif isinstance(value, int | float):
        number = decimal.Decimal(str(value))
    else:
        raise TypeError
    if not number.is_finite():
        raise _CannotConvert("NaN and infinity are not allowed")
    return number


def _iso(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """fromisoformat, also accepting a trailing "Z" for UTC."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        return parse(text)

    return convert


_SCALARS: dict[type, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    decimal.Decimal: _to_decimal,
    dt.datetime: _iso(dt.datetime.fromisoformat),
    dt.date: _iso(dt.date.fromisoformat),
    dt.time: _iso(dt.time.fromisoformat),
}


def _path(value: Any, cls: type) -> Any:
    """Path and PurePath subclasses from non-empty text."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and value:
        return cls(value)
    raise _CannotConvert()


def _enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    """An Enum member by value, then by name, then by the text of its value ("1" for 1)."""
    if isinstance(value, cls):
        return value
    members = list(cls)
    for member in members:
        if member.value == value and type(member.value) is type(value):
            return member
    if isinstance(value, str):
        for member in members:
            if member.name == value:
                return member
        for member in members:
            if str(member.value) == value:
                return member
    raise _CannotConvert("expected one of: " + ", ".join(str(m.value) for m in members))


def _type_name(annotation: Any) -> str:
    """How a user would write the type: `int`, `list[int]`, `Optional[int]`, `Path`."""
    if annotation is _EMPTY:
        return "any"
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")
