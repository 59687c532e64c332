"""Other local users and hostile files: secrets, symbolic links, the run folder, the terminal.

Real processes and real files: jobs launched directly, by an auto-started worker and
by a fork-mode worker; links, sockets and locks planted where another user could.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bgrunner.context import host_id
from tests.conftest import ROOT, Project, wait_until

SECRETS = {"BGRUNNER_DASHBOARD_TOKEN": "tok-" + "a1B2c3D4" * 4,
           "BGRUNNER_DASHBOARD_READONLY_TOKEN": "ro-" + "z9Y8x7W6" * 4}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of another user")


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was exec-ed with (what ``/proc`` shows every local reader)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def started_pid(sentinel: Path) -> int:
    """The pid a ``Probe.sleep`` job wrote to its sentinel once it started."""
    text = wait_until(lambda: sentinel.exists() and sentinel.read_text().strip(),
                      message="the job to start")
    return int(text.splitlines()[0])


def kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        for p in [*proc.children(recursive=True), proc]:
            p.kill()
    except psutil.Error:
        pass


def auto_workers(project: Project) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "worker" in cmd and "--auto" in cmd:
            try:
                if environ_of(proc.pid).get("BGRUNNER_DATABASE_URL") == project.database_url:
                    found.append(proc)
            except OSError:
                pass
    return found


ENV_DUMP = """
import json, os, sys, time

class EnvDump:
    def dump(self, path: str, seconds: float = 0) -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(dict(os.environ), f)
        os.replace(path + ".tmp", path)
        time.sleep(seconds)

    def shout(self) -> None:
        print("leaked to stdout")
        print("leaked to stderr", file=sys.stderr)
"""


def with_env_dump(project: Project, tmp_path: Path) -> None:
    """Allow ``envdump:EnvDump.dump``: a job that writes the environment its code sees."""
    (tmp_path / "envdump.py").write_text(ENV_DUMP)
    project.extra_env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
    project.write_config(project.config.read_text() + '\n[jobs."envdump:EnvDump"]\nmethods = ["dump", "shout"]\n')


def fork_mode(project: Project) -> None:
    project.write_config(project.config.read_text().replace("[runner]", '[runner]\nlaunch = "fork"'))


@pytest.fixture
def worker(sqlite_project: Project) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workers a test starts with ``subprocess.Popen``; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


# -- 1. secrets ------------------------------------------------------------------------------

def test_direct_launch_and_auto_started_worker_never_see_dashboard_tokens(
        sqlite_project: Project, tmp_path: Path) -> None:
    """A job launched by its caller, and the worker a delayed submit starts, get no dashboard token."""
    project = sqlite_project
    project.extra_env.update(SECRETS)
    sentinel = tmp_path / "started"
    code = f"""
        import bgrunner
        print(bgrunner.run_background_job("tests.fixtures:Probe", "sleep", [30, {str(sentinel)!r}]))
        print(bgrunner.run_background_job("tests.fixtures:Probe", "noop", delay=60))
    """
    r = project.python(code)
    assert r.returncode == 0, r.stderr
    pid = started_pid(sentinel)
    try:
        env = environ_of(pid)
        assert env["BGRUNNER_DATABASE_URL"] == project.database_url  # the job still opens the store
        assert not set(SECRETS) & set(env)
        workers = wait_until(lambda: auto_workers(project), message="the auto-started worker")
        assert all(not set(SECRETS) & set(environ_of(w.pid)) for w in workers)
    finally:
        kill_tree(pid)


def test_fork_template_and_forked_jobs_never_see_dashboard_tokens(
        sqlite_project: Project, tmp_path: Path, worker: list[subprocess.Popen[bytes]]) -> None:
    """In fork mode the template is started without the tokens: a forked job's code sees none.

    (``/proc/<pid>/environ`` of the template and its children shows setproctitle's
    rewrite, so the job reports ``os.environ`` itself.)
    """
    project = sqlite_project
    fork_mode(project)
    with_env_dump(project, tmp_path)
    project.extra_env.update(SECRETS)
    project.extra_env["BGRUNNER_AUTOSTART"] = "0"
    worker.append(subprocess.Popen([sys.executable, "-m", "bgrunner", "worker"], cwd=ROOT,
                                   env=project.env, stdout=subprocess.DEVNULL))
    dump = tmp_path / "env.json"
    r = project.cli("submit", "envdump:EnvDump", "dump", str(dump))
    assert r.returncode == 0, r.stderr
    wait_until(dump.exists, message="the forked job to report its environment")
    env = json.loads(dump.read_text())
    assert env["BGRUNNER_DATABASE_URL"] == project.database_url  # the job still opens the store
    assert not set(SECRETS) & set(env)
    assert wait_until(lambda: project.job(1).status == "completed", message="the job to end")


# -- 2. symbolic links and open folders ---------------------------------------------------------

def test_a_linked_log_file_is_never_written_through(sqlite_project: Project, tmp_path: Path) -> None:
    """A symlink at logs/background_jobs.log is refused with one warning; the file it names is untouched."""
    project = sqlite_project
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    project.log_dir.mkdir(mode=0o700)
    (project.log_dir / "background_jobs.log").symlink_to(victim)
    r = project.run_job("tests.fixtures:Probe", "noop")
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n"
    warnings = [line for line in r.stderr.splitlines() if "symbolic link" in line]
    assert len(warnings) == 1 and "background_jobs.log" in warnings[0]


@pytest.mark.parametrize("mode", ["spawn", "fork"])
def test_a_linked_output_file_is_never_written_through(
        sqlite_project: Project, tmp_path: Path, worker: list[subprocess.Popen[bytes]], mode: str) -> None:
    """A symlink at logs/output/1.out: the job's stdout never reaches the file it names (spawn and fork)."""
    project = sqlite_project
    with_env_dump(project, tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    output = project.log_dir / "output"
    output.mkdir(parents=True, mode=0o700)
    (output / "1.out").symlink_to(victim)
    if mode == "spawn":
        r = project.python("""
            import bgrunner
            try:
                bgrunner.run_background_job("envdump:EnvDump", "shout")
            except bgrunner.JobError as exc:
                print(exc)
        """)
        assert r.returncode == 0, r.stderr
        assert "1.out: it is a symbolic link" in r.stdout and len(r.stdout.splitlines()) == 1
    else:
        fork_mode(project)
        project.extra_env["BGRUNNER_AUTOSTART"] = "0"
        r = project.cli("submit", "envdump:EnvDump", "shout")
        assert r.returncode == 0, r.stderr
        worker.append(subprocess.Popen([sys.executable, "-m", "bgrunner", "worker"], cwd=ROOT,
                                       env=project.env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
        wait_until(lambda: project.job(1).status in ("completed", "failed"), message="the job to end")
    assert victim.read_text() == "precious\n"


def test_viewers_never_read_through_a_linked_output_file(sqlite_project: Project, tmp_path: Path) -> None:
    """`logs ID --output` and the dashboard's reader refuse a symlinked 1.out instead of showing its target."""
    from bgrunner.output import read_output

    project = sqlite_project
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    output = project.log_dir / "output"
    output.mkdir(parents=True, mode=0o700)
    (output / "1.out").symlink_to(secret)
    r = project.cli("logs", "1", "--output")
    assert r.returncode == 2 and "root:x" not in r.stdout
    assert "symbolic link" in r.stderr and len(r.stderr.splitlines()) == 1
    assert read_output(str(output), 1) == ("", 0, False)


def test_a_world_writable_log_folder_is_made_private_and_said_so(sqlite_project: Project) -> None:
    """A pre-existing 0777 log folder (ours) becomes 0700; stderr and the log say so."""
    project = sqlite_project
    project.log_dir.mkdir()
    os.chmod(project.log_dir, 0o777)
    r = project.run_job("tests.fixtures:Probe", "noop")
    assert r.returncode == 0, r.stderr
    assert project.log_dir.stat().st_mode & 0o777 == 0o700
    assert "made log folder" in r.stderr and "private" in r.stderr
    assert any(e["event"] == "log_folder_made_private" for e in project.events())
    assert (project.log_dir / "background_jobs.log").stat().st_mode & 0o777 == 0o600


@needs_root
def test_a_foreign_world_writable_log_folder_is_refused(sqlite_project: Project) -> None:
    """A 0777 log folder owned by another user is refused with one line; nothing is written in it."""
    project = sqlite_project
    project.log_dir.mkdir()
    os.chmod(project.log_dir, 0o777)
    os.chown(project.log_dir, 65534, 65534)
    r = project.run_job("tests.fixtures:Probe", "noop")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "refusing log folder" in line]
    assert len(lines) == 1 and "owned by uid 65534" in lines[0]
    assert list(project.log_dir.iterdir()) == []


# -- 3. the wake-up socket and the worker lock ------------------------------------------------------

def old_tmp_base(project: Project) -> str:
    """Where today's release put the socket and the lock: a predictable name in the shared /tmp."""
    digest = hashlib.sha256(f"{project.database_url}|{host_id()}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"bgrunner-{os.getuid()}-{digest}")


def submit_delayed_and_wait(project: Project) -> str:
    """Submit a job due in 0.3 s (it needs the auto-started worker) and wait for it to end."""
    r = project.python("""
        import bgrunner
        job = bgrunner.run_background_job("tests.fixtures:Probe", "noop", delay=0.3)
        print(bgrunner.wait_for(job, timeout=30)["status"])
    """)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_socket_bound_first_at_the_old_tmp_path_swallows_nothing(sqlite_project: Project) -> None:
    """Another user's socket at /tmp/bgrunner-<uid>-<hash>.sock: a worker is still started, the job runs."""
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = old_tmp_base(sqlite_project) + ".sock"
    if os.path.exists(path):
        os.unlink(path)
    hostile.bind(path)
    try:
        assert submit_delayed_and_wait(sqlite_project) == "completed"
    finally:
        hostile.close()
        os.unlink(path)


def test_a_lock_held_at_the_old_tmp_path_blocks_nothing(sqlite_project: Project) -> None:
    """Another user holding /tmp/bgrunner-<uid>-<hash>.lock: the worker still starts, the job runs."""
    from filelock import FileLock

    lock = FileLock(old_tmp_base(sqlite_project) + ".lock")
    with lock:
        assert submit_delayed_and_wait(sqlite_project) == "completed"


def test_the_run_folder_is_private_and_in_the_log_folder(sqlite_project: Project) -> None:
    """Without XDG_RUNTIME_DIR the socket and lock live in <log dir>/.run, mode 0700, even for a long path."""
    project = sqlite_project
    long_dir = project.root / ("x" * 60) / ("y" * 60)
    project.extra_env["BGRUNNER_LOG_DIR"] = str(long_dir)
    assert submit_delayed_and_wait(project) == "completed"
    run = long_dir / ".run"
    assert run.stat().st_mode & 0o777 == 0o700
    assert {p.suffix for p in run.iterdir()} >= {".lock"}


def test_xdg_runtime_dir_is_used_when_private(sqlite_project: Project, tmp_path: Path) -> None:
    """A private XDG_RUNTIME_DIR holds the run folder (bgrunner/, 0700) instead of the log folder."""
    project = sqlite_project
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    project.extra_env["XDG_RUNTIME_DIR"] = str(runtime)
    assert submit_delayed_and_wait(project) == "completed"
    assert (runtime / "bgrunner").stat().st_mode & 0o777 == 0o700
    assert any((runtime / "bgrunner").iterdir())
    assert not (project.log_dir / ".run").exists()


@pytest.mark.parametrize("where", ["log", "xdg"])
def test_a_run_folder_open_to_others_is_refused(sqlite_project: Project, tmp_path: Path, where: str) -> None:
    """A pre-created run folder with mode 0777 is refused with one line; no worker is started from it."""
    project = sqlite_project
    if where == "xdg":
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        project.extra_env["XDG_RUNTIME_DIR"] = str(runtime)
        run = runtime / "bgrunner"
    else:
        run = project.log_dir / ".run"
    run.mkdir(parents=True)
    os.chmod(run, 0o777)
    r = project.cli("submit", "tests.fixtures:Probe", "noop", "--delay", "60")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"refusing run folder {run}: open to other users" in r.stderr
    assert auto_workers(project) == []
    w = project.cli("worker", "--burst")
    assert w.returncode != 0 and "refusing run folder" in w.stderr


# -- 4. the terminal ------------------------------------------------------------------------------

OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"


def run_on_pty(project: Project, *args: str) -> bytes:
    """Run the CLI with its stdout on a pseudo-terminal; everything it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bgrunner", *args], cwd=ROOT, env=project.env,
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
    return out


def test_escape_sequences_never_reach_the_terminal(sqlite_project: Project, tmp_path: Path) -> None:
    """A param, a log line and a job's output holding OSC 52 reach a tty escaped; a pipe gets the output as is."""
    project = sqlite_project
    r = project.run_job("tests.fixtures:Probe", "mark", "--json", json.dumps([str(tmp_path / "m"), OSC52]))
    assert r.returncode == 0, r.stderr
    job_id = project.jobs()[0].id
    from bgrunner.eventlog import EventLog

    EventLog(project.log_dir).emit("email_sent", job_id=str(job_id), to=OSC52)
    output = project.log_dir / "output"
    output.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(output / f"{job_id}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, f"hello {OSC52} world\n".encode())
    os.close(fd)
    for args in (("status", str(job_id)), ("logs", str(job_id)), ("logs", str(job_id), "--output"),
                 ("list",)):
        # On a terminal `logs` colours its level column (SGR codes of its own): those aside,
        # no escape byte of what the job wrote reaches the terminal.
        shown = re.sub(rb"\x1b\[[0-9;]*m", b"", run_on_pty(project, *args))
        assert b"\x1b" not in shown and b"\x07" not in shown, (args, shown)
    assert b"\\x1b]52" in run_on_pty(project, "logs", str(job_id), "--output")
    assert b"\\x1b]52" in run_on_pty(project, "logs", str(job_id))
    piped = project.cli("logs", str(job_id), "--output")
    assert piped.stdout == f"hello {OSC52} world\n"
    human = project.cli("logs", str(job_id))  # a pipe: JSON lines, the escape as \u001b
    assert "\x1b" not in human.stdout and "\\u001b]52" in human.stdout
    as_json = project.cli("logs", str(job_id), "--json")
    assert "\x1b" not in as_json.stdout and "\\u001b]52" in as_json.stdout

