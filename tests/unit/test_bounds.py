"""``bgrunner.bounds``: the one checker of input and the one cleaner of output (CONTRACT §14)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bgrunner import bounds
from bgrunner.allowlist import parse_config
from bgrunner.errors import ConfigError, UsageError
from bgrunner.settle import Outcome, storable


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("text, reason", [
    ("[NaN]", "NaN is not allowed"),
    ("[Infinity]", "Infinity is not allowed"),
    ("[-Infinity]", "-Infinity is not allowed"),
    ("[1e400]", "too large"),
    ("[9223372036854775808]", "outside 64 bits"),
    ("[-9223372036854775809]", "outside 64 bits"),
    ("[" + "1" * 5000 + "]", "outside 64 bits"),
    ("[" * 100_000, "nested deeper than 100"),
    ("[" * 101 + "]" * 101, "nested deeper than 100"),
    ('{"a":' * 101 + "1" + "}" * 101, "nested deeper than 100"),
    ('["' + "x" * bounds.MAX_PARAMS_BYTES + '"]', "over the limit"),
    ("[1,", "invalid JSON"),
    (b"[\xff]", "not UTF-8"),
    ('["\\udc00"]', "lone surrogate"),
])
def test_loads_refuses_with_one_line(text: str | bytes, reason: str) -> None:
    """Each breach is a UsageError of one line naming what was parsed and why."""
    with pytest.raises(UsageError) as info:
        bounds.loads(text, what="--json")
    message = str(info.value)
    assert message.startswith("--json: ") and reason in message and "\n" not in message
    assert len(message) < 200


@pytest.mark.parametrize("text", [
    "[" * 100 + "]" * 100, "[9223372036854775807, -9223372036854775808]", '["[[[[[[", "\\"["]',
    '{"k": [1.5, true, null, "é\\u0000\\n"]}', "[1e308]",
])
def test_loads_accepts_what_fits(text: str) -> None:
    """Depth 100, the 64-bit ends, brackets inside strings, control characters: all fine."""
    assert bounds.loads(text, what="p") == json.loads(text)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    """The depth scan skips strings, escaped quotes included."""
    text = json.dumps(["[" * 5000, '\\"[' * 100])
    assert bounds.loads(text, what="p") == json.loads(text)


@pytest.mark.parametrize("value, reason", [
    ([math.nan], "nan"), ({"a": math.inf}, "inf"), ([2**63], "outside 64 bits"),
    ([-(2**63) - 1], "outside 64 bits"), (nested(101), "nested deeper"),
    (nested(100_000), "nested deeper"), ([object()], "not a JSON value"),
    ({1: "x"}, "not a string"), (["\ud800"], "lone surrogate"), ([b"x"], "not a JSON value"),
])
def test_check_value_refuses_built_values(value: object, reason: str) -> None:
    """An API caller's value is checked by the same rules, without recursion."""
    with pytest.raises(UsageError, match=reason):
        bounds.check_value(value, what="params")


def test_check_value_accepts_bools_and_64_bit_ends() -> None:
    """bool is an int subclass and fine; tuples are JSON arrays."""
    bounds.check_value([True, False, 2**63 - 1, -(2**63), (1, 2), {"a": None}], what="p")
    bounds.check_value(nested(100), what="p")


def test_check_params_caps_the_encoded_size() -> None:
    """1 MiB of JSON is the most params may weigh."""
    bounds.check_params(["x" * (bounds.MAX_PARAMS_BYTES - 10)])
    with pytest.raises(UsageError, match="over the limit"):
        bounds.check_params(["x" * bounds.MAX_PARAMS_BYTES])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, -1, 2**70, True, "3"])
def test_check_seconds_refuses(value: object) -> None:
    """Seconds are a finite real number within [minimum, maximum]."""
    with pytest.raises(UsageError, match="^--delay: "):
        bounds.check_seconds(value, what="--delay", maximum=bounds.MAX_DELAY)  # type: ignore[arg-type]


def test_check_seconds_returns_a_float_or_none() -> None:
    assert bounds.check_seconds(None, what="t", maximum=1) is None
    assert bounds.check_seconds(3, what="t", maximum=bounds.MAX_TIMEOUT) == 3.0
    assert bounds.check_seconds(bounds.MAX_DELAY, what="t", maximum=bounds.MAX_DELAY) == bounds.MAX_DELAY


def test_limits_are_the_documented_ones() -> None:
    """CONTRACT §14's numbers, and the caps of stored text."""
    year = 365 * 24 * 3600
    assert (bounds.MAX_DELAY, bounds.MAX_TIMEOUT, bounds.MAX_RETRY_DELAY) == (10 * year, year, year)
    assert (bounds.MAX_DEPTH, bounds.MAX_PARAMS_BYTES) == (100, 1 << 20)
    assert (bounds.INT_MIN, bounds.INT_MAX) == (-(2**63), 2**63 - 1)
    assert (bounds.MAX_ERROR_CHARS, bounds.MAX_TRACEBACK_CHARS, bounds.MAX_PROGRESS_MESSAGE_CHARS,
            bounds.MAX_RESULT_BYTES) == (4096, 65536, 1024, 1 << 20)


def test_sanitize_makes_any_job_value_strict_json() -> None:
    """NaN/inf → null, huge ints → their digits, tuples → lists, keys → str, surrogates → U+FFFD,
    objects → str, nesting past 100 → null."""
    value = {"n": math.nan, "i": [math.inf, -math.inf], "big": 2**70, "t": (1, 2), 3: "k",
             "s": "a\ud800b", "o": object(), "deep": nested(150), "ok": [True, None, 1.5]}
    clean = bounds.sanitize(value)
    json.dumps(clean, allow_nan=False)
    assert clean["n"] is None and clean["i"] == [None, None] and clean["big"] == str(2**70)
    assert clean["t"] == [1, 2] and clean["3"] == "k" and clean["s"] == "a\ufffdb"
    assert clean["o"].startswith("<object object") and clean["ok"] == [True, None, 1.5]
    depth, item = 0, clean["deep"]
    while isinstance(item, list) and item:
        depth, item = depth + 1, item[0]
    assert depth == bounds.MAX_DEPTH - 1  # the outer dict is level 1
    with pytest.raises(TypeError, match="not JSON serializable"):
        bounds.sanitize([object()], strict=True)
    bounds.sanitize(nested(200_000))  # no RecursionError


@pytest.mark.parametrize("size", [0, 10, 1024, 1025, 5000, 10**6])
def test_clip_keeps_both_ends_within_the_limit(size: int) -> None:
    """Clipped text is at most the limit, keeps its head and tail, and says how much went."""
    text = "H" + "x" * max(size - 2, 0) + "T" if size >= 2 else "x" * size
    out = bounds.clip(text, 1024)
    assert out is not None and len(out) <= 1024
    if size <= 1024:
        assert out == text
    else:
        assert out.startswith("H") and out.endswith("T")
        kept = len(out) - len(out[out.index("\n…"):out.index("…\n") + 2])
        assert f"[cut {size - kept} chars]" in out
    assert bounds.clip(None, 10) is None


def test_allowlist_values_use_the_same_bounds() -> None:
    """inf, nan, 1e300 and huge ints in the allowlist are one-line config errors."""
    for line in ("timeout = inf", "retry_delay = nan", "timeout = 1e300", "max_attempts = 1" + "0" * 30,
                 "max_retry_delay = 31536001", "max_attempts = 1" + "0" * 5000):
        with pytest.raises(ConfigError, match=r"^a\.toml: ") as info:
            parse_config(f"[defaults]\n{line}\n", "a.toml")
        assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="result_max_bytes"):
        parse_config("[runner]\nresult_max_bytes = 1048577\n", "a.toml")


def test_import_root_is_resolved_against_the_project(tmp_path: Path) -> None:
    """``import_root`` relative to the folder holding ``config/`` (else the file's folder); absolute kept."""
    project, absolute = tmp_path / "p", tmp_path / "abs"
    for folder in (project / "config", project / "src", absolute):
        folder.mkdir(parents=True)
    in_config, beside = str(project / "config" / "a.toml"), str(project / "a.toml")
    assert parse_config('[runner]\nimport_root = "."\n', in_config).runner.import_root == str(project)
    assert parse_config('[runner]\nimport_root = "src"\n', beside).runner.import_root == str(project / "src")
    assert parse_config(f'[runner]\nimport_root = "{absolute}"\n', beside).runner.import_root == str(absolute)
    assert parse_config("", beside).runner.import_root is None
    with pytest.raises(ConfigError, match="import_root"):
        parse_config("[runner]\nimport_root = 3\n", beside)
    with pytest.raises(ConfigError, match=r"runner\.import_root: .*nope is not a folder"):
        parse_config('[runner]\nimport_root = "nope"\n', beside)


def test_settle_stores_outcomes_clipped_and_strict() -> None:
    """Whatever path an outcome comes by, settle stores it clipped and as strict JSON."""
    out = storable(Outcome.raised("e" * 10**6, "t" * 10**6, ["ValueError"]))
    assert len(out.error or "") <= bounds.MAX_ERROR_CHARS
    assert len(out.traceback or "") <= bounds.MAX_TRACEBACK_CHARS
    done = storable(Outcome.completed('{"a": NaN, "b": [Infinity], "c": 1}'))
    assert json.loads(done.result or "") == {"a": None, "b": [None], "c": 1}
    assert storable(Outcome.completed('"ok"')).result == '"ok"'
    assert storable(Outcome.completed("[" * 5000)).result is None


def test_from_exception_survives_an_unprintable_exception() -> None:
    """An exception whose ``__str__`` raises is still recorded, not lost."""

    class Bad(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    out = Outcome.from_exception(Bad())
    assert out.error is not None and "Bad" in out.error


def test_progress_reports_are_cleaned() -> None:
    """``progress()`` with NaN/inf and a huge message: null and a clipped message."""
    from bgrunner.job.reporting import clean_report

    report = clean_report(math.nan, math.inf, "m" * 10_000)
    json.dumps(report, allow_nan=False)
    assert report["done"] is None and report["total"] is None
    assert len(report["message"]) <= bounds.MAX_PROGRESS_MESSAGE_CHARS


def test_bounds_is_cheap_to_import() -> None:
    """On the job path: beyond the foundation, bounds pulls in nothing but json, math and re."""
    code = ("import sys, bgrunner.errors, bgrunner.model; before = set(sys.modules); "
            "import bgrunner.bounds; print(sorted(set(sys.modules) - before))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = {name.split(".")[0].lstrip("_") for name in eval(r.stdout)}
    assert added <= {"bgrunner", "json", "math", "re", "sre"}, added
