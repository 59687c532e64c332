"""Files and folders that only this user may touch: opened without following links, checked to be ours.

Job processes append to the logs and to their output file, the CLI and the
dashboard read them, and the wake-up socket and worker lock decide whether a
worker runs. A symbolic link planted in one of those folders would make a job
append to (or a viewer read) whatever it points at; a socket bound first by
another local user would swallow every wake-up. So:

* every such file is opened with ``O_NOFOLLOW | O_CLOEXEC`` (and ``O_NONBLOCK``,
  so a planted FIFO cannot hang the opener), then ``fstat``-checked to be a
  regular file owned by this user; anything else is refused;
* a log or output folder that others may write in is made private (0700) when
  it is ours, and refused when it is not;
* the run folder (socket and lock) must be a real folder of ours that nobody
  else may even enter; it is never repaired, only refused.

Refusals are :class:`UnsafePathError`, an ``OSError`` whose text is one line.
Standard library only, and only modules Python has loaded anyway: every job
process imports this.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["UnsafePathError", "check_folder", "is_private_folder", "open_private", "run_folder"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

#: Mode bits that let another user write in (or rename entries of) a folder.
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UnsafePathError(OSError):
    """A file or folder is not safe to use: a link, not a regular file, not ours, or open to others."""


def _me() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def open_private(path: str, flags: int) -> int:
    """A descriptor on the regular file at ``path`` owned by this user; created 0600 with ``O_CREAT``.

    ``path``'s last component is never followed. The descriptor is close-on-exec
    and blocking (``O_NONBLOCK`` is only used while opening).
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"refusing {path}: it is a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, a socket
            raise UnsafePathError(f"refusing {path}: not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"refusing {path}: not a regular file")
        if hasattr(os, "geteuid") and st.st_uid != _me():
            raise UnsafePathError(f"refusing {path}: owned by uid {st.st_uid}, not by this user")
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_folder(path: str, what: str) -> str | None:
    """Create ``path`` (0700) if missing; make it private if others may write in it. A note if it did.

    A folder others may write in is chmod-ed to 0700 when it is ours (the note
    says so, for the caller to warn) and refused when it is not. A folder that
    others may only read is left as its owner made it.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"refusing {what} {path}: not a folder")
    if not st.st_mode & OTHERS_WRITE or not hasattr(os, "geteuid"):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != _me():
        raise UnsafePathError(f"refusing {what} {path}: writable by others (mode {mode:04o}) "
                              f"and owned by uid {st.st_uid}, not by this user")
    os.chmod(path, 0o700)
    return f"made {what} {path} private (mode {mode:04o} -> 0700): others could write in it"


def run_folder(path: str) -> str:
    """``path``, created 0700 if missing, once checked: a real folder of ours that nobody else may enter.

    For the wake-up socket and the worker lock: whoever can write here decides
    whether a worker runs, so a folder that fails the check is refused, never fixed.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"refusing run folder {path}: not a folder (a symbolic link?)")
    if hasattr(os, "geteuid"):
        if st.st_uid != _me():
            raise UnsafePathError(f"refusing run folder {path}: owned by uid {st.st_uid}, "
                                  "not by this user")
        if st.st_mode & 0o077:
            raise UnsafePathError(f"refusing run folder {path}: open to other users "
                                  f"(mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700)")
    return path


def is_private_folder(path: str) -> bool:
    """True if ``path`` is a real folder of ours with no access for anyone else (``XDG_RUNTIME_DIR``'s rule)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077
            and (not hasattr(os, "geteuid") or st.st_uid == _me()))
