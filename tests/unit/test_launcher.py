"""The launch flags: a pure choice per platform."""

from __future__ import annotations

from bgrunner.job.command import job_command
from bgrunner.launch.spawn import CREATE_NEW_PROCESS_GROUP, DETACHED_PROCESS, detach_options


def test_posix_starts_a_new_session() -> None:
    """On Unix a job runs in a session of its own (setsid), so it outlives its launcher."""
    assert detach_options("linux") == {"start_new_session": True}
    assert detach_options("darwin") == {"start_new_session": True}


def test_windows_detaches_into_a_new_process_group() -> None:
    """On Windows a job is a detached process in a new process group."""
    assert detach_options("win32") == {"creationflags": DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP}
    assert DETACHED_PROCESS == 0x8 and CREATE_NEW_PROCESS_GROUP == 0x200


def test_job_command_carries_no_params() -> None:
    """The command line names the target, method and id only: params stay in the store."""
    cmd = job_command("pkg.mod:Cls", "run", 42)
    assert cmd[-4:] == ["pkg.mod:Cls", "run", "--job-id", "42"]
