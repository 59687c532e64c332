"""Numbers and JSON from a request, parsed with bounds: a bad value is a usage error, never a 500.

``int()`` accepts far more than a URL should carry: non-ASCII digits ("²" passes
``str.isdigit`` and then fails ``int``; "١٢" is twelve), underscores, spaces,
and strings long enough to be refused with a ValueError (over 4300 digits) or
slow to convert. Every number the dashboard takes from a query, a path or a
form goes through ``ascii_int``; every JSON text a user wrote through
``bgrunner.bounds.loads`` (depth, size, NaN and 64-bit limits: CONTRACT §14).
"""

from __future__ import annotations

#: Digits a 64-bit integer has at most; longer text is refused before conversion.
MAX_DIGITS = 19
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def ascii_int(text: str | None, *, lo: int = INT64_MIN, hi: int = INT64_MAX,
              signed: bool = False) -> int | None:
    """``text`` as an int in [lo, hi] if it is ASCII digits (a leading "-" if ``signed``); else None."""
    if text is None:
        return None
    digits = text[1:] if signed and text.startswith("-") else text
    if not digits or len(digits) > MAX_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    value = int(text)
    return value if lo <= value <= hi else None
