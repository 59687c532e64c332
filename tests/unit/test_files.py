"""Private files and folders (safefiles), secrets kept from children, masked URLs, escaped terminal text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgrunner.cli.display import format_event, terminal_text
from bgrunner.context import Context, scrub_environ
from bgrunner.eventlog import EventLog, read_events, redact_text
from bgrunner.output import open_output, read_output
from bgrunner.safefiles import UnsafePathError, check_folder, open_private, run_folder

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of another user")
APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def test_open_private_creates_0600_and_refuses_links_fifos_and_folders(tmp_path: Path) -> None:
    """A new file is 0600 and close-on-exec; a symlink, a FIFO or a folder is refused in one line."""
    fd = open_private(str(tmp_path / "new"), APPEND)
    try:
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
        assert not os.get_inheritable(fd) and os.get_blocking(fd)
    finally:
        os.close(fd)
    (tmp_path / "link").symlink_to(tmp_path / "new")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name, flags, why in (("link", APPEND, "symbolic link"), ("fifo", APPEND, "not a regular file"),
                             ("fifo", os.O_RDONLY, "not a regular file"),
                             ("link", os.O_RDONLY, "symbolic link")):
        with pytest.raises(UnsafePathError, match=why) as info:
            open_private(str(tmp_path / name), flags)
        assert "\n" not in str(info.value)
    with pytest.raises(OSError):
        open_private(str(tmp_path / "dir"), APPEND)


@needs_root
def test_open_private_refuses_another_users_file(tmp_path: Path) -> None:
    """A regular file planted by another user is neither written nor read."""
    planted = tmp_path / "5.out"
    planted.write_text("theirs")
    os.chown(planted, 65534, 65534)
    for flags in (APPEND, os.O_RDONLY):
        with pytest.raises(UnsafePathError, match="owned by uid 65534"):
            open_private(str(planted), flags)


def test_check_folder_makes_an_open_folder_of_ours_private(tmp_path: Path) -> None:
    """0777 becomes 0700 with a note; 0755 is left alone; a missing folder is created 0700."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    note = check_folder(str(open_dir), "log folder")
    assert note is not None and "0777 -> 0700" in note
    assert open_dir.stat().st_mode & 0o777 == 0o700
    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)
    assert check_folder(str(readable), "log folder") is None
    assert readable.stat().st_mode & 0o777 == 0o755
    assert check_folder(str(tmp_path / "a" / "b"), "log folder") is None
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


@needs_root
def test_check_folder_refuses_an_open_folder_of_another_user(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chmod(theirs, 0o777)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafePathError, match="writable by others"):
        check_folder(str(theirs), "output folder")


def test_run_folder_is_refused_unless_ours_and_closed(tmp_path: Path) -> None:
    """The run folder is created 0700; one open to others, or a symlink, is refused and never fixed."""
    assert run_folder(str(tmp_path / "run")) == str(tmp_path / "run")
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    os.chmod(tmp_path / "run", 0o750)
    with pytest.raises(UnsafePathError, match="open to other users"):
        run_folder(str(tmp_path / "run"))
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="not a folder"):
        run_folder(str(tmp_path / "linked"))


def test_output_is_opened_private_and_read_without_following_links(tmp_path: Path) -> None:
    """open_output appends to a 0600 file; read_output shows it, but shows nothing through a symlink."""
    out = tmp_path / "logs" / "output"
    fd = open_output(str(out), 7)
    os.write(fd, b"hello\n")
    os.close(fd)
    assert read_output(str(out), 7) == ("hello\n", 6, False)
    (tmp_path / "secret").write_text("root:x:0:0\n")
    (out / "8.out").symlink_to(tmp_path / "secret")
    assert read_output(str(out), 8) == ("", 0, False)
    with pytest.raises(UnsafePathError):
        open_output(str(out), 8)
    assert (tmp_path / "secret").read_text() == "root:x:0:0\n"


def test_event_log_refuses_a_linked_file_and_reader_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A symlinked errors log: the main log still gets the line, the target nothing, one warning."""
    victim = tmp_path / "victim"
    victim.write_text("")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / "background_jobs_errors.log").symlink_to(victim)
    log = EventLog(logs)
    log.emit("job_failed", job_id="1")
    log.emit("job_failed", job_id="2")
    log.close()
    assert victim.read_text() == ""
    assert capsys.readouterr().err.count("symbolic link") == 1
    with pytest.raises(UnsafePathError):
        list(read_events(logs / "background_jobs_errors.log"))


def test_passwords_in_urls_are_masked_in_log_lines_and_context_repr(tmp_path: Path) -> None:
    """A store URL's password never reaches a log line, the CLI's text or a Context's repr."""
    url = "postgresql://app:s3cr%40t@db.example:5432/jobs"
    assert redact_text(f"no job 5 in {url}") == "no job 5 in postgresql://app:***@db.example:5432/jobs"
    assert redact_text("host=h password=hunter2 dbname=x") == "host=h password=*** dbname=x"
    assert redact_text("mail a@b.c, see http://example.com/x@y") == "mail a@b.c, see http://example.com/x@y"
    log = EventLog(tmp_path)
    log.emit("job_failed", job_id="1", error=f"cannot reach {url}", traceback=f"... {url} ...")
    log.close()
    text = (tmp_path / "background_jobs.log").read_text()
    assert "s3cr" not in text and "app:***@db.example" in text
    assert "s3cr" not in format_event({"event": "x", "error": url})
    ctx = Context(str(tmp_path / "c.toml"), str(tmp_path), url)
    assert "s3cr" not in repr(ctx) and "app:***@" in repr(ctx)


def test_child_env_and_scrub_drop_every_dashboard_variable(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """child_env keeps the store URL whole but no BGRUNNER_DASHBOARD_* variable; scrub_environ empties them."""
    monkeypatch.setenv("BGRUNNER_DASHBOARD_TOKEN", "t")
    monkeypatch.setenv("BGRUNNER_DASHBOARD_READONLY_TOKEN", "r")
    monkeypatch.setenv("BGRUNNER_DASHBOARD_PASSWORD", "p")
    url = "postgresql://app:pw@h/db"
    env = Context(str(tmp_path / "c.toml"), str(tmp_path), url).child_env()
    assert env["BGRUNNER_DATABASE_URL"] == url
    assert not [k for k in env if k.startswith("BGRUNNER_DASHBOARD_")]
    scrub_environ()
    assert not [k for k in os.environ if k.startswith("BGRUNNER_DASHBOARD_")]


def test_terminal_text_escapes_every_control_but_newline_and_tab() -> None:
    """C0 (ESC, BEL, CR included), DEL and C1 are shown as escapes; newline, tab and text pass."""
    raw = "a\x1b]52;c;aGk=\x07b\tc\nd\x9b31m\x7f\re\x00é→"
    shown = terminal_text(raw)
    assert shown == "a\\x1b]52;c;aGk=\\x07b\tc\nd\\x9b31m\\x7f\\re\\x00é→"
    assert not any(ord(ch) < 0x20 and ch not in "\n\t" or 0x7f <= ord(ch) < 0xa0 for ch in shown)


def test_event_log_import_stays_cheap() -> None:
    """Past ``import bgrunner`` (which every job process pays), the log adds no filelock, traceback
    or threading, even with its safefiles dependency, when it writes a line."""
    code = (
        "import sys, tempfile, bgrunner\n"
        "import bgrunner.eventlog as mod\n"
        "mod.EventLog(tempfile.mkdtemp()).emit('job_failed', job_id='x')\n"
        "print(sorted(m for m in ('filelock', 'traceback', 'threading') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"
