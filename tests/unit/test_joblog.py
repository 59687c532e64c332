"""Job code's lines (bgrunner.get_logger, capture_logging) and the one sink they share with EventLog.

Both front doors, key by key; outside a job; the errors file; redaction; the job
keys across attempts and forks; stdlib capture; structlog imported on first use
only; rotation with retention and gzip, many writers included.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from bgrunner import eventlog, joblog
from bgrunner.eventlog import ERROR_LOG, MAIN_LOG, EventLog, format_exception

REPO = pathlib.Path(__file__).resolve().parents[2]
KEY_ORDER = ["timestamp", "level", "event", "job_id", "target", "method", "attempt", "pid"]
STAMP = re.compile(r'"timestamp": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"')
JOB = {"job_id": "7", "target": "examples.jobs:Report", "method": "build"}


def raw_lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def lines_of(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw_lines(path)]


@pytest.fixture(autouse=True)
def outside_a_job() -> Iterator[None]:
    """Each test starts outside a job, with no log opened from the environment yet."""
    joblog.leave_job()
    joblog._outside = None
    yield
    joblog.leave_job()
    joblog._outside = None


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (capture_logging adds a handler and may lower its level)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def in_job(log: EventLog, attempt: int = 2) -> None:
    joblog.enter_job(log, attempt=attempt, **JOB)


def raised() -> ValueError:
    try:
        raise ValueError("no such report: password=hunter2")
    except ValueError as exc:
        return exc


# -- two doors, one line ---------------------------------------------------------------
CASES = {
    "info with fields": (lambda lg: lg.info("email_sent", to="a@b.c", n=3),
                         lambda el: el.emit("email_sent", to="a@b.c", n=3)),
    "warning": (lambda lg: lg.warning("slow", seconds=1.5),
                lambda el: el.emit("slow", level="warning", seconds=1.5)),
    "debug, odd values": (lambda lg: lg.debug("odd", value={1, 2}, text="é\n"),
                          lambda el: el.emit("odd", level="debug", value={1, 2}, text="é\n")),
    "error with a traceback": (
        lambda lg: lg.error("report_failed", exc_info=EXC, report=1),
        lambda el: el.emit("report_failed", level="error", report=1, traceback=format_exception(EXC))),
    "critical": (lambda lg: lg.critical("disk_gone"),
                 lambda el: el.emit("disk_gone", level="critical")),
}
EXC = raised()


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_event_through_both_doors_is_the_same_line(tmp_path: pathlib.Path, case: str) -> None:
    """get_logger() in a job and EventLog.emit with the job's keys write byte-identical lines
    (timestamps aside, each in EventLog's format), to the same files, keys in the same order."""
    via_structlog, via_emit = CASES[case]
    log = EventLog(tmp_path)
    in_job(log)
    via_structlog(joblog.get_logger())
    via_emit(log.bind(**JOB, attempt=2))
    for name in (MAIN_LOG, ERROR_LOG):
        lines = raw_lines(tmp_path / name)
        if name == ERROR_LOG and case not in ("error with a traceback", "critical"):
            assert lines == []
            continue
        first, second = lines
        assert STAMP.search(first) and STAMP.search(second)
        assert STAMP.sub("", first) == STAMP.sub("", second)
        a, b = json.loads(first), json.loads(second)
        assert list(a) == list(b) and list(a)[:8] == KEY_ORDER
        for key in a:
            if key != "timestamp":
                assert a[key] == b[key], key
        assert [a[k] for k in KEY_ORDER[3:]] == ["7", JOB["target"], "build", 2, os.getpid()]


def test_log_exception_writes_the_traceback_as_job_failed_does(tmp_path: pathlib.Path) -> None:
    """log.exception() inside except: level error, the traceback text format_exception gives."""
    in_job(EventLog(tmp_path))
    try:
        raise KeyError("k")
    except KeyError as exc:
        joblog.get_logger().exception("lookup_failed")
        expected = format_exception(exc)
    (line,) = lines_of(tmp_path / ERROR_LOG)
    assert line["level"] == "error" and line["traceback"] == expected
    assert "exc_info" not in line


def test_outside_a_job_lines_have_null_job_keys(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a job the logger writes to BGRUNNER_LOG_DIR; job_id, target, method, attempt are null,
    as on any EventLog line not about a job; pid is the writer's."""
    monkeypatch.setenv("BGRUNNER_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("BGRUNNER_CONFIG", str(tmp_path / "missing.toml"))
    joblog.get_logger("app").info("started", port=8000)
    EventLog(tmp_path / "logs").emit("started", logger="app", port=8000)
    first, second = raw_lines(tmp_path / "logs" / MAIN_LOG)
    assert STAMP.sub("", first) == STAMP.sub("", second)
    line = json.loads(first)
    assert [line[k] for k in KEY_ORDER[3:7]] == [None] * 4
    assert line["pid"] == os.getpid() and line["logger"] == "app"


def test_error_and_above_reach_the_errors_file(tmp_path: pathlib.Path) -> None:
    """debug, info, warning: main file only; error, exception, critical: both."""
    in_job(EventLog(tmp_path))
    log = joblog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise ZeroDivisionError("x")
    except ZeroDivisionError:
        log.exception("x")
    log.critical("c")
    assert [e["event"] for e in lines_of(tmp_path / MAIN_LOG)] == ["d", "i", "w", "e", "x", "c"]
    assert [(e["event"], e["level"]) for e in lines_of(tmp_path / ERROR_LOG)] == [
        ("e", "error"), ("x", "error"), ("c", "critical")]


def test_passwords_are_masked_on_the_structlog_door_too(tmp_path: pathlib.Path,
                                                        root_logger: logging.Logger) -> None:
    """A store URL's password and password=... are masked in fields, events, tracebacks, stdlib records."""
    in_job(EventLog(tmp_path))
    log = joblog.get_logger()
    log.info("connect to postgresql://app:s3cret@db/jobs", url="postgresql://app:s3cret@db/jobs")
    log.error("failed", exc_info=raised())
    joblog.capture_logging()
    logging.getLogger("lib").warning("dsn %s", "postgresql://app:s3cret@db/jobs")
    text = (tmp_path / MAIN_LOG).read_text() + (tmp_path / ERROR_LOG).read_text()
    assert "s3cret" not in text and "hunter2" not in text
    assert text.count("postgresql://app:***@db/jobs") == 3 and "password=***" in text


def test_a_masked_password_before_a_quote_leaves_valid_json(tmp_path: pathlib.Path) -> None:
    """password=... right before an escaped quote (a traceback quoting source) is masked and the
    line still parses: the mask never eats the backslash of a JSON escape."""
    log = EventLog(tmp_path)
    log.emit("job_failed", traceback='raise ValueError("password=hunter2")', note='password=a\\b"c')
    (line,) = lines_of(tmp_path / ERROR_LOG)
    assert line["traceback"] == 'raise ValueError("password=***")'
    assert line["note"] == 'password=***"c'


def test_attempt_is_the_current_one_and_pid_the_writer(tmp_path: pathlib.Path) -> None:
    """set_attempt (a retry in the same process) changes the attempt of a logger made earlier;
    a forked process (an attempt process) writes its own pid with the job's keys."""
    log = EventLog(tmp_path)
    in_job(log, attempt=1)
    logger = joblog.get_logger()
    logger.info("first")
    joblog.set_attempt(2)
    logger.info("second")
    pid = os.fork()
    if pid == 0:
        try:
            logger.info("in_fork")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    lines = lines_of(tmp_path / MAIN_LOG)
    assert [(e["event"], e["attempt"], e["pid"]) for e in lines] == [
        ("first", 1, os.getpid()), ("second", 2, os.getpid()), ("in_fork", 2, pid)]
    assert all(e["job_id"] == "7" for e in lines)


def test_job_keys_win_over_fields_of_the_same_name(tmp_path: pathlib.Path) -> None:
    """A field named job_id or attempt cannot misfile a job's line; other bound fields stay."""
    in_job(EventLog(tmp_path), attempt=3)
    joblog.get_logger(user="u1").bind(order=9).info("x", job_id="999", attempt=0, pid=1)
    (line,) = lines_of(tmp_path / MAIN_LOG)
    assert (line["job_id"], line["attempt"], line["pid"]) == ("7", 3, os.getpid())
    assert list(line)[8:] == ["user", "order"]


def test_contextvars_are_merged(tmp_path: pathlib.Path) -> None:
    """structlog.contextvars.bind_contextvars adds to every line (first processor)."""
    import structlog

    in_job(EventLog(tmp_path))
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        joblog.get_logger().info("x", n=1)
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines_of(tmp_path / MAIN_LOG)
    assert line["request_id"] == "r-1" and line["n"] == 1


def test_positional_args_are_interpolated(tmp_path: pathlib.Path) -> None:
    in_job(EventLog(tmp_path))
    joblog.get_logger().info("sent %d mails", 3)
    assert lines_of(tmp_path / MAIN_LOG)[0]["event"] == "sent 3 mails"


def test_a_broken_log_folder_never_raises_into_the_job(tmp_path: pathlib.Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The folder is a file: one warning (EventLog's), no exception from the logger."""
    (tmp_path / "file").write_text("")
    in_job(EventLog(tmp_path / "file"))
    log = joblog.get_logger()
    log.info("a")
    log.error("b")
    assert capsys.readouterr().err.count("warning") == 1


def test_write_event_lays_out_a_bare_dict(tmp_path: pathlib.Path) -> None:
    """The structlog door alone: missing level is info, a missing timestamp is made, bound fields apply."""
    log = EventLog(tmp_path).bind(job_id="5")
    log.write_event({"event": "x", "a": 1, "timestamp": 12})
    (line,) = lines_of(tmp_path / MAIN_LOG)
    assert list(line) == KEY_ORDER + ["a"]
    assert line["level"] == "info" and line["job_id"] == "5" and STAMP.search(raw_lines(tmp_path / MAIN_LOG)[0])


# -- stdlib logging ---------------------------------------------------------------------
def test_capture_logging_routes_stdlib_records_with_the_job_keys(tmp_path: pathlib.Path,
                                                                 root_logger: logging.Logger) -> None:
    """A library's logger: the line has the job keys, the logger's name, the level, the message
    with its args; exc_info as a traceback; below the level nothing; one handler however often called."""
    in_job(EventLog(tmp_path))
    handler = joblog.capture_logging()
    assert joblog.capture_logging() is handler and root_logger.handlers.count(handler) == 1
    lib = logging.getLogger("smtplib.fake")
    lib.debug("not captured")
    lib.info("connected to %s", "mail.example")
    try:
        raise OSError("refused")
    except OSError as exc:
        lib.error("send failed", exc_info=True)
        expected = format_exception(exc)
    main = lines_of(tmp_path / MAIN_LOG)
    assert [(e["event"], e["level"], e["logger"]) for e in main] == [
        ("connected to mail.example", "info", "smtplib.fake"), ("send failed", "error", "smtplib.fake")]
    assert all([e[k] for k in KEY_ORDER[3:]] == ["7", JOB["target"], "build", 2, os.getpid()] for e in main)
    assert list(main[0]) == KEY_ORDER + ["logger"]
    (error,) = lines_of(tmp_path / ERROR_LOG)
    assert error["traceback"] == expected


def test_capture_logging_level(tmp_path: pathlib.Path, root_logger: logging.Logger) -> None:
    """capture_logging("debug") takes debug records too (the root level is lowered to it)."""
    root_logger.setLevel(logging.WARNING)
    in_job(EventLog(tmp_path))
    joblog.capture_logging("debug")
    logging.getLogger("x").debug("fine")
    assert root_logger.level == logging.DEBUG
    assert [e["event"] for e in lines_of(tmp_path / MAIN_LOG)] == ["fine"]


def test_stdlib_and_structlog_lines_match(tmp_path: pathlib.Path, root_logger: logging.Logger) -> None:
    """The same event by both routes of the pipeline: the same line but for the timestamp."""
    in_job(EventLog(tmp_path))
    joblog.capture_logging()
    logging.getLogger("lib").warning("careful")
    joblog.get_logger("lib").warning("careful")
    first, second = raw_lines(tmp_path / MAIN_LOG)
    assert STAMP.sub("", first) == STAMP.sub("", second)


# -- cost --------------------------------------------------------------------------------
def test_structlog_is_imported_on_first_use_only() -> None:
    """import bgrunner, the job modules and joblog import neither structlog nor logging
    (python -X importtime); bgrunner.get_logger() then imports structlog."""
    code = textwrap.dedent("""
        import sys
        import bgrunner, bgrunner.joblog, bgrunner.job.main, bgrunner.job.supervisor, bgrunner.job.forked
        bgrunner.get_logger  # the name alone
        print(sorted(m for m in ("structlog", "logging") if m in sys.modules))
        bgrunner.get_logger()
        print("structlog" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "True"]
    before_first_use = r.stderr.split("| bgrunner.job.forked")[0]
    assert "structlog" not in before_first_use and " logging" not in before_first_use


# -- rotation: retention and gzip --------------------------------------------------------
def rotated(tmp_path: pathlib.Path, name: str = MAIN_LOG) -> list[str]:
    return sorted((p.name for p in tmp_path.iterdir() if p.name.startswith(name + ".")
                   and not p.name.endswith(".lock")), key=lambda n: (len(n), n))


def all_lines(tmp_path: pathlib.Path, name: str = MAIN_LOG) -> list[dict[str, Any]]:
    """Every line of the file and its rotated files (plain or gzipped), oldest first."""
    def number(n: str) -> int:
        return int(n[len(name) + 1:].split(".")[0])

    out: list[dict[str, Any]] = []
    for n in sorted(rotated(tmp_path, name), key=number, reverse=True):
        data = (tmp_path / n).read_bytes()
        text = gzip.decompress(data).decode() if n.endswith(".gz") else data.decode()
        out += [json.loads(line) for line in text.splitlines()]
    return out + lines_of(tmp_path / name)


def test_compress_gzips_each_rotated_file_and_keeps_backups(tmp_path: pathlib.Path) -> None:
    """log_compress: .1.gz, .2.gz, .3.gz (backups=3), no plain or .tmp left, every recent line kept
    in order, each file a whole gzip stream of whole lines."""
    log = EventLog(tmp_path, max_bytes=1000, backups=3, compress=True)
    for seq in range(100):
        log.emit("tick", seq=seq, pad="x" * 50)
        log.emit("tock", level="error", seq=seq)
    assert rotated(tmp_path) == [f"{MAIN_LOG}.{n}.gz" for n in (1, 2, 3)]
    assert rotated(tmp_path, ERROR_LOG) == [f"{ERROR_LOG}.{n}.gz" for n in (1, 2, 3)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for name, event in ((MAIN_LOG, "tick"), (ERROR_LOG, "tock")):
        seqs = [e["seq"] for e in all_lines(tmp_path, name) if e["event"] == event]
        assert seqs == list(range(seqs[0], 100)) and seqs[0] > 0
    assert len(gzip.decompress((tmp_path / f"{MAIN_LOG}.1.gz").read_bytes())) <= 1000
    assert oct((tmp_path / f"{MAIN_LOG}.1.gz").stat().st_mode & 0o777) == "0o600"


def test_retention_removes_files_beyond_backups(tmp_path: pathlib.Path) -> None:
    """Rotated files numbered past log_backups (left by a larger setting), plain or gzipped, and a
    stale .tmp, are removed at the next rotation; without compress nothing is gzipped."""
    for n in range(1, 9):
        (tmp_path / f"{MAIN_LOG}.{n}").write_text("")
    (tmp_path / f"{MAIN_LOG}.9.gz").write_bytes(gzip.compress(b""))
    (tmp_path / f"{MAIN_LOG}.1.gz.tmp").write_text("")
    log = EventLog(tmp_path, max_bytes=300, backups=3)
    while not (tmp_path / MAIN_LOG).exists() or len(lines_of(tmp_path / MAIN_LOG)) < 1 or \
            len(rotated(tmp_path)) > 3:
        log.emit("fill", pad="z" * 100)
    assert rotated(tmp_path) == [f"{MAIN_LOG}.{n}" for n in (1, 2, 3)]


def test_turning_compress_on_gzips_older_plain_files_too(tmp_path: pathlib.Path) -> None:
    """A plain .1 from before compress was on is gzipped once it has moved to .2."""
    (tmp_path / f"{MAIN_LOG}.1").write_text(json.dumps({"event": "old"}) + "\n")
    (tmp_path / MAIN_LOG).write_text("")
    log = EventLog(tmp_path, max_bytes=500, backups=5, compress=True)
    while not rotated(tmp_path) or rotated(tmp_path)[0] != f"{MAIN_LOG}.1.gz":
        log.emit("fill", pad="z" * 100)
    assert rotated(tmp_path) == [f"{MAIN_LOG}.1.gz", f"{MAIN_LOG}.2.gz"]
    assert all_lines(tmp_path)[0] == {"event": "old"}


def test_a_writer_mid_line_delays_the_gzip_and_loses_nothing(tmp_path: pathlib.Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer holding its shared lock on the file being rotated (it checked the path, it has
    yet to write): the rotator leaves .1 plain rather than gzip a file that may still grow; the
    writer's line lands there; at the next rotation it is gzipped with that line."""
    import fcntl

    monkeypatch.setattr(eventlog, "GZIP_LOCK_TIMEOUT", 0.05)
    rotator = EventLog(tmp_path, max_bytes=600, backups=5, compress=True)
    rotator.emit("first")
    held = os.open(tmp_path / MAIN_LOG, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(held, fcntl.LOCK_SH)  # as _write_if_current holds it between its check and write
    while not rotated(tmp_path):
        rotator.emit("fill", pad="z" * 100)
    assert rotated(tmp_path) == [f"{MAIN_LOG}.1"]
    os.write(held, (json.dumps({"event": "late"}) + "\n").encode())
    os.close(held)
    while f"{MAIN_LOG}.2.gz" not in rotated(tmp_path):
        rotator.emit("fill", pad="z" * 100)
    assert rotated(tmp_path) == [f"{MAIN_LOG}.1.gz", f"{MAIN_LOG}.2.gz"]
    events = [e["event"] for e in all_lines(tmp_path)]
    assert events[0] == "first" and "late" in events


def test_a_stale_writer_reopens_rather_than_write_to_a_gzipped_file(tmp_path: pathlib.Path) -> None:
    """Another writer opened the file before it was rotated and gzipped: its next line goes to the
    new file, none is lost."""
    other = EventLog(tmp_path, max_bytes=500, backups=5, compress=True)
    other.emit("before")
    rotator = EventLog(tmp_path, max_bytes=500, backups=5, compress=True)
    while not rotated(tmp_path):
        rotator.emit("fill", pad="z" * 100)
    other.emit("after")
    assert lines_of(tmp_path / MAIN_LOG)[-1]["event"] == "after"
    assert [e["event"] for e in all_lines(tmp_path)].count("before") == 1


WRITER = """
import sys
from bgrunner.eventlog import EventLog
log = EventLog(sys.argv[1], max_bytes=20_000, backups=1000, compress=True)
for seq in range(int(sys.argv[3])):
    log.emit("line", writer=sys.argv[2], seq=seq, pad="p" * 40)
"""


def test_many_writers_with_compress_lose_and_double_nothing(tmp_path: pathlib.Path) -> None:
    """6 processes, 800 lines each, rotating and gzipping every ~150 lines: every line exactly once."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), "800"], env=env)
             for w in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    seen = [(e["writer"], e["seq"]) for e in all_lines(tmp_path)]
    assert len(seen) == len(set(seen)) == 6 * 800
    assert len(rotated(tmp_path)) > 10 and all(n.endswith(".gz") for n in rotated(tmp_path))
    for w in range(6):  # each writer's own lines stay in its order
        mine = [s for wr, s in seen if wr == str(w)]
        assert mine == sorted(mine)
