"""The dashboard's pure pieces, without a server: forms, log search, charts, auth helpers."""

from __future__ import annotations

import json
import time
import typing
from pathlib import Path

import pytest

from bgrunner.allowlist import parse_config
from bgrunner.dashboard import charts
from bgrunner.dashboard.auth import Auth
from bgrunner.dashboard.forms import describe_method, kind_of, parse_form
from bgrunner.dashboard.jobview import job_events, read_output
from bgrunner.dashboard.limits import AttemptLimiter, StreamSlots
from bgrunner.dashboard.server import is_loopback
from bgrunner.dashboard.views.pages import safe_next

CONFIG = parse_config("""
[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]
[jobs."examples.jobs:SlowJob"]
methods = ["run"]
""", "test.toml")


def test_input_kinds_follow_annotations_and_defaults() -> None:
    """int/float -> number, bool -> checkbox, containers -> JSON, Optional[X] as X, else text."""
    assert kind_of(int) == "int" and kind_of(float) == "float" and kind_of(bool) == "bool"
    assert kind_of(list[int]) == "json" and kind_of(dict[str, int]) == "json"
    # The old spellings are what many job modules still use: they must work too.
    assert kind_of(typing.Optional[int]) == "int" and kind_of(int | None) == "int"  # noqa: UP045
    assert kind_of(typing.Union[int, str]) == "text" and kind_of(str) == "text"  # noqa: UP007
    assert kind_of(typing.Any, 3) == "int" and kind_of(typing.Any) == "text"


def test_form_values_become_typed_keyword_params() -> None:
    """Posted text becomes int, float and bool params; empty optional fields keep defaults."""
    info = describe_method(CONFIG.jobs["examples.jobs:SampleJob"], "process")
    assert [f.name for f in info.fields] == ["name", "times", "loud"]
    parsed = parse_form(info, {"p.name": "x", "p.times": "3", "p.loud": "true", "priority": "2"})
    assert parsed.params == {"name": "x", "times": 3, "loud": True}
    assert parsed.priority == 2 and parsed.delay == 0 and parsed.errors == {}
    parsed = parse_form(info, {"p.name": "x", "p.times": "", "delay": "1.5"})
    assert parsed.params == {"name": "x", "loud": False} and parsed.delay == 1.5
    bad = parse_form(info, {"p.times": "2.5", "priority": "x", "delay": "-1"})
    assert set(bad.errors) == {"times", "priority", "delay"}


def write_log(path: Path, lines: list[tuple[float, str]]) -> None:
    with open(path, "w") as f:
        for at, job in lines:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000000Z"
            f.write(json.dumps({"timestamp": stamp, "level": "info", "event": "job_started",
                                "job_id": job, "target": "t", "method": "m", "attempt": 1,
                                "pid": 1, "n": at}) + "\n")


def test_job_events_are_found_in_rotated_files_within_the_window(tmp_path: Path) -> None:
    """Events come from the main log and rotated files, oldest first, limited to the window."""
    base = 1_700_000_000.0
    old = [(base + i, "7" if i % 1000 == 0 else "8") for i in range(0, 20_000)]
    new = [(base + 20_000 + i, "7" if i % 1000 == 0 else "77") for i in range(0, 20_000)]
    write_log(tmp_path / "background_jobs.log.1", old)
    write_log(tmp_path / "background_jobs.log", new)
    every = job_events(str(tmp_path), 7)
    assert [e["n"] for e in every] == [at for at, job in old + new if job == "7"]
    window = job_events(str(tmp_path), 7, since=base + 15_000, until=base + 25_500)
    assert [e["n"] for e in window] == [base + t for t in (15_000, 16_000, 17_000, 18_000, 19_000,
                                                           20_000, 21_000, 22_000, 23_000,
                                                           24_000, 25_000)]
    assert job_events(str(tmp_path), 7, since=base + 50_000, until=base + 60_000) == []
    assert window[0]["details"] == {"n": base + 15_000}


def test_output_is_read_from_an_offset_or_as_a_tail(tmp_path: Path) -> None:
    """The job page reads the output's tail; the stream continues from an offset."""
    out = tmp_path / "output"
    out.mkdir()
    (out / "5.out").write_bytes(b"a" * 100 + b"tail\n")
    text, offset, truncated = read_output(str(out), 5, limit=10)
    assert (text, offset, truncated) == ("aaaaa" + "tail\n", 105, True)
    (out / "5.out").write_bytes(b"a" * 100 + b"tail\nmore\n")
    assert read_output(str(out), 5, offset=offset) == ("more\n", 110, False)
    assert read_output(str(out), 6) == ("", 0, False)


def test_charts_are_plain_svg_with_classes() -> None:
    """The charts carry no inline style and show a bar per minute with jobs."""
    now = time.time()
    finished = [(now - 90, 1.5, "completed"), (now - 80, 0.2, "failed"), (now - 10, 3.0, "completed")]
    bars = charts.throughput(finished, now)
    assert bars.count("<rect") == 3 and "style=" not in bars
    dots = charts.durations(finished, now)
    assert dots.count("<circle") == 3 and "style=" not in dots
    assert charts.percentile([1, 2, 3, 4], 50) == 2 and charts.percentile([], 95) is None


def test_sessions_are_signed_and_tokens_compared_both_ways() -> None:
    """A session cookie round-trips; a changed one, or one signed by another token, does not."""
    from bgrunner.store.factory import open_store

    store = open_store("memory://")
    auth = Auth("admin-token", "ro-token")
    cookie, who = auth.new_session("admin")
    assert auth.session(cookie) == who
    assert auth.session(cookie[:-2] + "xx") is None
    assert Auth("other-token", "ro-token").session(cookie) is None
    assert auth.role_of("admin-token") == "admin" and auth.role_of("ro-token") == "read-only"
    assert auth.role_of("nope") is None and auth.role_of("") is None
    assert not auth.revoked(store, who)
    auth.revoke(store, who)
    assert auth.revoked(store, who)
    assert Auth("admin-token", "ro-token").revoked(store, who)  # another process sees it too
    with pytest.raises(ValueError):
        Auth("")


def test_login_limiter_counts_attempts_per_address() -> None:
    """Five attempts block that address only; a forgiven (successful) one does not count."""
    limiter = AttemptLimiter(per_address=5, total=1000, window=60)
    assert limiter.attempt("10.0.0.1") == 0
    limiter.forgive("10.0.0.1")
    for _ in range(5):
        assert limiter.attempt("10.0.0.1") == 0
    assert limiter.attempt("10.0.0.1") > 0 and limiter.blocked("10.0.0.1") > 0
    assert limiter.attempt("10.0.0.2") == 0


def test_attempt_limiter_has_a_global_limit_beside_the_per_address_one() -> None:
    """Many addresses with one attempt each are stopped by the global limit."""
    limiter = AttemptLimiter(per_address=5, total=20, window=60)
    results = [limiter.attempt(f"10.0.{i // 256}.{i % 256}") for i in range(100)]
    assert results[:20] == [0.0] * 20
    assert all(wait > 0 for wait in results[20:])


def test_stream_slots_are_capped_per_identity_and_in_all() -> None:
    """A caller gets at most its share of stream slots, and everybody together the total."""
    slots = StreamSlots(per_identity=2, total=3)
    assert slots.take("a") and slots.take("a") and not slots.take("a")
    assert slots.take("b") and not slots.take("c")
    slots.give_back("a")
    assert slots.take("c") and slots.open() == 3


def test_loopback_hosts_and_safe_redirects() -> None:
    """Only loopback addresses may run without a configured token; redirects stay on site."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.com")
    assert safe_next("/jobs?status=failed") == "/jobs?status=failed"
    for bad in ("//evil.example", "/\\evil.example", "https://evil.example", "", None):
        assert safe_next(bad) == "/"


def test_event_stream_ends_when_the_client_disconnects(tmp_path: Path) -> None:
    """After the client goes away the stream's loop stops (not at its 5-minute lifetime)."""
    import anyio

    from bgrunner.context import Context
    from bgrunner.dashboard.app import create_app

    ctx = Context(str(tmp_path / "none.toml"), str(tmp_path / "logs"),
                  f"sqlite:///{tmp_path / 'jobs.db'}", autostart=False)
    app = create_app(ctx, token="t")
    gone = anyio.Event()
    sent: list[bytes] = []

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        body = message.get("body", b"")
        assert isinstance(body, bytes)
        sent.append(body)
        if body.startswith(b"data:"):
            gone.set()  # the first message arrived: hang up

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/events",
             "raw_path": b"/events", "query_string": b"", "root_path": "",
             "headers": [(b"authorization", b"Bearer t"), (b"host", b"127.0.0.1:8000")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}

    async def run() -> float:
        started = time.monotonic()
        with anyio.fail_after(10):
            await app(scope, receive, send)
        return time.monotonic() - started

    assert anyio.run(run) < 5
    assert any(b'"counts"' in body for body in sent)


def test_shared_reads_are_never_older_than_the_stream_asking(tmp_path: Path) -> None:
    """A read shared between streams is reused within its TTL, but not by a stream opened after it started."""

    from bgrunner.context import Context
    from bgrunner.dashboard.state import Dashboard

    dash = Dashboard(Context(config_path=str(tmp_path / "a.toml"), log_dir=str(tmp_path),
                             database_url="memory://shared-test"))
    reads: list[int] = []

    def fetch() -> int:
        reads.append(len(reads))
        return len(reads)

    assert dash.shared(("k",), fetch) == 1
    assert dash.shared(("k",), fetch) == 1  # shared within the TTL
    opened = time.monotonic()
    assert dash.shared(("k",), fetch, not_before=opened) == 2  # the earlier read predates the stream
    assert dash.shared(("k",), fetch, not_before=opened) == 2
