"""``bgrunner logs`` as a real process: filters with known answers, usage errors, the terminal
format, and ``--follow`` while other processes write and rotate (bgrunner's own rotation,
logrotate's copytruncate and create): every line exactly once.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bgrunner import logread
from bgrunner.eventlog import EventLog
from tests.conftest import ROOT, Project, wait_until

MAIN = "background_jobs.log"
BASE = datetime(2024, 5, 1, 22, 0, tzinfo=UTC).timestamp()
LEVELS = ("debug", "info", "warning", "error")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(i: int) -> dict[str, Any]:
    """Line i of the generated log: one a minute from 22:00Z, so it crosses midnight at i = 120."""
    return {"timestamp": iso(BASE + 60 * i), "level": LEVELS[i % 4], "event": ("job_started", "email_sent")[i % 2],
            "job_id": str(i % 5 + 1), "target": ("shop:Mailer", "shop:Report")[i % 3 == 0], "method": "run",
            "attempt": 1, "pid": 4000 + i, "i": i}


@pytest.fixture
def generated(sqlite_project: Project) -> Project:
    """300 lines over .2 (gzipped), .1 and the current file, and 2 malformed lines."""
    import gzip

    folder = sqlite_project.log_dir
    folder.mkdir(mode=0o700, exist_ok=True)
    lines = [(json.dumps(record(i)) + "\n").encode() for i in range(300)]
    with gzip.open(folder / f"{MAIN}.2.gz", "wb") as g:
        g.write(b"".join(lines[:100]))
    (folder / f"{MAIN}.1").write_bytes(b"".join(lines[100:200]) + b"garbage\n")
    (folder / MAIN).write_bytes(b"".join(lines[200:250]) + b'{"cut": \n' + b"".join(lines[250:]))
    for p in folder.iterdir():
        p.chmod(0o600)
    return sqlite_project


def shown(result: subprocess.CompletedProcess[str]) -> list[int]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["i"] for line in result.stdout.splitlines()]


def upto(pred: Any) -> list[int]:
    return [i for i in range(300) if pred(record(i))]


def test_filters_alone_and_combined_give_the_known_lines(generated: Project) -> None:
    """Each flag, several together, -n, across a gzipped and a plain rotated file; malformed lines counted on stderr."""
    p = generated
    r = p.cli("logs", "--json")
    assert shown(r) == list(range(300))
    assert r.stderr == "bgrunner logs: skipped 2 malformed lines\n"
    assert shown(p.cli("logs", "--since", "2024-05-02T00:00:00Z", "--until", "2024-05-02T00:30+00:00")) == list(
        range(120, 151))
    # the same instants written with a New York offset (EDT, -04:00), across midnight UTC
    assert shown(p.cli("logs", "--since", "2024-05-01T19:30:00-04:00", "--until", "2024-05-01T20:10-04:00")) == list(
        range(90, 131))
    assert shown(p.cli("logs", "--level", "warning")) == upto(lambda r: r["level"] in ("warning", "error"))
    assert shown(p.cli("logs", "--event", "job_started", "--target", "shop:Report")) == upto(
        lambda r: r["event"] == "job_started" and r["target"] == "shop:Report")
    assert shown(p.cli("logs", "--event", "job_started", "--event", "email_sent", "-n", "3")) == [297, 298, 299]
    assert shown(p.cli("logs", "--grep", r'"pid": 41[0-4]\d,')) == list(range(100, 150))
    assert shown(p.cli("logs", "3", "--level", "error", "-n", "4", "--json")) == upto(
        lambda r: r["job_id"] == "3" and r["level"] == "error")[-4:]
    assert shown(p.cli("logs", "3", "--since", "2024-05-02T01:00Z", "--grep", "email", "--level", "info")) == upto(
        lambda r: r["job_id"] == "3" and r["i"] >= 180 and r["event"] == "email_sent" and r["level"] != "debug")
    assert shown(p.cli("logs", "--until", "2024-05-01T22:05:00Z", "-n", "2")) == [4, 5]
    assert shown(p.cli("logs", "--since", "1h")) == []  # the generated lines are in the past
    assert shown(p.cli("logs", "--errors")) == []


@pytest.mark.parametrize(("args", "message"), [
    (("--since", "yesterday"), "--since: not a time: 'yesterday'"),
    (("--until", "2024-13-01"), "--until: not a time"),
    (("--level", "loud"), "--level: unknown level 'loud'"),
    (("--grep", "(unclosed"), "--grep: invalid regular expression '(unclosed'"),
    (("-n", "-1"), "-n"),
    (("-n", "many"), "invalid int value"),
    (("--since", "1h", "--until", "2h"), "--since is after --until"),
    (("1", "--output", "--level", "error"), "--level filters log events"),
    (("--since", "\x1b]52;c;x\x07"), "--since: not a time: '\\x1b]52"),
])
def test_bad_input_is_a_one_line_usage_error(generated: Project, args: tuple[str, ...], message: str) -> None:
    """Bad --since/--until, unknown level, invalid regex, bad -n: exit 2, one line on stderr, nothing on stdout."""
    r = generated.cli("logs", *args)
    assert r.returncode == 2, r
    assert r.stdout == "" and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "\x1b" not in r.stderr


def run_on_pty(project: Project, *args: str, env: dict[str, str] | None = None) -> str:
    """The CLI with its stdout on a pseudo-terminal: everything it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bgrunner", *args], cwd=ROOT, env={**project.env, **(env or {})},
                            stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    proc.wait(timeout=30)
    return out.decode().replace("\r\n", "\n")


def test_a_terminal_gets_aligned_columns_with_level_colours_a_pipe_gets_json(generated: Project) -> None:
    """On a tty: time, level (coloured), event, job, target.method, then key=value; NO_COLOR or --json change it."""
    p = generated
    EventLog(p.log_dir).emit("job_failed", job_id="9", target="shop:Mailer", method="send", attempt=2,
                             error="bad \x1b]52;c;x\x07 thing", traceback="Traceback:\n  line\nValueError")
    text = run_on_pty(p, "logs", "-n", "3")
    first, second, third, *tb = text.splitlines()
    for line, i, colour in ((first, 298, "33"), (second, 299, "31")):
        r = record(i)
        level = r["level"].upper().ljust(8)
        assert line.startswith(f"{r['timestamp'][:23]}Z \x1b[{colour}m{level}\x1b[0m {r['event']:16} "
                               f"{r['job_id']:6} {r['target']}.run"), line
        assert line.endswith(f"attempt=1 pid={4000 + i} i={i}")
    assert " job_failed       9      shop:Mailer.send " in third
    assert 'error="bad \\x1b]52;c;x\\x07 thing"' in third and "\x07" not in text
    assert tb == ["    Traceback:", "      line", "    ValueError"]
    plain = run_on_pty(p, "logs", "-n", "3", env={"NO_COLOR": "1"})
    assert "\x1b" not in plain and "WARNING  job_started" in plain, plain
    as_json = run_on_pty(p, "logs", "-n", "1", "--json")
    assert json.loads(as_json)["event"] == "job_failed"
    piped = p.cli("logs", "-n", "2")
    assert [json.loads(line)["event"] for line in piped.stdout.splitlines()] == ["email_sent", "job_failed"]
    assert piped.stdout.splitlines()[0] == json.dumps(record(299))  # the line as written


def test_output_takes_n_and_grep(sqlite_project: Project) -> None:
    """logs ID --output -n 2 is the last two lines of the job's output; --grep keeps the lines it finds."""
    out = sqlite_project.log_dir / "output"
    out.mkdir(parents=True, mode=0o700)
    (out / "7.out").write_text("one\ntwo apples\nthree\nfour apples\nfive")
    (out / "7.out").chmod(0o600)
    assert sqlite_project.cli("logs", "7", "--output", "-n", "2").stdout == "four apples\nfive"
    assert sqlite_project.cli("logs", "7", "--output", "--grep", "apple").stdout == "two apples\nfour apples\n"
    assert sqlite_project.cli("logs", "7", "--output").stdout == "one\ntwo apples\nthree\nfour apples\nfive"


# -- following, with real writer processes -----------------------------------------------------------
class Follow:
    """``bgrunner logs --follow --json [args]`` running, its stdout collected line by line."""

    def __init__(self, project: Project, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bgrunner", "logs", "--follow", "--json", *args],
                                     cwd=ROOT, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, n: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.lines) >= n, timeout=timeout)
        time.sleep(1.0)  # a doubled line would have arrived by now

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        self.reader.join(10)
        assert self.proc.returncode == 130, err
        return err


WRITERS = 40
LINES = 60
WRITER = """
import os, sys, time
from bgrunner.eventlog import EventLog
log_dir, go, writer, lines, compress = sys.argv[1:]
log = EventLog(log_dir, max_bytes=150_000, backups=500, compress=compress == "1").bind(
    job_id=str(int(writer) + 1), target="t:W", method="w")
while not os.path.exists(go):
    time.sleep(0.005)
for seq in range(int(lines)):
    log.emit("tick", writer=int(writer), seq=seq, pad="x" * 900)
    if seq % 10 == 0:
        time.sleep(0.01)
"""


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
def test_forty_writers_rotating_under_a_follower_every_line_once(sqlite_project: Project, tmp_path: Path,
                                                                 compress: bool) -> None:
    """40 processes write through EventLog (rotating many times, gzipping rotated files or not) while
    logs --follow runs: each line once."""
    p = sqlite_project
    follower = Follow(p)
    time.sleep(1.0)  # the follower is waiting for the file to appear
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(p.log_dir), str(go), str(n), str(LINES), "1" if compress else "0"],
                                cwd=ROOT, env=p.env, stderr=subprocess.PIPE) for n in range(WRITERS)]
    time.sleep(0.5)
    go.touch()
    for w in writers:
        _, problem = w.communicate(timeout=120)
        assert w.returncode == 0, problem
    follower.wait_for(WRITERS * LINES)
    err = follower.stop()
    files = logread.log_paths(p.log_dir / MAIN)
    assert len(files) >= 3, "the log should have rotated at least twice"
    assert all(f.endswith(".gz") for f in files[:-1]) == compress
    seen = Counter((e["writer"], e["seq"]) for e in follower.lines)
    assert set(seen) == {(w, s) for w in range(WRITERS) for s in range(LINES)}, "lines are missing"
    assert max(seen.values()) == 1, "lines are doubled"
    assert len(follower.lines) == WRITERS * LINES and "malformed" not in err


def test_follow_with_a_filter_and_last_n(sqlite_project: Project) -> None:
    """--follow -n 2 ID: the job's last two lines already there, then its new ones only."""
    p = sqlite_project
    log = EventLog(p.log_dir)
    for n in range(10):
        log.emit("tick", job_id=str(n % 2 + 1), seq=n)
    follower = Follow(p, "2", "-n", "2")
    follower.wait_for(2, timeout=30)
    for n in range(10, 16):
        log.emit("tick", job_id=str(n % 2 + 1), seq=n)
    follower.wait_for(5, timeout=30)
    follower.stop()
    assert [e["seq"] for e in follower.lines] == [7, 9, 11, 13, 15]


def copytruncate(path: Path) -> None:
    shutil.copyfile(path, str(path) + ".1")
    os.chmod(str(path) + ".1", 0o600)
    os.truncate(path, 0)


WRITE_SOME = """
import sys
from bgrunner.eventlog import EventLog
log = EventLog(sys.argv[1], max_bytes=0)
for seq in range(int(sys.argv[2]), int(sys.argv[3])):
    log.emit("tick", seq=seq)
"""


def write_some(p: Project, lo: int, hi: int) -> None:
    subprocess.run([sys.executable, "-c", WRITE_SOME, str(p.log_dir), str(lo), str(hi)], cwd=ROOT, env=p.env,
                   check=True, timeout=60)


@pytest.mark.parametrize("rotation", ["copytruncate", "create"])
def test_follow_survives_logrotate(sqlite_project: Project, rotation: str) -> None:
    """logrotate under a follower (copytruncate: copy then truncate in place; create: rename, new empty file):
    lines written before and after it all arrive, none twice."""
    p = sqlite_project
    write_some(p, 0, 20)
    follower = Follow(p)
    follower.wait_for(20, timeout=30)
    log = EventLog(p.log_dir, max_bytes=0)  # a writer that stays open across the rotation
    log.emit("tick", seq=20)
    path = p.log_dir / MAIN
    if rotation == "copytruncate":
        copytruncate(path)
    else:
        os.replace(path, str(path) + ".1")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    log.emit("tick", seq=21)  # the open writer: into the truncated file, or finds the new one
    write_some(p, 22, 30)
    follower.wait_for(30, timeout=30)
    follower.stop()
    assert [e["seq"] for e in follower.lines] == list(range(30))
    if rotation == "copytruncate":  # again, the file refilled past where the follower was before it looks
        follower = Follow(p, "-n", "0")
        time.sleep(1.0)
        copytruncate(path)
        for seq in range(30, 60):
            log.emit("tick", seq=seq, pad="y" * 200)
        follower.wait_for(30, timeout=30)
        follower.stop()
        assert [e["seq"] for e in follower.lines] == list(range(30, 60))
