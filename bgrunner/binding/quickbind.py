"""Binding params to a plain function from its code object, without ``inspect``.

``params.bind_params`` builds an ``inspect.Signature`` and resolves annotations
with ``typing.get_type_hints``. In a process forked from the fork server's
template that costs ~1.5 ms, most of it copy-on-write page faults from touching
``inspect`` and ``typing``. Most job methods are plain functions with simple
annotations (``int``, ``str``, a class in the module), so this module binds
those directly from ``__code__``, ``__defaults__`` and ``__annotations__``.

Anything it is not sure of (``*args``, ``**kwargs``, decorated functions, a
missing or surplus argument, an annotation that is not a plain name) returns
None, and the caller takes the full path, which also words the errors. When it
does answer, the answer equals the full path's (a unit test holds them side by
side).

Neither ``typing`` nor ``dataclasses`` (which imports ``inspect``) is imported at
run time: the names below are for the type checker only.
"""

from __future__ import annotations

import builtins
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    _Pairs: TypeAlias = list[tuple[str, Any]]
    _Converter: TypeAlias = Callable[[Any, Any, str], Any]

_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08
_NOT_RESOLVED = object()


def quick_bind(func: Callable[..., Any], params: list[Any] | dict[str, Any],
               convert: _Converter) -> tuple[list[Any], dict[str, Any]] | None:
    """``(args, kwargs)`` as ``bind_params`` gives them, or None to take the full path."""
    plain = _plain_function(func)
    if plain is None:
        return None
    function, skip = plain
    layout = _Layout.read(function, skip)
    bound = _bind_dict(layout, params) if isinstance(params, dict) else _bind_list(layout, params)
    if bound is None:
        return None
    pairs, args_count = bound
    converted = _converted(function, pairs, convert)
    if converted is None:
        return None
    return [value for _, value in converted[:args_count]], dict(converted[args_count:])


def _plain_function(func: Callable[..., Any]) -> tuple[types.FunctionType, int] | None:
    """The function and how many params its binding fills; None where inspect would see more than ``__code__``."""
    target, skip = (func.__func__, 1) if isinstance(func, types.MethodType) else (func, 0)
    if type(target) is not types.FunctionType:
        return None
    if "__wrapped__" in target.__dict__ or "__signature__" in target.__dict__:
        return None
    if target.__code__.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS):
        return None
    return target, skip


class _Layout:
    """The parameters a caller passes (not a bound method's first), read-only like a frozen dataclass."""

    __slots__ = ("positional", "posonly", "required", "kwonly", "kw_required")
    positional: tuple[str, ...]
    posonly: int
    required: tuple[str, ...]
    kwonly: tuple[str, ...]
    kw_required: tuple[str, ...]

    def __init__(self, positional: tuple[str, ...], posonly: int, required: tuple[str, ...],
                 kwonly: tuple[str, ...], kw_required: tuple[str, ...]) -> None:
        values = (positional, posonly, required, kwonly, kw_required)
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    @classmethod
    def read(cls, function: types.FunctionType, skip: int) -> _Layout:
        """Names from ``co_varnames`` and the defaults, so binding never needs a Signature."""
        code = function.__code__
        positional = code.co_varnames[skip:code.co_argcount]
        kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        kwdefaults = function.__kwdefaults__ or {}
        return cls(
            positional=positional,
            posonly=max(0, code.co_posonlyargcount - skip),
            # a defaulted first param of a bound method makes this negative: more required, so None more often
            required=positional[:len(positional) - len(function.__defaults__ or ())],
            kwonly=kwonly,
            kw_required=tuple(name for name in kwonly if name not in kwdefaults),
        )


def _bind_list(layout: _Layout, params: list[Any]) -> tuple[_Pairs, int] | None:
    """Params in order and all of them passed positionally; None where the full path words an error."""
    fits = len(layout.required) <= len(params) <= len(layout.positional)
    if not fits or layout.kw_required:
        return None
    return list(zip(layout.positional, params, strict=False)), len(params)  # fewer params leave defaults


def _bind_dict(layout: _Layout, params: dict[str, Any]) -> tuple[_Pairs, int] | None:
    """Params in signature order, the leading run positional as ``Signature.bind`` puts them; else None."""
    names = layout.positional + layout.kwonly
    if layout.posonly or any(key not in names for key in params):  # positional-only: missing or named, both errors
        return None
    if any(name not in params for name in layout.required + layout.kw_required):
        return None
    missing = (i for i, name in enumerate(layout.positional) if name not in params)
    args_count = next(missing, len(layout.positional))
    return [(name, params[name]) for name in names if name in params], args_count


def _converted(function: types.FunctionType, pairs: _Pairs, convert: _Converter) -> _Pairs | None:
    """Converted in signature order, so the first bad value raises as in full; None at an unresolved annotation."""
    annotations = function.__annotations__
    out: _Pairs = []
    for name, value in pairs:
        if name in annotations:
            annotation = _resolve(annotations[name], function.__globals__)
            if annotation is _NOT_RESOLVED:
                return None
            value = convert(value, annotation, name)
        out.append((name, value))
    return out


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A class as it stands, or a string that is one plain name; else not resolved."""
    if isinstance(annotation, type):
        return annotation
    if not isinstance(annotation, str) or not annotation.isidentifier():
        return _NOT_RESOLVED
    found = namespace.get(annotation, getattr(builtins, annotation, _NOT_RESOLVED))
    return found if isinstance(found, type) else _NOT_RESOLVED
