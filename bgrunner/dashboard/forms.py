"""Dispatch forms: a method's signature becomes form fields, and posted fields become params.

The form only shapes the input (number inputs for int/float, a checkbox for
bool, a JSON textarea for lists and dicts, text otherwise); the verdict is
``jobs.prepare``'s, the same checks as ``run_background_job`` (allowlist,
JSON-serialisable params bound to the signature), whose errors are put next
to the field they name.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bgrunner.allowlist import JobSpec
from bgrunner.bounds import loads
from bgrunner.dashboard.inputs import ascii_int
from bgrunner.errors import UsageError

_EMPTY = inspect.Parameter.empty
_JSON_ORIGINS = (list, tuple, set, frozenset, dict, cabc.Sequence, cabc.MutableSequence,
                 cabc.Mapping, cabc.MutableMapping, cabc.Set, cabc.MutableSet,
                 cabc.Iterable, cabc.Collection)
#: The largest |priority| the store's integer column takes, with room to spare.
MAX_PRIORITY = 2**31 - 1
#: The longest delay accepted (ten years): later dates do not render.
MAX_DELAY = 10 * 365 * 24 * 3600.0
#: Where a job's params are named in a ParamsError message.
_NAMED = re.compile(r"parameter '([^'\[]+)")


@dataclass(frozen=True)
class Field:
    """One input of a dispatch form."""

    name: str
    kind: str  # "int" | "float" | "bool" | "json" | "text"
    type_text: str
    required: bool
    default: Any = None
    var: str = ""  # "args" for *args, "kwargs" for **kwargs

    @property
    def initial(self) -> str:
        """The input's initial text: the default, as it would be typed."""
        if self.default is None or self.default is _EMPTY:
            return ""
        if self.kind == "json":
            return json.dumps(self.default)
        return str(self.default)


@dataclass(frozen=True)
class MethodInfo:
    """An allowed method as the pages show it; ``error`` set when its class could not be loaded."""

    target: str
    method: str
    signature: str
    doc: str
    class_doc: str
    fields: tuple[Field, ...] = ()
    positional_only: bool = False
    error: str | None = None


def describe_method(spec: JobSpec, method: str) -> MethodInfo:
    """Import the allowed class (never anything else) and describe one of its methods."""
    from bgrunner.binding.loader import load_class, signature_callable
    from bgrunner.binding.params import describe_signature
    from bgrunner.errors import TargetLoadError

    try:
        cls = load_class(spec)
        func = signature_callable(cls, method)
    except TargetLoadError as exc:
        return MethodInfo(spec.target, method, f"{method}(...)", "", "", error=str(exc))
    raw = inspect.getattr_static(cls, method, None)
    doc = inspect.getdoc(getattr(raw, "__func__", raw)) or ""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return MethodInfo(spec.target, method, describe_signature(func), doc,
                          inspect.getdoc(cls) or "", error="its signature cannot be read")
    hints = _hints(func)
    fields, positional_only = [], False
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional_only = True
        fields.append(_field(param, hints.get(param.name, param.annotation)))
    return MethodInfo(spec.target, method, describe_signature(func), doc,
                      inspect.getdoc(cls) or "", tuple(fields), positional_only)


def _hints(func: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # broken user annotations: fall back to the raw ones
        return {}


def _field(param: inspect.Parameter, annotation: Any) -> Field:
    from bgrunner.binding.params import _type_name  # the one spelling of types users see

    kinds = inspect.Parameter
    if param.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD):
        shape = "list" if param.kind is kinds.VAR_POSITIONAL else "object"
        var = "args" if param.kind is kinds.VAR_POSITIONAL else "kwargs"
        return Field(param.name, "json", f"JSON {shape}", False, None, var)
    kind = kind_of(annotation, param.default)
    type_text = _type_name(annotation) if annotation is not _EMPTY else "any"
    return Field(param.name, kind, type_text, param.default is _EMPTY, param.default)


def kind_of(annotation: Any, default: Any = _EMPTY) -> str:
    """The input for a type: Optional[X] as X; unannotated by its default's type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return kind_of(typing.get_args(annotation)[0], default)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind_of(options[0], default) if len(options) == 1 else "text"
    if annotation is _EMPTY or annotation is Any:
        return "text" if default is _EMPTY or default is None else kind_of(type(default))
    base = origin or annotation
    if base is bool:
        return "bool"
    if base is int:
        return "int"
    if base is float:
        return "float"
    if base in _JSON_ORIGINS:
        return "json"
    return "text"


@dataclass
class Parsed:
    """Posted form values turned into a submission, and the errors found, by field name."""

    params: list[Any] | dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    delay: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


def parse_form(info: MethodInfo, form: Mapping[str, str]) -> Parsed:
    """Convert each field by its input kind; empty optional fields keep the method's default."""
    out = Parsed()
    values: dict[str, Any] = {}
    for f in info.fields:
        raw = form.get(f"p.{f.name}")
        if f.kind == "bool":
            values[f.name] = raw is not None and raw not in ("", "0", "false", "off")
            continue
        if raw is None or raw.strip() == "":
            continue  # a required one is reported by the binding check as "missing"
        try:
            values[f.name] = convert(f.kind, raw, f.name)
        except ValueError as exc:
            out.errors[f.name] = str(exc)
    out.params = _arrange(info, values)
    out.priority = _number(form.get("priority", ""), "priority", int, out.errors, 0)
    out.delay = _number(form.get("delay", ""), "delay", float, out.errors, 0.0)
    return out


def convert(kind: str, raw: str, name: str) -> Any:
    """One field's text as the value its input stands for; ValueError with a short reason."""
    if kind == "int":
        value = ascii_int(raw.strip(), signed=True)
        if value is None:
            raise ValueError(f"{_short(raw)} is not a whole number (64-bit)")
        return value
    if kind == "float":
        return ascii_float(raw, "")
    if kind == "json":
        try:
            return loads(raw, what="this field")
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    return raw


def _short(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:39] + "…")


def ascii_float(raw: str, name: str) -> float:
    """A finite number written in ASCII (``float`` alone takes "١.٥" and "inf"); ValueError if not."""
    text = raw.strip()
    if not text.isascii() or len(text) > 64:
        raise ValueError(f"{_short(raw)} is not a number")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{_short(raw)} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name + ' ' if name else ''}must be a finite number")
    return value


def _arrange(info: MethodInfo, values: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """Keyword params (a dict) unless the method has positional-only parameters."""
    by_name = {f.name: f for f in info.fields}
    star = [n for n, f in by_name.items() if f.var == "args"]
    stars = [n for n, f in by_name.items() if f.var == "kwargs"]
    if not info.positional_only and not star:
        params = {k: v for k, v in values.items() if k not in stars}
        extra = values.get(stars[0]) if stars else None
        if isinstance(extra, dict):
            params.update(extra)
        return params
    ordered: list[Any] = []
    for f in info.fields:
        if f.name in stars:
            break
        if f.name in star:
            extra_list = values.get(f.name)
            ordered.extend(extra_list if isinstance(extra_list, list) else [])
            break
        if f.name not in values:
            break  # positional params stop at the first one left to its default
        ordered.append(values[f.name])
    return ordered


def _number(raw: str, name: str, cast: type, errors: dict[str, str], default: Any) -> Any:
    if raw.strip() == "":
        return default
    try:
        if cast is int:
            value: Any = ascii_int(raw.strip(), signed=True)
            if value is None:
                raise ValueError("not a whole number")
        else:
            value = ascii_float(raw, name)
        check_policy(name, value)
        return value
    except ValueError as exc:
        errors[name] = str(exc) if "must" in str(exc) else f"{_short(raw)} is not a valid {name}"
        return default


def check_policy(name: str, value: Any) -> None:
    """Bounds the store can hold: priority fits its integer, delay stays a printable date."""
    if name == "priority" and not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ValueError(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
    if name == "delay" and (not math.isfinite(value) or not 0 <= value <= MAX_DELAY):
        raise ValueError(f"delay must be between 0 and {MAX_DELAY:.0f} seconds")


def field_of(message: str, info: MethodInfo) -> str | None:
    """The field a ParamsError message is about ("parameter 'times': ..."), if it names one."""
    names = {f.name for f in info.fields}
    for name in _NAMED.findall(message):
        if name in names:
            return str(name)
    return None
