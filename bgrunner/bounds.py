"""The limits of input (CONTRACT §14): one checker for every entry, one cleaner for every output.

What a user hands in (params, flags, allowlist values) is *checked*: out of range is a
``UsageError`` naming what was wrong, found before anything is stored. What a job hands
back (its return value, its progress, its error text) is *cleaned*: NaN and infinity
become ``null``, text is clipped, so every reader (``bgrunner status --json``,
``GET /api/jobs``) can always encode what is stored.

On the job path: imports only ``json``/``math``/``re`` (which ``json`` imports anyway).
"""

from __future__ import annotations

import json
import math
import re

from bgrunner.errors import UsageError

TYPE_CHECKING = False  # not ``typing``: the job path does not otherwise import it
if TYPE_CHECKING:
    from typing import Any

#: Longest ``delay`` (seconds): 10 years.
MAX_DELAY = 10 * 365 * 24 * 3600.0
#: Longest ``timeout`` per attempt (seconds): 1 year.
MAX_TIMEOUT = 365 * 24 * 3600.0
#: Longest ``retry_delay`` (seconds): 1 year.
MAX_RETRY_DELAY = MAX_TIMEOUT
#: Deepest nesting of lists and objects in params (and in a stored result or progress).
MAX_DEPTH = 100
#: Largest params, as UTF-8 JSON.
MAX_PARAMS_BYTES = 1024 * 1024
#: Range of an integer anywhere in params or flags: signed 64-bit, what every store and reader holds.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
#: Longest stored error message (characters).
MAX_ERROR_CHARS = 4 * 1024
#: Longest stored traceback (characters).
MAX_TRACEBACK_CHARS = 64 * 1024
#: Longest stored progress message (characters).
MAX_PROGRESS_MESSAGE_CHARS = 1024
#: Largest stored return value or progress, as UTF-8 JSON: past it the attempt fails.
MAX_RESULT_BYTES = 1024 * 1024

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str | bytes, *, what: str) -> Any:
    """Parse JSON a user wrote; any breach of the limits is one ``UsageError`` line naming *what*."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PARAMS_BYTES:
        raise UsageError(f"{what}: JSON is {size} bytes, over the limit of {MAX_PARAMS_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{what}: not UTF-8 ({exc.reason})") from None
    _check_text_depth(text, what=what)
    try:
        value = json.loads(
            text, parse_constant=lambda name: _bad_constant(name, what),
            parse_int=lambda s: _parse_int(s, what), parse_float=lambda s: _parse_float(s, what),
        )
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: invalid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels") from None
    check_value(value, what=what)
    return value


def check_value(value: Any, *, what: str) -> None:
    """Check an already-built value (an API caller's dict) by the rules ``loads`` applies to text.

    Walks without recursion, so a value nested 100,000 deep is an error, not a crash.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth > MAX_DEPTH:
                raise UsageError(f"{what}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise UsageError(f"{what}: object key {_show(key)} is not a string")
                    _check_scalar(key, what)
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        else:
            _check_scalar(item, what)


def check_params(value: Any, *, what: str = "params") -> None:
    """``check_value`` plus the size cap on the encoded JSON: what may be stored as a job's params."""
    check_value(value, what=what)
    size = len(json.dumps(value, allow_nan=False).encode())
    if size > MAX_PARAMS_BYTES:
        raise UsageError(f"{what}: JSON is {size} bytes, over the limit of {MAX_PARAMS_BYTES}")


def check_seconds(
    value: float | int | None, *, what: str, maximum: float, minimum: float = 0,
) -> float | None:
    """A number of seconds from a flag, the API or the allowlist: finite and in range, as a float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what}: expected a number of seconds, got {_show(value)}")
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        raise UsageError(f"{what}: {_show(value)} is out of range ({minimum:g} to {maximum:g} seconds)")
    seconds = float(value)
    if not math.isfinite(seconds) or not minimum <= seconds <= maximum:
        raise UsageError(f"{what}: {_show(value)} is out of range ({minimum:g} to {maximum:g} seconds)")
    return seconds


#: A queue name (CONTRACT §10): letters, digits, ``_`` and ``-``, at most 64 characters.
_QUEUE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: A ``unique_key``, a schedule name: at most this many characters.
MAX_KEY_CHARS = 200


def check_queue(value: Any, *, what: str = "queue") -> str:
    """A queue name, or UsageError saying what a queue name may hold."""
    if not isinstance(value, str) or not _QUEUE.fullmatch(value):
        raise UsageError(f"{what}: expected a queue name (letters, digits, _ and -, at most 64),"
                         f" got {_show(value)}")
    return value


def check_key(value: Any, *, what: str = "unique_key") -> str:
    """A non-empty key of printable text (a ``unique_key``), at most `MAX_KEY_CHARS`."""
    if (not isinstance(value, str) or not value or len(value) > MAX_KEY_CHARS
            or not value.isprintable()):
        raise UsageError(f"{what}: expected printable text of 1 to {MAX_KEY_CHARS} characters,"
                         f" got {_show(value)}")
    return value


def check_int(value: Any, *, what: str, minimum: int = INT_MIN, maximum: int = INT_MAX) -> int:
    """An integer setting (priority, max_attempts): a real int, not a bool, within range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what}: expected an integer, got {_show(value)}")
    if not minimum <= value <= maximum:
        raise UsageError(f"{what}: {_show(value)} is out of range ({minimum} to {maximum})")
    return value


def sanitize(value: Any, *, strict: bool = False) -> Any:
    """A job's return value or progress made storable: a copy every reader can encode.

    NaN and infinity become ``None`` (CONTRACT §14); an integer outside 64 bits becomes
    its decimal string (the digits are kept; no reader has to hold it); tuples become
    lists; a non-string key becomes its ``str``; a string that is not valid Unicode
    (a lone surrogate) has it replaced by U+FFFD; nesting deeper than ``MAX_DEPTH``
    becomes ``None``. Anything else JSON cannot hold becomes its ``str`` (as
    ``json.dumps(default=str)`` does), or with *strict* raises ``TypeError`` (a return
    value is then not stored, and the job says why). Walks without recursion.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, list[Any] | dict[str, Any], int | str, int]] = [(value, root, 0, 1)]
    while stack:
        item, parent, slot, depth = stack.pop()
        out: Any
        if isinstance(item, (list, tuple, dict)):
            if depth > MAX_DEPTH:
                out = None
            elif isinstance(item, dict):
                out = {}
                for key, sub in item.items():
                    name = _clean_str(key if isinstance(key, str) else str(sanitize(key)))
                    out[name] = None
                    stack.append((sub, out, name, depth + 1))
            else:
                out = [None] * len(item)
                stack.extend((sub, out, i, depth + 1) for i, sub in enumerate(item))
        elif strict and not (item is None or isinstance(item, (bool, int, float, str))):
            raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")
        else:
            out = _clean_scalar(item)
        parent[slot] = out  # type: ignore[index]
    return root[0]


def clip(text: str | None, limit: int) -> str | None:
    """*text* cut to at most *limit* characters, its middle replaced by ``… [cut N chars] …``.

    The middle goes because both ends matter: an error's first line, a traceback's last.
    """
    if text is None or len(text) <= limit:
        return text
    keep = limit
    for _ in range(3):  # the marker's length depends on N: two passes settle it, a third proves it
        marker = f"\n… [cut {len(text) - keep} chars] …\n"
        keep = limit - len(marker)
    if keep < 2:
        return text[:limit]
    marker = f"\n… [cut {len(text) - keep} chars] …\n"
    head = (keep + 1) // 2
    tail = limit - len(marker) - head
    return text[:head] + marker + (text[len(text) - tail:] if tail > 0 else "")


def _check_text_depth(text: str, *, what: str) -> None:
    """Refuse nesting past MAX_DEPTH before parsing: the parser itself recurses."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise UsageError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _check_scalar(item: Any, what: str) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, int):
        if not INT_MIN <= item <= INT_MAX:
            raise UsageError(f"{what}: integer {_show(item)} is outside 64 bits")
    elif isinstance(item, float):
        if not math.isfinite(item):
            raise UsageError(f"{what}: {item!r} is not allowed (NaN and infinity cannot be stored)")
    elif isinstance(item, str):
        if _clean_str(item) is not item:
            raise UsageError(f"{what}: a string holds a lone surrogate (not valid Unicode)")
    else:
        raise UsageError(f"{what}: {type(item).__name__} is not a JSON value")


def _clean_scalar(item: Any) -> Any:
    if item is None or isinstance(item, bool):
        return item
    if isinstance(item, int):
        return int(item) if INT_MIN <= item <= INT_MAX else _int_text(item)
    if isinstance(item, float):
        return float(item) if math.isfinite(item) else None
    if isinstance(item, str):
        return _clean_str(item)
    try:
        return _clean_str(str(item))
    except Exception:  # a job's own __str__ may raise: the value is still replaced, not the outcome lost
        return f"<unprintable {type(item).__name__}>"


def _clean_str(text: str) -> str:
    """*text* itself if it encodes as UTF-8, else a copy with each lone surrogate as U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # past Python's int-to-str digit limit
        return f"<integer of {value.bit_length()} bits>"


def _parse_int(text: str, what: str) -> int:
    if len(text) > 20:
        raise UsageError(f"{what}: integer {text[:20]}… is outside 64 bits")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise UsageError(f"{what}: integer {text} is outside 64 bits")
    return value


def _parse_float(text: str, what: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UsageError(f"{what}: number {text[:40]} is too large (infinity cannot be stored)")
    return value


def _bad_constant(name: str, what: str) -> Any:
    raise UsageError(f"{what}: {name} is not allowed (NaN and infinity cannot be stored)")


def _show(value: Any) -> str:
    """A short form of a bad value for a one-line error."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
