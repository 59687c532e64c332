"""What every command line of bgrunner shares: one-line usage errors, location flags, params.

Used by ``run_job.py`` (``bgrunner.job.main``) and the ``bgrunner`` command (``bgrunner.cli``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from bgrunner.errors import UsageError
from bgrunner.eventlog import redact_text

_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0))
             if c not in (0x09, 0x0a)}
_CONTROLS[0x0d] = "\\r"


def terminal_text(text: str) -> str:
    """``text`` with every control character but newline and tab shown as an escape (``\\x1b``).

    For anything written to a person's terminal: a job, its params or its
    output must never be able to send the terminal a command. A store URL's
    password is masked too (``eventlog.redact_text``).
    """
    return redact_text(text).translate(_CONTROLS)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter without ``shutil`` (argparse builds one per ``add_argument``;
    shutil and the compression modules it pulls in cost every job process ~1-3 ms)."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError):
            width = 100
        super().__init__(prog, width=max(40, width - 2))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # The message may quote an argument: escaped, so it stays one line and sends no control codes.
        shown = terminal_text(message).replace("\n", "\\n")
        self.exit(2, f"{self.prog}: error: {shown} (see --help)\n")


def add_location_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="allowlist TOML (env BGRUNNER_CONFIG)")
    p.add_argument("--log-dir", metavar="DIR", help="log folder (env BGRUNNER_LOG_DIR)")
    p.add_argument("--database-url", metavar="URL", help="job store (env BGRUNNER_DATABASE_URL)")


def read_params(text: str | None, json_text: str | None) -> list[Any] | dict[str, Any]:
    """The params as given on a command line: comma-separated, or ``--json``."""
    from bgrunner.binding.params import parse_json_params, split_params

    if text is not None and json_text is not None:
        raise UsageError("give params either as one comma-separated argument or with --json, not both")
    if json_text is not None:
        return parse_json_params(json_text)
    return split_params(text) if text is not None else []
