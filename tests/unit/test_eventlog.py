"""The JSON event log, one process: line format, routing, rotation, failure modes."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from bgrunner.eventlog import (
    ERROR_LOG,
    MAIN_LOG,
    EventLog,
    format_exception,
    log_files,
    read_events,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY_ORDER = ["timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid"]


def lines_of(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_line_has_required_keys_in_order(tmp_path: pathlib.Path) -> None:
    """Each line starts with timestamp, level, event, job_id, target, method, attempt, pid."""
    log = EventLog(tmp_path)
    log.emit("job_completed", job_id="j1", target="m:C", method="run", attempt=2, duration_ms=12)
    (line,) = lines_of(tmp_path / MAIN_LOG)
    assert list(line) == KEY_ORDER + ["duration_ms"]
    assert line["event"] == "job_completed"
    assert line["level"] == "info"
    assert [line[k] for k in KEY_ORDER[3:7]] == ["j1", "m:C", "run", 2]
    assert line["pid"] == os.getpid()
    assert line["duration_ms"] == 12


def test_timestamp_is_utc_iso8601_with_microseconds_and_z(tmp_path: pathlib.Path) -> None:
    """The timestamp ends in Z, has 6 fraction digits and parses as the current UTC time."""
    log = EventLog(tmp_path)
    before = datetime.now(UTC)
    log.emit("job_started")
    after = datetime.now(UTC)
    stamp = lines_of(tmp_path / MAIN_LOG)[0]["timestamp"]
    assert stamp.endswith("Z") and len(stamp.split(".")[1]) == len("123456Z")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= parsed <= after + timedelta(milliseconds=1)


def test_missing_required_fields_are_null_and_pid_defaults(tmp_path: pathlib.Path) -> None:
    """Without job_id/target/method/attempt the keys are still there as null; pid is ours."""
    log = EventLog(tmp_path)
    log.emit("job_queued")
    log.emit("job_started", pid=4242)
    first, second = lines_of(tmp_path / MAIN_LOG)
    assert [first[k] for k in ("job_id", "target", "method", "attempt")] == [None] * 4
    assert first["pid"] == os.getpid()
    assert second["pid"] == 4242


def test_error_events_go_to_both_files_and_others_to_main_only(tmp_path: pathlib.Path) -> None:
    """job_failed and job_rejected (level error) reach both files; info and warning the main one."""
    log = EventLog(tmp_path)
    log.emit("job_started", job_id="a")
    log.emit("job_retrying", job_id="a", error="boom", retry_in_s=5)
    log.emit("job_failed", job_id="a", error="boom", traceback="tb")
    log.emit("job_rejected", job_id="b", reason="not allowed")
    log.emit("job_completed", job_id="c", duration_ms=1)
    main = lines_of(tmp_path / MAIN_LOG)
    errors = lines_of(tmp_path / ERROR_LOG)
    assert [(e["event"], e["level"]) for e in main] == [
        ("job_started", "info"),
        ("job_retrying", "warning"),
        ("job_failed", "error"),
        ("job_rejected", "error"),
        ("job_completed", "info"),
    ]
    assert errors == [main[2], main[3]]


def test_the_level_decides_the_errors_file(tmp_path: pathlib.Path) -> None:
    """Any line given level "error" goes to the errors file; an overridden level is respected."""
    log = EventLog(tmp_path)
    log.emit("store_unreachable", level="error")
    log.emit("job_failed", level="info")
    assert [e["event"] for e in lines_of(tmp_path / ERROR_LOG)] == ["store_unreachable"]
    assert len(lines_of(tmp_path / MAIN_LOG)) == 2


def test_no_errors_file_until_an_error(tmp_path: pathlib.Path) -> None:
    """Files are created at the first line that needs them."""
    log = EventLog(tmp_path / "logs")
    assert not (tmp_path / "logs").exists()
    log.emit("job_started")
    assert (tmp_path / "logs" / MAIN_LOG).exists()
    assert not (tmp_path / "logs" / ERROR_LOG).exists()


def test_bind_adds_fields_and_call_fields_win(tmp_path: pathlib.Path) -> None:
    """A bound view adds its fields to each line; bind stacks; a call's field overrides."""
    log = EventLog(tmp_path)
    job = log.bind(job_id="j1", target="m:C", method="run")
    attempt = job.bind(attempt=1, host="h")
    attempt.emit("job_started")
    attempt.emit("job_retrying", attempt=2, retry_in_s=1.5)
    job.emit("job_queued")
    log.emit("worker_started")
    started, retrying, queued, worker = lines_of(tmp_path / MAIN_LOG)
    assert (started["job_id"], started["attempt"], started["host"]) == ("j1", 1, "h")
    assert (retrying["attempt"], retrying["retry_in_s"]) == (2, 1.5)
    assert (queued["job_id"], queued["attempt"]) == ("j1", None) and "host" not in queued
    assert worker["job_id"] is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_bound_views_share_the_file_handles(tmp_path: pathlib.Path) -> None:
    """Binding opens nothing: a hundred views write through the same two descriptors."""
    log = EventLog(tmp_path)
    log.emit("job_failed")
    before = len(os.listdir("/proc/self/fd"))
    for n in range(100):
        log.bind(job_id=str(n)).emit("job_failed")
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(lines_of(tmp_path / ERROR_LOG)) == 101


def test_unserialisable_values_are_written_as_strings(tmp_path: pathlib.Path) -> None:
    """Values json can't write use str(); NaN, cycles and bad keys never break the line."""
    cycle: list[object] = []
    cycle.append(cycle)

    class Odd:
        def __str__(self) -> str:
            raise RuntimeError("no")

    log = EventLog(tmp_path)
    log.emit("a", path=pathlib.Path("/x/y"), when=datetime(2024, 1, 2, tzinfo=UTC))
    log.emit("b", nan=math.nan, cycle=cycle, keys={(1, 2): "tuple key"}, odd=Odd(), ok=1)
    first, second = lines_of(tmp_path / MAIN_LOG)
    assert first["path"] == "/x/y"
    assert first["when"] == "2024-01-02 00:00:00+00:00"
    assert second["nan"] == "nan" and second["ok"] == 1
    assert isinstance(second["cycle"], str) and isinstance(second["keys"], str)
    assert second["odd"] == "<unprintable Odd>"


def test_newlines_and_non_ascii_stay_on_one_ascii_line(tmp_path: pathlib.Path) -> None:
    """Multi-line values and any character keep the record on one ASCII line."""
    log = EventLog(tmp_path)
    text = "line1\nline2\r\u2028é\udc80"
    log.emit("job_failed", traceback=text)
    raw = (tmp_path / MAIN_LOG).read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    assert json.loads(raw)["traceback"] == text


def test_files_and_folder_are_private(tmp_path: pathlib.Path) -> None:
    """A created log folder is 0o700 and the log files 0o600."""
    old = os.umask(0o022)
    try:
        log = EventLog(tmp_path / "a" / "logs")
        log.emit("job_failed")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "logs").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "logs" / MAIN_LOG).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a" / "logs" / ERROR_LOG).stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_backups_files_each_within_max_bytes(tmp_path: pathlib.Path) -> None:
    """Past max_bytes the file rotates to .1, .2 ...; only `backups` old files are kept."""
    log = EventLog(tmp_path, max_bytes=1000, backups=3)
    for seq in range(100):
        log.emit("tick", seq=seq, pad="x" * 50)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert names == [MAIN_LOG, MAIN_LOG + ".1", MAIN_LOG + ".2", MAIN_LOG + ".3"]
    seqs = []
    for path in log_files(tmp_path / MAIN_LOG):
        assert os.path.getsize(path) <= 1000
        seqs += [e["seq"] for e in read_events(path)]
    assert seqs == list(range(seqs[0], 100)) and seqs[0] > 0


def test_rotation_with_zero_backups_truncates(tmp_path: pathlib.Path) -> None:
    """backups=0 empties the full file in place instead of keeping old lines."""
    log = EventLog(tmp_path, max_bytes=1000, backups=0)
    for seq in range(100):
        log.emit("tick", seq=seq, pad="x" * 50)
    assert log_files(tmp_path / MAIN_LOG) == [str(tmp_path / MAIN_LOG)]
    seqs = [e["seq"] for e in read_events(tmp_path / MAIN_LOG)]
    assert seqs[-1] == 99 and os.path.getsize(tmp_path / MAIN_LOG) <= 1000


def test_a_line_bigger_than_max_bytes_is_written_whole(tmp_path: pathlib.Path) -> None:
    """A line larger than max_bytes gets a file of its own rather than being cut or dropped."""
    log = EventLog(tmp_path, max_bytes=100, backups=5)
    log.emit("small")
    log.emit("big", pad="y" * 500)
    log.emit("small")
    events = [e["event"] for p in log_files(tmp_path / MAIN_LOG) for e in read_events(p)]
    assert events == ["small", "big", "small"]


def test_a_writer_follows_a_rotation_done_by_another(tmp_path: pathlib.Path) -> None:
    """A log whose file was rotated by another writer reopens the new file on its next line."""
    rotator = EventLog(tmp_path, max_bytes=500, backups=5)
    other = EventLog(tmp_path, max_bytes=500, backups=5)
    other.emit("before")
    while not (tmp_path / (MAIN_LOG + ".1")).exists():
        rotator.emit("fill", pad="z" * 100)
    other.emit("after")
    current = [e["event"] for e in read_events(tmp_path / MAIN_LOG)]
    assert current[-1] == "after"
    assert [e["event"] for e in read_events(tmp_path / (MAIN_LOG + ".1"))][0] == "before"


def test_close_then_emit_reopens(tmp_path: pathlib.Path) -> None:
    """close releases the files; a later emit opens them again and nothing is lost."""
    with EventLog(tmp_path) as log:
        log.emit("one")
    log.emit("two")
    log.close()
    assert [e["event"] for e in read_events(tmp_path / MAIN_LOG)] == ["one", "two"]


def test_unwritable_dir_warns_once_and_emit_does_not_raise(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A log folder that can't be created gives one stderr warning; emit stays silent after."""
    (tmp_path / "afile").write_text("in the way")
    log_dir = tmp_path / "afile" / "logs"
    log = EventLog(log_dir)
    for _ in range(3):
        log.emit("job_started")
        log.bind(job_id="x").emit("job_failed", error="e")
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"bgrunner: warning: cannot write logs to {log_dir}: ")
    assert err.rstrip().endswith("; continuing without logs")
    assert "Not a directory" in err


def test_log_dir_that_is_a_file_warns_once(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A regular file given as the log folder is one warning, not an exception."""
    (tmp_path / "logs").write_text("")
    log = EventLog(tmp_path / "logs")
    log.emit("job_failed")
    log.emit("job_failed")
    assert capfd.readouterr().err.count("bgrunner: warning: cannot write logs to") == 1


def test_read_events_skips_malformed_lines_and_filters(tmp_path: pathlib.Path) -> None:
    """read_events yields only JSON objects, skipping garbage, and filters by job_id."""
    path = tmp_path / MAIN_LOG
    log = EventLog(tmp_path)
    log.emit("job_started", job_id="a")
    with open(path, "ab") as f:
        f.write(b'{"truncated": \n\n[1, 2]\n\xff\xfe not json\n')
    log.emit("job_started", job_id="b")
    log.emit("job_completed", job_id="a")
    assert [e["job_id"] for e in read_events(path)] == ["a", "b", "a"]
    assert [e["event"] for e in read_events(path, job_id="a")] == ["job_started", "job_completed"]
    assert list(read_events(tmp_path / "missing.log")) == []


def test_log_files_lists_rotated_files_oldest_first(tmp_path: pathlib.Path) -> None:
    """log_files returns .N ... .2, .1, then the current file, numerically ordered."""
    for suffix in ["", ".1", ".2", ".10", ".lock", ".x"]:
        (tmp_path / (MAIN_LOG + suffix)).write_text("")
    names = [os.path.basename(p) for p in log_files(tmp_path / MAIN_LOG)]
    assert names == [MAIN_LOG + ".10", MAIN_LOG + ".2", MAIN_LOG + ".1", MAIN_LOG]


def test_format_exception_gives_the_full_traceback() -> None:
    """format_exception includes the frames, the message and a chained cause."""

    def inner() -> None:
        raise KeyError("missing")

    try:
        try:
            inner()
        except KeyError as exc:
            raise ValueError("bad value") from exc
    except ValueError as exc:
        text = format_exception(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "in inner" in text and "KeyError: 'missing'" in text
    assert "direct cause" in text and text.endswith("ValueError: bad value")


def test_negative_sizes_are_refused(tmp_path: pathlib.Path) -> None:
    """max_bytes and backups below zero are a programming error, raised at construction."""
    with pytest.raises(ValueError):
        EventLog(tmp_path, max_bytes=-1)
    with pytest.raises(ValueError):
        EventLog(tmp_path, backups=-1)


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs setitimer")
def test_a_signal_handler_may_log_in_the_middle_of_a_line(tmp_path: pathlib.Path) -> None:
    """A handler that emits while the same thread is mid-emit neither deadlocks nor loses lines."""
    code = f"""
import signal, sys
sys.path.insert(0, {str(REPO)!r})
from bgrunner.eventlog import EventLog
log = EventLog({str(tmp_path)!r}, max_bytes=50_000, backups=1000)
fired = 0
def handler(signum, frame):
    global fired
    fired += 1
    log.emit("job_failed", source="handler", n=fired)
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
for n in range(8000):
    log.emit("job_failed", source="main", n=n)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(fired)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    fired = int(done.stdout)
    assert fired > 0
    for name in (MAIN_LOG, ERROR_LOG):
        events = [e for p in log_files(tmp_path / name) for e in read_events(p)]
        assert sum(e["source"] == "main" for e in events) == 8000
        assert sum(e["source"] == "handler" for e in events) == fired
