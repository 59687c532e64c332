"""bgrunner: background jobs as detached OS processes, with no broker."""

from __future__ import annotations
