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
"""

from __future__ import annotations

import builtins
import types
from collections.abc import Callable
from typing import Any

_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08
_NOT_RESOLVED = object()


def quick_bind(func: Callable[..., Any], params: list[Any] | dict[str, Any],
               convert: Callable[[Any, Any, str], Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """``(args, kwargs)`` as ``bind_params`` gives them, or None to take the full path."""
    skip = 0
    target: Any = func
    if isinstance(func, types.MethodType):
        target, skip = func.__func__, 1
    if type(target) is not types.FunctionType or "__wrapped__" in target.__dict__ \
            or "__signature__" in target.__dict__:
        return None
    code = target.__code__
    if code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS):
        return None
    names = code.co_varnames[:code.co_argcount]
    positional = names[skip:]
    posonly = max(0, code.co_posonlyargcount - skip)
    kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    defaults = target.__defaults__ or ()
    required = positional[:len(positional) - len(defaults)] if defaults else positional
    kwdefaults = target.__kwdefaults__ or {}
    given: list[tuple[str, Any]]
    args_count: int
    if isinstance(params, dict):
        if any(k not in positional[posonly:] and k not in kwonly for k in params):
            return None
        if any(n not in params for n in required) or any(n not in params for n in positional[:posonly]):
            return None
        args_count = 0
        while args_count < len(positional) and positional[args_count] in params:
            args_count += 1
        given = [(n, params[n]) for n in (*positional, *kwonly) if n in params]
    else:
        if len(params) > len(positional) or len(params) < len(required):
            return None
        args_count = len(params)
        given = list(zip(positional, params, strict=False))  # params may be fewer (defaults)
    if any(n not in kwdefaults and not (isinstance(params, dict) and n in params) for n in kwonly):
        return None
    annotations = target.__annotations__
    out: list[Any] = []
    for name, value in given:
        annotation = annotations.get(name, _NOT_RESOLVED)
        if annotation is not _NOT_RESOLVED:
            annotation = _resolve(annotation, target.__globals__)
            if annotation is _NOT_RESOLVED:
                return None
            value = convert(value, annotation, name)
        out.append(value)
    kwargs = {name: value for (name, _), value in zip(given[args_count:], out[args_count:],
                                                      strict=True)}
    return out[:args_count], kwargs


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A class as it stands, or a string that is one plain name; else not resolved."""
    if isinstance(annotation, type):
        return annotation
    if not isinstance(annotation, str) or not annotation.isidentifier():
        return _NOT_RESOLVED
    found = namespace.get(annotation, getattr(builtins, annotation, _NOT_RESOLVED))
    return found if isinstance(found, type) else _NOT_RESOLVED
