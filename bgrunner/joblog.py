"""Lines job code writes: ``bgrunner.get_logger()`` (structlog) and ``bgrunner.capture_logging()``.

One sink, two front doors. bgrunner's own events go in by ``EventLog.emit``;
the lines of job code go through a structlog pipeline whose last step hands the
event dict to ``EventLog.write_event`` of the very same ``EventLog`` (in a job,
the job process's ``ctx.log``): same files, same descriptors and lock, same
layout of keys, encoding, password masking and errors-file rule. The pipeline:

1. ``structlog.contextvars.merge_contextvars`` (what ``bind_contextvars`` bound);
2. the job's keys: ``job_id``, ``target``, ``method``, ``attempt`` (the current
   one) and ``pid`` (the writing process); nothing outside a job, where the
   line carries them as ``null`` like any event not about a job;
3. ``add_log_level``; 4. ``timestamp``, as ``EventLog`` writes it;
5. ``exc_info`` (``log.exception(...)``, ``exc_info=True`` or an exception) as a
   ``traceback`` key, the text of bgrunner's own ``job_failed`` lines;
6. the sink, then ``DropEvent``: structlog itself writes nothing.

Importing this module imports nothing of structlog's: it is imported on the
first call of :func:`get_logger` or :func:`capture_logging` (~110 ms here, with
``asyncio``, ``logging`` and ``threading``, which it imports in turn), so a job
that never logs pays nothing. A fork-mode template imports it only when a job
module it preloads does.

The job side says which job this process runs (:func:`enter_job`,
:func:`set_attempt`, from ``job/``); a forked attempt process inherits it.
"""

from __future__ import annotations

import os
import sys

from bgrunner.eventlog import EventLog, format_exception, utc_timestamp

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import MutableMapping
    from typing import Any

    from structlog.typing import FilteringBoundLogger, Processor

__all__ = ["capture_logging", "enter_job", "get_logger", "set_attempt"]

#: The keys a line gets from the job it was written in (``pid`` besides).
JOB_KEYS = ("job_id", "target", "method", "attempt")

_job: dict[str, Any] | None = None  # the running job's keys, in this process
_job_log: EventLog | None = None  # the job process's log: the sink bgrunner's own events go to
_outside: EventLog | None = None  # outside a job: the log Context.resolve() names, opened on first use
_pipeline: tuple[Any, list[Processor], Any] | None = None  # logger class, processors, wrapped logger
_drop: type[BaseException] = Exception  # structlog.DropEvent, once structlog is imported
_handler: logging.Handler | None = None


# -- the job side ---------------------------------------------------------------------
def enter_job(log: EventLog, *, job_id: str, target: str, method: str | None, attempt: int) -> None:
    """This process runs job ``job_id``: its lines carry the job's keys and go to ``log``.

    Called by the job side before the job's module is imported; cheap (no structlog).
    """
    global _job, _job_log
    _job = {"job_id": job_id, "target": target, "method": method, "attempt": attempt}
    _job_log = log


def set_attempt(attempt: int) -> None:
    """The job moved on to attempt ``attempt`` (a retry in the same process)."""
    if _job is not None:
        _job["attempt"] = attempt


def leave_job() -> None:
    """Back to outside a job (tests; a job process ends with its job)."""
    global _job, _job_log
    _job = None
    _job_log = None


def current_job() -> dict[str, Any] | None:
    """The keys this process's lines get from its job, or None outside a job."""
    return None if _job is None else dict(_job)


def _log() -> EventLog:
    global _outside
    if _job_log is not None:
        return _job_log
    if _outside is None:
        from bgrunner.context import Context

        _outside = Context.resolve().log  # BGRUNNER_LOG_DIR or ./logs, rotated as [runner] says
    return _outside


# -- the user side --------------------------------------------------------------------
def get_logger(name: str | None = None, **initial_values: Any) -> FilteringBoundLogger:
    """A structlog logger writing to the job log: ``get_logger().info("email_sent", to=addr)``.

    Inside a job its lines carry the job's ``job_id``, ``target``, ``method``,
    ``attempt`` and ``pid`` (read at each line, so a logger made at import time,
    even in a fork template, is right in every job); ``error`` and above also go
    to the errors file. ``name`` becomes the ``logger`` key; ``initial_values``
    are bound. Every level is written (``debug`` included). Does not touch
    structlog's global configuration: ``structlog.get_logger()`` stays the
    application's.
    """
    cls, chain, wrapped = _structlog_pipeline()
    context = dict(initial_values)
    if name is not None:
        context = {"logger": name, **context}
    logger: FilteringBoundLogger = cls(wrapped, chain, context)
    return logger


def capture_logging(level: int | str = "INFO") -> logging.Handler:
    """Send stdlib ``logging`` records at ``level`` and above to the job log too; the root handler.

    A handler on the root logger whose ``structlog.stdlib.ProcessorFormatter``
    runs the same pipeline (the ``logger`` key is the record's logger name),
    so a job's libraries log with the job's keys. The root logger's level is
    lowered to ``level`` if it was higher. Calling it again only changes the
    level. ``[runner] capture_logging = true`` calls it in every job process.
    """
    global _handler
    import logging

    _, chain, _ = _structlog_pipeline()
    if _handler is None:
        from structlog.stdlib import ProcessorFormatter, add_logger_name

        class _SinkHandler(logging.Handler):
            """Formats each record through the pipeline; the formatter's last step writes it."""

            def emit(self, record: logging.LogRecord) -> None:
                try:
                    self.format(record)
                except Exception:  # logging must never break a job
                    pass

        handler = _SinkHandler()
        handler.setFormatter(ProcessorFormatter(
            processors=[add_logger_name, ProcessorFormatter.remove_processors_meta,
                        *chain[:-1], _to_sink_text],
            use_get_message=True,
        ))
        _handler = handler
    _handler.setLevel(level.upper() if isinstance(level, str) else level)
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
    if root.getEffectiveLevel() > _handler.level:
        root.setLevel(_handler.level)
    return _handler


# -- the pipeline ---------------------------------------------------------------------
def _structlog_pipeline() -> tuple[Any, list[Processor], Any]:
    """The logger class, processors and wrapped logger, built (structlog imported) on the first call.

    The wrapped logger is never called: the last processor drops every event.
    """
    global _pipeline, _drop
    if _pipeline is None:
        import structlog

        chain: list[Processor] = [
            structlog.contextvars.merge_contextvars,
            _add_job_keys,
            structlog.processors.add_log_level,
            _add_timestamp,
            _add_traceback,
            _to_sink,
        ]
        _drop = structlog.DropEvent
        _pipeline = (structlog.make_filtering_bound_logger("debug"), chain, structlog.ReturnLogger())
    return _pipeline


def _add_job_keys(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """The running job's keys (they win over a field of the same name), and the writing pid."""
    job = _job
    if job is not None:
        event_dict.update(job)
        event_dict["pid"] = os.getpid()
    return event_dict


def _add_timestamp(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = utc_timestamp()
    return event_dict


def _add_traceback(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """``exc_info`` (True, an exception, or a ``sys.exc_info()`` tuple) -> ``traceback`` text."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is not None:
        event_dict["traceback"] = format_exception(exc)
    return event_dict


def _to_sink(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The last step of a logger's pipeline: the line goes to the job log; structlog writes nothing."""
    _write(event_dict)
    raise _drop


def _to_sink_text(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The last step of the stdlib formatter's pipeline (which must return text)."""
    _write(event_dict)
    return ""


def _write(event_dict: MutableMapping[str, Any]) -> None:
    try:
        _log().write_event(event_dict)
    except Exception:  # no log folder to be had outside a job: logging must never break the caller
        pass
