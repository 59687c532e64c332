"""Where things are: the allowlist, the log folder and the job store, resolved once per process.

Precedence: a command-line flag, then the ``BGRUNNER_*`` environment variable,
then the default under the current directory (CONTRACT §2). Children get the
resolved values in their environment, so a flag given to the parent means the
same to every process it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgrunner.allowlist import Config, RunnerSettings
    from bgrunner.eventlog import EventLog
    from bgrunner.store.base import Store

DEFAULT_CONFIG = os.path.join("config", "allowed_jobs.toml")
DEFAULT_LOG_DIR = "logs"


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


def host_id() -> str:
    """This host's name in the store: ``BGRUNNER_HOST_ID`` or the hostname."""
    if os.environ.get("BGRUNNER_HOST_ID"):
        return os.environ["BGRUNNER_HOST_ID"]
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "localhost")


@dataclass
class Context:
    """The resolved settings of this process plus lazily opened config, store and log."""

    config_path: str
    log_dir: str
    database_url: str
    autostart: bool = True

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

        return load_config(self.config_path)

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
        return EventLog(self.log_dir, max_bytes=runner.log_max_bytes, backups=runner.log_backups)

    def _runner_settings(self) -> RunnerSettings | None:
        try:
            return self.config.runner
        except Exception:  # a broken config still gets logs with default rotation
            return None

    @property
    def output_dir(self) -> str:
        return os.path.join(self.log_dir, "output")

    def child_env(self) -> dict[str, str]:
        """The caller's environment plus the resolved locations, for a launched process."""
        env = dict(os.environ)
        env["BGRUNNER_CONFIG"] = self.config_path
        env["BGRUNNER_LOG_DIR"] = self.log_dir
        env["BGRUNNER_DATABASE_URL"] = self.database_url
        return env
