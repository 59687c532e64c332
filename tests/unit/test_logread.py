"""The log reader (``bgrunner.logread``) on generated multi-file logs whose answers are known.

The log: 5000 lines, one every 37 s from 2024-03-30T20:00Z (so it crosses UTC midnight
and the Europe/Paris DST change at 2024-03-31T01:00Z), spread over ``.4.gz``, ``.3.gz``,
``.2``, ``.1`` and the current file. Every expected answer is computed from the records
themselves with plain Python, never through the reader.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bgrunner import logread
from bgrunner.errors import UsageError
from bgrunner.eventlog import EventLog
from bgrunner.logread import LogFilter, ReadStats

BASE = datetime(2024, 3, 30, 20, 0, tzinfo=UTC).timestamp()
STEP = 37.0
COUNT = 5000
LEVELS = ("debug", "info", "warning", "error", "critical")
EVENTS = ("job_started", "job_progress", "job_completed", "email_sent")
TARGETS = ("shop.jobs:Mailer", "shop.jobs:Report", "other:Thing")
#: Which records go to which file, oldest first.
SPLIT = ((".4.gz", 0, 900), (".3.gz", 900, 1800), (".2", 1800, 2900), (".1", 2900, 4000), ("", 4000, COUNT))


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(i: int) -> dict[str, Any]:
    return {"timestamp": iso(BASE + i * STEP), "level": LEVELS[i % 5], "event": EVENTS[i % 4],
            "job_id": str(i % 13), "target": TARGETS[i % 3], "method": "run", "attempt": 1, "pid": 100 + i % 7,
            "i": i, "user": f"user-{i % 7}"}


RECORDS = [record(i) for i in range(COUNT)]


def encode(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec) + "\n").encode("ascii")


def write_file(path: Path, data: bytes) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as g:
            g.write(data)
    else:
        path.write_bytes(data)
    path.chmod(0o600)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """The generated log; returns the current file's path."""
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    main = folder / "background_jobs.log"
    for suffix, lo, hi in SPLIT:
        write_file(Path(str(main) + suffix), b"".join(encode(r) for r in RECORDS[lo:hi]))
    return main


def ids(lines: Iterator[tuple[str, dict[str, Any]]] | list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [event["i"] for _, event in lines]


def expected(pred: Callable[[dict[str, Any]], bool]) -> list[int]:
    return [r["i"] for r in RECORDS if pred(r)]


def at(i: int) -> float:
    return BASE + i * STEP


RANK = {name: n for n, name in enumerate(LEVELS)}

#: (filter, the same as a predicate over a record)
FILTERS: dict[str, tuple[LogFilter, Callable[[dict[str, Any]], bool]]] = {
    "since": (LogFilter(since=at(3333)), lambda r: r["i"] >= 3333),
    "since between lines": (LogFilter(since=at(1234) + 1), lambda r: r["i"] >= 1235),
    "until": (LogFilter(until=at(2100)), lambda r: r["i"] <= 2100),
    "since and until in one gz file": (LogFilter(since=at(950), until=at(1010)), lambda r: 950 <= r["i"] <= 1010),
    "level": (LogFilter(level="error"), lambda r: RANK[r["level"]] >= RANK["error"]),
    "level warn alias": (LogFilter(level="WARN"), lambda r: RANK[r["level"]] >= RANK["warning"]),
    "one event": (LogFilter(events=("job_completed",)), lambda r: r["event"] == "job_completed"),
    "two events": (LogFilter(events=("job_started", "email_sent")),
                   lambda r: r["event"] in ("job_started", "email_sent")),
    "target": (LogFilter(target="shop.jobs:Report"), lambda r: r["target"] == "shop.jobs:Report"),
    "grep": (LogFilter(grep=re.compile(r'"user": "user-[34]"')), lambda r: r["user"] in ("user-3", "user-4")),
    "job": (LogFilter(job_id="7"), lambda r: r["job_id"] == "7"),
    "job and level and since": (LogFilter(job_id="7", level="warning", since=at(2000)),
                                lambda r: r["job_id"] == "7" and RANK[r["level"]] >= 2 and r["i"] >= 2000),
    "everything": (LogFilter(since=at(500), until=at(4500), level="info", events=("job_progress", "job_completed"),
                             target="shop.jobs:Mailer", grep=re.compile("user-[0-5]"), job_id="4"),
                   lambda r: 500 <= r["i"] <= 4500 and r["level"] != "debug"
                   and r["event"] in ("job_progress", "job_completed") and r["target"] == "shop.jobs:Mailer"
                   and r["user"] <= "user-5" and r["job_id"] == "4"),
    "nothing": (LogFilter(job_id="99"), lambda r: False),
}


# -- files ----------------------------------------------------------------------------------------
def test_log_paths_lists_plain_and_gzipped_rotations_oldest_first(log: Path) -> None:
    """.N.gz and .N in numeric order, then the current file; locks, temp files and other names are not the log's."""
    for name in ("background_jobs.log.lock", "background_jobs.log.5.gz.tmp", "background_jobs.log.bak",
                 "background_jobs.log.x1", "background_jobs.log.²", "other.log.1"):
        (log.parent / name).write_text("")
    names = [os.path.basename(p) for p in logread.log_paths(log)]
    assert names == ["background_jobs.log.4.gz", "background_jobs.log.3.gz", "background_jobs.log.2",
                     "background_jobs.log.1", "background_jobs.log"]


def test_log_paths_prefers_the_plain_file_while_both_exist(log: Path) -> None:
    """Halfway through compressing .2 both .2 and .2.gz exist: the plain one is the whole one."""
    (log.parent / "background_jobs.log.2.gz").write_bytes(b"partial")
    assert [os.path.basename(p) for p in logread.log_paths(log)][2] == "background_jobs.log.2"


def test_read_returns_every_line_across_rotated_and_gzipped_files_in_order(log: Path) -> None:
    """No filter: every line of every file, oldest first, each as written and parsed."""
    lines = list(logread.read(log))
    assert ids(lines) == list(range(COUNT))
    assert lines[10][0] == encode(RECORDS[10]).decode().rstrip("\n")


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    """No file yet (the errors log before any failure): nothing, no error."""
    assert list(logread.read(tmp_path / "nothing.log")) == []
    assert logread.newest(tmp_path / "nothing.log", limit=5) == ([], None)


# -- filters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_alone_and_combined_gives_the_known_answer(log: Path, name: str) -> None:
    """Every filter (and combinations) over the five files equals the same predicate over the records."""
    filt, pred = FILTERS[name]
    assert ids(logread.read(log, filt)) == expected(pred)


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("last", [1, 7, 150, 4000])
def test_last_n_is_the_tail_of_the_same_answer(log: Path, name: str, last: int) -> None:
    """-n N: the last N of exactly those lines (reading backwards, into rotated and gzipped files)."""
    filt, pred = FILTERS[name]
    assert ids(logread.read(log, filt, last=last)) == expected(pred)[-last:]


def test_last_zero_is_nothing(log: Path) -> None:
    """-n 0 shows no line."""
    assert list(logread.read(log, last=0)) == []


def test_the_job_filter_is_exact_though_the_byte_check_is_loose(log: Path) -> None:
    """job 1 does not match job 11 or 12, nor a line where "1" is another field's value."""
    with open(log, "ab") as f:
        f.write(encode({**record(COUNT), "i": COUNT, "job_id": "11", "note": "1"}))
    assert ids(logread.read(log, LogFilter(job_id="1"))) == expected(lambda r: r["job_id"] == "1")


# -- times ----------------------------------------------------------------------------------------
NOW = datetime(2024, 3, 31, 0, 10, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("text", "when"), [
    ("2024-03-31T00:00:00Z", datetime(2024, 3, 31, tzinfo=UTC)),
    ("2024-03-31T00:00:00.250000Z", datetime(2024, 3, 31, 0, 0, 0, 250000, tzinfo=UTC)),
    ("2024-03-31T00:00:00", datetime(2024, 3, 31, tzinfo=UTC)),  # no offset: UTC
    ("2024-03-31", datetime(2024, 3, 31, tzinfo=UTC)),
    ("2024-03-31 02:30+02:00", datetime(2024, 3, 31, 0, 30, tzinfo=UTC)),
    ("2024-03-30T19:00-05:00", datetime(2024, 3, 31, 0, 0, tzinfo=UTC)),
    ("30s", datetime(2024, 3, 31, 0, 9, 30, tzinfo=UTC)),
    ("10m", datetime(2024, 3, 31, 0, 0, tzinfo=UTC)),
    ("2h", datetime(2024, 3, 30, 22, 10, tzinfo=UTC)),  # across midnight
    ("1.5h", datetime(2024, 3, 30, 22, 40, tzinfo=UTC)),
    ("7d", datetime(2024, 3, 24, 0, 10, tzinfo=UTC)),
    ("1w", datetime(2024, 3, 24, 0, 10, tzinfo=UTC)),
    ("now", datetime(2024, 3, 31, 0, 10, tzinfo=UTC)),
    ("@1711843200", datetime(2024, 3, 31, tzinfo=UTC)),
])
def test_parse_time_reads_iso_8601_and_relative_ages(text: str, when: datetime) -> None:
    """ISO 8601 with Z, an offset or none (UTC), a date alone; ages before now; now; @epoch."""
    assert logread.parse_time(text, NOW) == pytest.approx(when.timestamp(), abs=1e-6)


@pytest.mark.parametrize("text", ["", "yesterday", "10", "10M", "-5m", "5 minutes", "2024-13-01", "@", "@nan",
                                  "@-1", "1e9999d", "2024-03-31T25:00", "2024-03-31T00:00+25:00", "x\ny"])
def test_parse_time_refuses_anything_else_in_one_line(text: str) -> None:
    """A bad time is a UsageError of one line that names the flag and the accepted forms."""
    with pytest.raises(UsageError) as info:
        logread.parse_time(text, NOW, what="--since")
    message = str(info.value)
    assert message.startswith("--since: not a time") and "\n" not in message and "30s" in message


def test_times_across_midnight_and_a_dst_change_select_the_right_lines(log: Path) -> None:
    """Paris times on both sides of the 2024-03-31 change (CET+1 -> CEST+2) select the UTC lines they name."""
    paris = ZoneInfo("Europe/Paris")
    # 00:59Z is 01:59 CET (before the change), 01:30Z is 03:30 CEST (after it).
    since = datetime(2024, 3, 31, 0, 59, tzinfo=UTC).astimezone(paris).isoformat()
    until = datetime(2024, 3, 31, 1, 30, tzinfo=UTC).astimezone(paris).isoformat()
    assert since.endswith("+01:00") and until.endswith("+02:00")
    filt = LogFilter.parse(since=since, until=until, now=NOW)
    lo, hi = datetime(2024, 3, 31, 0, 59, tzinfo=UTC).timestamp(), datetime(2024, 3, 31, 1, 30, tzinfo=UTC).timestamp()
    want = expected(lambda r: lo <= at(r["i"]) <= hi)
    assert want and ids(logread.read(log, filt)) == want
    # relative, across UTC midnight: the last 30 minutes before 00:10Z start on the 30th
    filt = LogFilter.parse(since="30m", until="now", now=NOW)
    want = expected(lambda r: NOW - 1800 <= at(r["i"]) <= NOW)
    got = list(logread.read(log, filt))
    assert ids(got) == want and got[0][1]["timestamp"].startswith("2024-03-30T23:4")
    assert got[-1][1]["timestamp"].startswith("2024-03-31T00:0")
    # the hour that does not exist in Paris, and the naive form (UTC)
    assert logread.parse_time("2024-03-31T01:30:00", NOW) == datetime(2024, 3, 31, 1, 30, tzinfo=UTC).timestamp()


def test_levels_and_regexes_are_checked(log: Path) -> None:
    """An unknown level or an invalid regex is a one-line UsageError naming the flag."""
    with pytest.raises(UsageError, match=r"^--level: unknown level 'loud' \(one of debug, info"):
        LogFilter.parse(level="loud")
    with pytest.raises(UsageError, match=r"^--grep: invalid regular expression '\(':"):
        LogFilter.parse(grep="(")
    with pytest.raises(UsageError):
        LogFilter(level="verbose")
    assert LogFilter(level="FATAL").level == "critical"
    assert LogFilter.parse(level="Warn", prefix="").level == "warning"


# -- malformed lines -------------------------------------------------------------------------------
def test_malformed_lines_are_skipped_and_counted(log: Path) -> None:
    """Not JSON, not an object, cut short: skipped and counted; a foreign writer's object is read."""
    foreign = json.dumps({"level": "error", "job_id": "5", "event": "foreign", "timestamp": iso(at(COUNT))},
                         separators=(",", ":"))
    with open(log, "ab") as f:
        f.write(b"not json at all\n[1, 2, 3]\n\n" + encode(record(COUNT - 1))[:40] + b"\n")
        f.write(foreign.encode() + b"\n" + "{\"caf\u00e9\": \"\u00e9\"}\n".encode())
    stats = ReadStats()
    lines = list(logread.read(log, stats=stats))
    assert stats.malformed == 3
    assert [e.get("event") for _, e in lines[-2:]] == ["foreign", None]
    assert lines[-1][0] == "{\"caf\u00e9\": \"\u00e9\"}"
    found = list(logread.read(log, LogFilter(job_id="5", level="error"), last=2))
    assert found[-1][1]["event"] == "foreign"
    assert found[0][1]["i"] == expected(lambda r: r["job_id"] == "5" and RANK[r["level"]] >= 3)[-1]
    found = list(logread.read(log, LogFilter(job_id="5", since=at(COUNT - 1))))
    assert [e["event"] for _, e in found] == ["foreign"]


def test_a_broken_gz_file_is_reported_and_the_rest_read(log: Path) -> None:
    """A .gz that is cut short: its readable part, then a note in stats.unreadable; later files still read."""
    gz = Path(str(log) + ".3.gz")
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    stats = ReadStats()
    got = ids(logread.read(log, stats=stats))
    assert len(stats.unreadable) == 1 and "background_jobs.log.3.gz" in stats.unreadable[0]
    assert got[:900] == list(range(900)) and got[-(COUNT - 1800):] == list(range(1800, COUNT))


# -- fast paths ------------------------------------------------------------------------------------
def counting_pread(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", pread)
    return read


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """A ~6 MB current file and a gz before it that must never be decompressed for recent lines."""
    folder = tmp_path / "big"
    folder.mkdir(mode=0o700)
    main = folder / "background_jobs.log"
    write_file(Path(str(main) + ".1.gz"), b"this is not gzip data")
    write_file(main, b"".join(encode({**record(i % COUNT), "i": i, "timestamp": iso(at(i))}) for i in range(30000)))
    return main


def test_since_bisects_and_skips_older_files(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--since near the end reads a small part of the current file and never opens the older (broken) gz."""
    read = counting_pread(monkeypatch)
    stats = ReadStats()
    got = ids(logread.read(big, LogFilter(since=at(29900)), stats=stats))
    assert got == list(range(29900, 30000))
    assert stats.unreadable == []
    assert sum(read) < big.stat().st_size / 20, sum(read)


def test_last_n_reads_backwards_only_as_far_as_needed(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-n 50 with no other filter reads a few blocks from the end, not the file."""
    read = counting_pread(monkeypatch)
    stats = ReadStats()
    assert ids(logread.read(big, last=50, stats=stats)) == list(range(29950, 30000))
    assert sum(read) <= 2 * logread.BACK_BLOCK and stats.unreadable == []


def test_a_line_longer_than_a_block_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines bigger than the read blocks (a huge traceback) are read whole forwards, backwards and by bisection."""
    monkeypatch.setattr(logread, "BLOCK", 1000)
    monkeypatch.setattr(logread, "BACK_BLOCK", 100)
    monkeypatch.setattr(logread, "BISECT_STOP", 200)
    path = tmp_path / "long.log"
    recs = [{**record(i), "pad": "x" * (5000 if i % 10 == 3 else 10)} for i in range(200)]
    write_file(path, b"".join(encode(r) for r in recs))
    assert ids(logread.read(path)) == list(range(200))
    assert ids(logread.read(path, last=25)) == list(range(175, 200))
    assert ids(logread.read(path, LogFilter(since=at(100), until=at(150)))) == list(range(100, 151))
    assert ids(logread.read(path, LogFilter(job_id="3"), last=3)) == [i for i in range(200) if i % 13 == 3][-3:]


def test_lines_a_little_out_of_order_are_still_found(tmp_path: Path) -> None:
    """Lines written up to a few seconds out of order (slow writers, late lines after a rotation) are not lost."""
    path = tmp_path / "jitter.log"
    order = list(range(3000))
    for k in range(0, 3000, 7):
        if k + 1 < 3000:
            order[k], order[k + 1] = order[k + 1], order[k]
    write_file(path, b"".join(encode(record(i)) for i in order))
    assert sorted(ids(logread.read(path, LogFilter(since=at(1000), until=at(2000))))) == list(range(1000, 2001))


# -- newest first, keyset pages ----------------------------------------------------------------------
def pages(path: Path, filt: LogFilter, limit: int) -> list[list[int]]:
    out, cursor = [], None
    while True:
        page, cursor = logread.newest(path, filt, before=cursor, limit=limit)
        out.append(ids(page))
        if cursor is None:
            return out
        assert len(out) < 1000


@pytest.mark.parametrize("name", ["since", "job", "everything", "two events", "nothing"])
def test_newest_pages_walk_the_whole_answer_newest_first(log: Path, name: str) -> None:
    """Pages of 97 lines, cursor after cursor, across files: the answer reversed, nothing twice."""
    filt, pred = FILTERS[name]
    got = pages(log, filt, 97)
    flat = [i for page in got for i in page]
    assert flat == expected(pred)[::-1]
    assert all(len(p) == 97 for p in got[:-1]) and len(got[-1]) <= 97


def test_a_cursor_survives_a_rotation_by_rename(log: Path) -> None:
    """The file a cursor points into is renamed to .1 and new lines arrive: the next page goes on exactly."""
    first, cursor = logread.newest(log, limit=10)
    assert ids(first) == list(range(COUNT - 1, COUNT - 11, -1)) and cursor is not None
    folder = log.parent
    for n in (4, 3):
        os.replace(folder / f"background_jobs.log.{n}.gz", folder / f"background_jobs.log.{n + 1}.gz")
    for n in (2, 1):
        os.replace(folder / f"background_jobs.log.{n}", folder / f"background_jobs.log.{n + 1}")
    os.replace(log, folder / "background_jobs.log.1")
    write_file(log, b"".join(encode({**record(1), "i": COUNT + k, "timestamp": iso(at(COUNT + k))})
                             for k in range(5)))
    second, _ = logread.newest(log, before=cursor, limit=10)
    assert ids(second) == list(range(COUNT - 11, COUNT - 21, -1))


def test_a_cursor_into_a_file_gzipped_since_falls_back_to_its_timestamp(log: Path) -> None:
    """The cursor's file became .gz (a new inode): the next page is what is strictly older than its line."""
    _, cursor = logread.newest(log, LogFilter(until=at(3500)), limit=10)  # into .1
    one = Path(str(log) + ".1")
    write_file(Path(str(log) + ".1.gz"), one.read_bytes())
    one.unlink()
    page, cursor = logread.newest(log, LogFilter(until=at(3500)), before=cursor, limit=10)
    assert ids(page) == list(range(3490, 3480, -1)) and cursor is not None
    page, _ = logread.newest(log, LogFilter(until=at(3500)), before=cursor, limit=3)
    assert ids(page) == [3480, 3479, 3478]


@pytest.mark.parametrize("cursor", ["", "x", "1:2", "zz-1:0:1.0", "1-2:-5:1.0", "1-2:3:nan", "1-2:3:4:5"])
def test_a_bad_cursor_is_a_usage_error(log: Path, cursor: str) -> None:
    """A cursor the reader did not make is refused, never a traceback."""
    if cursor == "":
        assert logread.newest(log, before=cursor, limit=2)[0]  # empty: the first page
        return
    with pytest.raises(UsageError):
        logread.newest(log, before=cursor, limit=2)


# -- following -------------------------------------------------------------------------------------
class Follower:
    """follow() in a thread, collecting what it yields."""

    def __init__(self, path: Path, filt: LogFilter | None = None, **kwargs: Any) -> None:
        kwargs["filt"] = filt
        self.lines: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.stats = ReadStats()
        self.thread = threading.Thread(target=self._run, args=(path, kwargs), daemon=True)
        self.thread.start()

    def _run(self, path: Path, kwargs: dict[str, Any]) -> None:
        for _, event in logread.follow(path, stop=self.done.is_set, stats=self.stats, **kwargs):
            self.lines.append(event)

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # anything doubled would show by now
        return self.lines

    def stop(self) -> list[dict[str, Any]]:
        self.done.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.lines


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events if "seq" in e]


def test_follow_reads_through_many_rotations_by_rename(tmp_path: Path) -> None:
    """EventLog rotating every ~15 lines, several times between two looks: every line once, in order."""
    log = EventLog(tmp_path / "logs", max_bytes=3000, backups=500)
    path = tmp_path / "logs" / "background_jobs.log"
    log.emit("first", seq=0)
    f = Follower(path, poll=0.05)
    time.sleep(0.2)
    for n in range(1, 1500):
        log.emit("tick", seq=n, job_id=str(n % 5), pad="p" * 100)
        if n % 300 == 0:
            time.sleep(0.06)
    got = seqs(f.wait_for(1499))
    f.stop()
    assert len(logread.log_paths(path)) > 100
    assert sorted(got) == list(range(1, 1500)), "lines lost or doubled"
    assert got == list(range(1, 1500)), "one writer's lines out of order"


def test_follow_with_last_n_then_new_lines_and_with_all_history(tmp_path: Path) -> None:
    """last=N: the last N matches there, then new ones; last=None: everything there from the oldest file on."""
    log = EventLog(tmp_path / "logs", max_bytes=2000, backups=100)
    path = tmp_path / "logs" / "background_jobs.log"
    for n in range(100):
        log.emit("tick", seq=n, job_id=str(n % 2))
    tail = Follower(path, last=5, poll=0.02)
    everything = Follower(path, last=None, poll=0.02)
    odd = Follower(path, LogFilter(job_id="1"), last=3, poll=0.02)
    tail.wait_for(5)
    everything.wait_for(100)
    for n in range(100, 110):
        log.emit("tick", seq=n, job_id=str(n % 2))
    assert seqs(tail.wait_for(15)) == list(range(95, 110))
    assert seqs(everything.wait_for(110)) == list(range(110))
    assert seqs(odd.wait_for(8)) == [95, 97, 99, *range(101, 110, 2)]
    for follower in (tail, everything, odd):
        follower.stop()


def test_follow_waits_for_the_file_and_stops_when_asked(tmp_path: Path) -> None:
    """A log not written yet: follow waits, then reads it from its start; stop() ends it."""
    path = tmp_path / "logs" / "background_jobs.log"
    f = Follower(path, poll=0.02)
    time.sleep(0.1)
    log = EventLog(tmp_path / "logs")
    for n in range(3):
        log.emit("tick", seq=n)
    assert seqs(f.wait_for(3)) == [0, 1, 2]
    f.stop()


def copytruncate(path: Path) -> None:
    """What logrotate's copytruncate does: copy the file to .1, then truncate it in place."""
    shutil.copyfile(path, str(path) + ".1")
    os.chmod(str(path) + ".1", 0o600)
    os.truncate(path, 0)


@pytest.mark.parametrize("after", [3, 40])
def test_follow_survives_copytruncate(tmp_path: Path, after: int) -> None:
    """Truncated in place while the follower sleeps, lines written just before (in the copy only) and after
    (fewer than before, or more: the file grew past where it was read) all arrive, once."""
    log = EventLog(tmp_path / "logs", max_bytes=0)
    path = tmp_path / "logs" / "background_jobs.log"
    for n in range(10):
        log.emit("tick", seq=n)
    f = Follower(path, last=None, poll=1.0)
    f.wait_for(10)
    for n in range(10, 13):  # after the follower's last read, before the copy
        log.emit("tick", seq=n)
    copytruncate(path)
    for n in range(13, 13 + after):
        log.emit("tick", seq=n)
    got = seqs(f.wait_for(13 + after))
    f.stop()
    assert got == list(range(13 + after))


def test_follow_survives_logrotate_create(tmp_path: Path) -> None:
    """Renamed to .1 and a new empty file created (logrotate's create): old writers' lines, then the new file's."""
    log = EventLog(tmp_path / "logs", max_bytes=0)
    path = tmp_path / "logs" / "background_jobs.log"
    for n in range(5):
        log.emit("tick", seq=n)
    f = Follower(path, poll=0.05)
    time.sleep(0.2)
    log.emit("tick", seq=5)
    os.replace(path, str(path) + ".1")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    for n in range(6, 12):
        log.emit("tick", seq=n)
    got = seqs(f.wait_for(6))
    f.stop()
    assert got == list(range(5, 12))


def test_follow_reads_a_file_gzipped_before_it_was_seen(tmp_path: Path) -> None:
    """Two rotations between looks, the middle file already gzipped: its lines still arrive, once."""
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    path = folder / "background_jobs.log"
    write_file(path, b"".join(encode({**record(i), "seq": i}) for i in range(10)))
    f = Follower(path, poll=0.5)
    time.sleep(0.2)
    os.replace(path, str(path) + ".2")
    write_file(Path(str(path) + ".1.gz"), b"".join(encode({**record(i), "seq": i}) for i in range(10, 20)))
    write_file(path, b"".join(encode({**record(i), "seq": i}) for i in range(20, 25)))
    got = seqs(f.wait_for(15))
    f.stop()
    assert got == list(range(10, 25))


def test_follow_skips_malformed_lines_and_counts_them(tmp_path: Path) -> None:
    """Garbage appended to a followed file is counted, not yielded, and does not stop the follow."""
    log = EventLog(tmp_path / "logs")
    path = tmp_path / "logs" / "background_jobs.log"
    log.emit("tick", seq=0)
    f = Follower(path, poll=0.02)
    time.sleep(0.1)
    with open(path, "ab") as out:
        out.write(b"garbage\n{\"truncated\": \n")
    log.emit("tick", seq=1)
    assert seqs(f.wait_for(1)) == [1]
    f.stop()
    assert f.stats.malformed == 2


def test_lines_written_by_eventlog_are_read_back_key_by_key(tmp_path: Path) -> None:
    """What EventLog writes (timestamp first, as the fast paths expect) reads back with every filter."""
    log = EventLog(tmp_path / "logs")
    path = tmp_path / "logs" / "background_jobs.log"
    before = time.time() - 1
    log.emit("job_started", job_id="42", target="shop.jobs:Mailer", method="send", attempt=1)
    log.emit("job_failed", job_id="42", target="shop.jobs:Mailer", method="send", attempt=1, error="boom")
    log.emit("job_started", job_id="43", target="shop.jobs:Other", method="send", attempt=1)
    filt = LogFilter(since=before, until=time.time() + 1, level="error", job_id="42", target="shop.jobs:Mailer",
                     events=("job_failed",), grep=re.compile("boom"))
    [(line, event)] = list(logread.read(path, filt))
    assert line.startswith('{"timestamp": "') and event["error"] == "boom"
    assert logread._head_time(line.encode()) == pytest.approx(time.time(), abs=5)
    assert [e["job_id"] for _, e in logread.newest(path, LogFilter(since=before), limit=5)[0]] == ["43", "42", "42"]
    assert datetime.fromisoformat(event["timestamp"]) > datetime.now(UTC) - timedelta(minutes=1)


# -- the byte pre-checks never change an answer --------------------------------------------------------
ODD_LINES = [
    {"timestamp": iso(at(0)), "level": "info", "event": "a", "msg": "caf\u00e9 ok", "i": 0},
    {"timestamp": iso(at(1)), "level": "ERROR", "event": "b", "msg": "end", "i": 1},
    {"timestamp": iso(at(2)), "level": "warn", "event": "c", "msg": "x\ty", "i": 2},
    {"timestamp": iso(at(3)), "level": "info", "event": "d", "msg": "abc", "i": 3},
    {"timestamp": iso(at(4)), "level": "critical", "event": "e", "msg": "\u00e9t\u00e9", "i": 4},
    {"timestamp": iso(at(5)), "level": "Info", "event": "f", "msg": "ABC", "i": 5},
]


@pytest.fixture
def odd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Lines as others write them: raw UTF-8, compact separators, odd level spellings; tiny blocks."""
    monkeypatch.setattr(logread, "BLOCK", 64)
    monkeypatch.setattr(logread, "BACK_BLOCK", 32)
    path = tmp_path / "odd.log"
    text = ""
    for n, rec in enumerate(ODD_LINES * 20):
        rec = {**rec, "i": n}
        text += (json.dumps(rec, ensure_ascii=n % 2 == 0, separators=(",", ":") if n % 3 else (", ", ": "))
                 + "\n")
    write_file(path, text.encode())
    return path


@pytest.mark.parametrize("pattern", [
    r"caf\w", r"\w\w\w\"", r"^\{", r"\}$", r"abc", r"(?i)abc", r"ABC", r"\s\"", r"[^a]*end", r"e.d",
    r"(?s)e.d", r"\Aok", r"\A\{", r"\}\Z", r"(?<=\")ab", r"\u00e9t", "\u00e9t\u00e9", r"x\\ty", r"\\u00e9",
    r"i\":\s*1\d\b", r"(?x) a b c ", r"$",
])
@pytest.mark.parametrize("last", [None, 5])
def test_grep_gives_what_a_search_of_each_line_gives(odd: Path, pattern: str, last: int | None) -> None:
    """--grep over blocks of bytes (with the per-line check after) equals re.search on each line's text."""
    rx = re.compile(pattern)
    lines = odd.read_text(encoding="utf-8").splitlines()
    want = [json.loads(line)["i"] for line in lines if rx.search(line)]
    assert ids(logread.read(odd, LogFilter(grep=rx), last=last)) == (want if last is None else want[-last:])


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "critical"])
def test_level_is_at_least_whatever_the_spelling(odd: Path, level: str) -> None:
    """Levels written ERROR, warn, Info by another program count as error, warning and info."""
    rank = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3, "critical": 4}
    lines = [json.loads(line) for line in odd.read_text(encoding="utf-8").splitlines()]
    want = [e["i"] for e in lines if rank[e["level"].lower()] >= rank[level]]
    assert ids(logread.read(odd, LogFilter(level=level))) == want
    assert ids(logread.newest(odd, LogFilter(level=level), limit=7)[0]) == want[::-1][:7]


def test_values_with_other_characters_match_lines_written_either_way(tmp_path: Path) -> None:
    """A target or event with an accent matches lines that escape it (\\u00e9) and lines that write it raw."""
    path = tmp_path / "accents.log"
    recs = [{"timestamp": iso(at(i)), "event": "cr\u00e9\u00e9", "target": "caf\u00e9:Job", "job_id": "1", "i": i}
            for i in range(4)]
    write_file(path, "".join(json.dumps(r, ensure_ascii=i % 2 == 0) + "\n" for i, r in enumerate(recs)).encode())
    filt = LogFilter(target="caf\u00e9:Job", events=("cr\u00e9\u00e9",), job_id="1")
    assert ids(logread.read(path, filt)) == [0, 1, 2, 3]
    assert ids(logread.read(path, filt, last=3)) == [1, 2, 3]
