"""The JSON event log under many real writer processes: no torn, lost or doubled line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections import Counter

from bgrunner.eventlog import ERROR_LOG, MAIN_LOG, log_files

REPO = pathlib.Path(__file__).resolve().parents[2]
WRITERS = 40
LINES = 50
PAYLOAD_BYTES = 3000
ERROR_EVERY = 10  # every 10th line is a job_failed, so the errors file is contended too

# Each writer says it is ready, waits for the "go" file, then writes as fast as it can.
# The payload is derived from (writer, seq), so a line mixed with another can't pass.
WRITER = """
import os, sys, time
from bgrunner.eventlog import EventLog
log_dir, ready, go, writer, lines, size, max_bytes, backups = sys.argv[1:]
writer, lines, size = int(writer), int(lines), int(size)
log = EventLog(log_dir, max_bytes=int(max_bytes), backups=int(backups))
job = log.bind(job_id=f"w{writer}", target="tests:Writer", method="write", attempt=1)
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
for seq in range(lines):
    pad = (f"{writer}:{seq}|" * size)[:size]
    event = "job_failed" if seq % {every} == 0 else "job_progress"
    job.emit(event, writer=writer, seq=seq, pad=pad)
""".replace("{every}", str(ERROR_EVERY))


def expected_pad(writer: int, seq: int) -> str:
    return (f"{writer}:{seq}|" * PAYLOAD_BYTES)[:PAYLOAD_BYTES]


def run_writers(tmp_path: pathlib.Path, max_bytes: int, backups: int) -> pathlib.Path:
    """Start WRITERS processes, release them together, wait for all; return the log folder."""
    log_dir, sync = tmp_path / "logs", tmp_path / "sync"
    sync.mkdir()
    go = sync / "go"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log_dir), str(sync / f"ready-{n}"), str(go),
             str(n), str(LINES), str(PAYLOAD_BYTES), str(max_bytes), str(backups)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for n in range(WRITERS)
    ]
    try:
        deadline = time.monotonic() + 60
        while sum(1 for p in sync.iterdir() if p.name.startswith("ready-")) < WRITERS:
            assert time.monotonic() < deadline, "writers did not start"
            assert all(p.poll() is None for p in procs), "a writer died before the start"
            time.sleep(0.01)
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            assert err == b"", err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return log_dir


def parse_all(paths: list[str]) -> list[dict]:
    """Every line of these files as JSON; any torn or mixed line fails the test."""
    events = []
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                assert raw.endswith(b"\n"), f"{path}:{number} has no newline"
                event = json.loads(raw)
                assert event["pad"] == expected_pad(event["writer"], event["seq"]), (
                    f"{path}:{number} carries another line's bytes"
                )
                assert event["job_id"] == f"w{event['writer']}"
                events.append(event)
    return events


def assert_exactly_once(events: list[dict], lines_per_writer: int, step: int = 1) -> None:
    seen = Counter((e["writer"], e["seq"]) for e in events)
    expected = {(w, s) for w in range(WRITERS) for s in range(0, LINES, step)}
    assert len(events) == WRITERS * lines_per_writer
    assert set(seen) == expected, "lines are missing"
    assert max(seen.values()) == 1, "lines are doubled"


def test_forty_processes_write_whole_lines_without_loss(tmp_path: pathlib.Path) -> None:
    """40 processes appending 50 lines of ~3 KB at once: every line whole, once, in both files."""
    log_dir = run_writers(tmp_path, max_bytes=0, backups=0)
    assert_exactly_once(parse_all([str(log_dir / MAIN_LOG)]), LINES)
    errors = parse_all([str(log_dir / ERROR_LOG)])
    assert {e["event"] for e in errors} == {"job_failed"}
    assert_exactly_once(errors, LINES // ERROR_EVERY, step=ERROR_EVERY)


def test_forty_processes_with_rotation_lose_no_line(tmp_path: pathlib.Path) -> None:
    """Same load with a 200 KB limit: the file rotates many times and no line is lost."""
    log_dir = run_writers(tmp_path, max_bytes=200_000, backups=200)
    main = log_files(log_dir / MAIN_LOG)
    assert len(main) > 20, "the load should have rotated the file many times"
    # Overshoot is bounded: at most one line per writer raced past the size check,
    # and at most one per writer landed late in a file just rotated away.
    slack = 2 * WRITERS * (PAYLOAD_BYTES + 400)
    assert max(os.path.getsize(p) for p in main) <= 200_000 + slack, "a writer kept a stale file"
    assert_exactly_once(parse_all(main), LINES)
    errors = parse_all(log_files(log_dir / ERROR_LOG))
    assert_exactly_once(errors, LINES // ERROR_EVERY, step=ERROR_EVERY)
    lock = log_dir / (MAIN_LOG + ".lock")
    assert lock.stat().st_mode & 0o077 == 0, "the rotation lock file is private too"
