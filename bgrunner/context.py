"""Where things are: the allowlist, the log folder and the job store, resolved once per process.

Precedence: a command-line flag, then the ``BGRUNNER_*`` environment variable,
then the default under the current directory (CONTRACT §2). Children get the
resolved values in their environment, so a flag given to the parent means the
same to every process it starts, and never the dashboard's secrets (CONTRACT §14).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bgrunner.allowlist import Config, RunnerSettings
    from bgrunner.eventlog import EventLog
    from bgrunner.store.base import Store

DEFAULT_CONFIG = os.path.join("config", "allowed_jobs.toml")
DEFAULT_LOG_DIR = "logs"

#: Variables no launched process receives (worker, fork template, job): the dashboard's
#: settings, its login tokens among them. Only the dashboard reads them, and a job runs
#: code that must not learn them (CONTRACT §14). A prefix, so a secret added later is covered.
HIDDEN_PREFIX = "BGRUNNER_DASHBOARD_"


def launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without the variables launched processes must not see."""
    return {k: v for k, v in environ.items() if not k.startswith(HIDDEN_PREFIX)}


def scrub_environ() -> None:
    """Drop the hidden variables from this process's own environment (a fork template, at its start).

    A forked child inherits ``os.environ``, and whatever it execs gets it too.
    """
    for name in [k for k in os.environ if k.startswith(HIDDEN_PREFIX)]:
        del os.environ[name]


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def absolute_url(url: str | None) -> str:
    """The store URL with a relative SQLite path made absolute (so children agree on it)."""
    from bgrunner.store.factory import DEFAULT_DATABASE_URL

    url = url or DEFAULT_DATABASE_URL
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            return "sqlite:///" + os.path.abspath(path)
    return url


_host_id: str | None = None


def host_id() -> str:
    """This host's id in the store: ``BGRUNNER_HOST_ID``, or the hostname plus a hash of its pid space.

    Two machines (or containers) with one hostname get different ids: the hash
    covers the boot id and the pid namespace, exactly what makes a pid mean the
    same process. Pids and start times are only ever checked on the host whose
    id a job carries, so this id must never be shared by two pid spaces.
    """
    global _host_id
    if os.environ.get("BGRUNNER_HOST_ID"):
        return os.environ["BGRUNNER_HOST_ID"]
    if _host_id is None:
        name = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "localhost")
        _host_id = f"{name}-{_pid_space()}"
    return _host_id


def machine_id(run_dir: str = "") -> str:
    """What tells two machines apart that share a host id: the pid space, and the run folder.

    Workers of one host id on one machine may run side by side (several queues);
    the same id seen from another pid space (or from a process that cannot reach
    this one's wake-up sockets and locks) is a host id given to two machines.
    """
    import zlib

    return f"{_pid_space()}-{zlib.crc32(run_dir.encode()):08x}"


def _pid_space() -> str:
    """Eight hex digits naming this boot and pid namespace (Linux), else the machine's node id."""
    import zlib

    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(path, "rb") as f:
                parts.append(f.read().strip())
        except OSError:
            pass
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino).encode())
    except OSError:
        import uuid

        parts.append(str(uuid.getnode()).encode())
    return format(zlib.crc32(b"\0".join(parts)), "08x")


@dataclass
class Context:
    """The resolved settings of this process plus lazily opened config, store and log."""

    config_path: str
    log_dir: str
    database_url: str
    autostart: bool = True
    #: False in a job process: it never fires schedules, so their cron expressions are not
    #: parsed there (the cron parser costs ~18 ms of imports); every other process checks them.
    check_schedules: bool = True

    def __repr__(self) -> str:
        """As the dataclass would, with the store URL's password masked (a repr lands in logs)."""
        from bgrunner.store.base import redact_url

        return (f"Context(config_path={self.config_path!r}, log_dir={self.log_dir!r}, "
                f"database_url={redact_url(self.database_url)!r}, autostart={self.autostart!r})")

    @classmethod
    def resolve(cls, config: str | None = None, log_dir: str | None = None,
                database_url: str | None = None) -> Context:
        return cls(
            config_path=os.path.abspath(config or os.environ.get("BGRUNNER_CONFIG") or DEFAULT_CONFIG),
            log_dir=os.path.abspath(log_dir or os.environ.get("BGRUNNER_LOG_DIR") or DEFAULT_LOG_DIR),
            database_url=absolute_url(database_url or os.environ.get("BGRUNNER_DATABASE_URL")),
            autostart=env_flag("BGRUNNER_AUTOSTART", True),
        )

    @cached_property
    def config(self) -> Config:
        from bgrunner.allowlist import load_config

        return load_config(self.config_path, check_schedules=self.check_schedules)

    def adopt_config(self, raw: bytes, config: Config) -> bool:
        """Use ``config``, parsed from ``raw`` earlier, if the file still holds exactly ``raw``.

        For processes forked from a warm template: the file is read again (so the
        allowlist checked is the one on disk now), only the parsing is skipped.
        """
        if "config" in self.__dict__:
            return False
        try:
            with open(self.config_path, "rb") as fh:
                data = fh.read()
        except OSError:
            return False  # load_config reports it
        if data != raw:
            return False
        self.__dict__["config"] = config
        return True

    @cached_property
    def store(self) -> Store:
        from bgrunner.store.factory import open_store

        return open_store(self.database_url)

    @cached_property
    def log(self) -> EventLog:
        """The event log, rotated as the allowlist's ``[runner]`` says (defaults if it is broken)."""
        return self._open_log(self._runner_settings())

    def preset_log(self, runner: RunnerSettings) -> EventLog:
        """Open the log with these rotation settings without reading the allowlist.

        For a job process forked ahead of its job: it takes the settings of the
        template's parsed allowlist (a changed allowlist renews the template).
        """
        self.__dict__["log"] = log = self._open_log(runner)
        return log

    def _open_log(self, runner: RunnerSettings | None) -> EventLog:
        from bgrunner.eventlog import EventLog

        if runner is None:
            return EventLog(self.log_dir)
        return EventLog(self.log_dir, max_bytes=runner.log_max_bytes, backups=runner.log_backups,
                        compress=runner.log_compress)

    def _runner_settings(self) -> RunnerSettings | None:
        try:
            return self.config.runner
        except Exception:  # a broken config still gets logs with default rotation
            return None

    @property
    def output_dir(self) -> str:
        return os.path.join(self.log_dir, "output")

    def child_env(self) -> dict[str, str]:
        """The caller's environment plus the resolved locations, for a launched process.

        Without the dashboard's variables (:data:`HIDDEN_PREFIX`). The store URL
        goes in whole: the child opens the store with it; only messages mask it.
        """
        env = launch_env(os.environ)
        env["BGRUNNER_CONFIG"] = self.config_path
        env["BGRUNNER_LOG_DIR"] = self.log_dir
        env["BGRUNNER_DATABASE_URL"] = self.database_url
        return env
