"""The allowlist: which `module:Class` targets and methods may run, and with what policy.

Everything here is decided from the TOML text alone: this module never imports a
job's module, so a target that is not allowed is refused before any of its code
(import-time side effects included) can run.
"""

from __future__ import annotations

import keyword
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from bgrunner import bounds
from bgrunner.errors import ConfigError, JobError, NotAllowedError, UsageError

if TYPE_CHECKING:
    from bgrunner.model import JobRecord, TargetLimit

BACKOFFS = ("fixed", "exponential")
LAUNCH_METHODS = ("spawn", "fork")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Invalid(Exception):
    """A value breaks a rule; whoever catches it adds the file and the key path."""

    def __init__(self, reason: str, *subkeys: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subkeys = subkeys


def _show(value: object) -> str:
    """Repr short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_path(*parts: str) -> str:
    """Dotted TOML key path, quoting parts that are not bare keys (`jobs."a.b:C".methods`)."""
    out = []
    for part in parts:
        if _BARE_KEY.fullmatch(part):
            out.append(part)
        else:
            out.append('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ".".join(out)


def _is_name(text: object) -> bool:
    """True for a Python identifier that is not a keyword (a module part, class or method)."""
    return isinstance(text, str) and text.isidentifier() and not keyword.iskeyword(text)


def _int_at_least(minimum: int, maximum: int = bounds.INT_MAX) -> Callable[[object], int]:
    """Checker for an integer from minimum to maximum (64-bit at most: every store holds it);
    bools are refused although bool subclasses int."""

    def check(value: object) -> int:
        try:
            return bounds.check_int(value, what="value", minimum=minimum, maximum=maximum)
        except UsageError:
            upper = "64-bit" if maximum == bounds.INT_MAX else str(maximum)
            raise _Invalid(f"expected an integer >= {minimum}, got {_shown(value)}"
                           + _too_big(value, minimum, f" (at most {upper})")) from None

    return check


def _seconds_upto(maximum: float) -> Callable[[object], float]:
    """Checker for a finite number of seconds from 0 to maximum; int or float, never bool."""

    def check(value: object) -> float:
        try:
            seconds = bounds.check_seconds(value, what="value", maximum=maximum)  # type: ignore[arg-type]
        except UsageError:
            raise _Invalid(f"expected a number of seconds >= 0, got {_shown(value)}"
                           + _too_big(value, 0, f" (at most {maximum:.0f})")) from None
        assert seconds is not None
        return seconds

    return check


#: ``timeout``, ``retry_delay`` and the runner's own waits: at most a year (CONTRACT §14).
_seconds = _seconds_upto(bounds.MAX_TIMEOUT)


def _too_big(value: object, minimum: float, suffix: str) -> str:
    """*suffix* when the value failed by being too large (or infinite), else nothing."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return suffix if is_number and value >= minimum else ""  # type: ignore[operator]


def _shown(value: object) -> str:
    """``_show``, safe for an integer too long for ``repr`` (TOML allows any number of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return _show(value)


def _import_root(value: object) -> str:
    """A folder to import job modules from (kept as written; resolved against the project later)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _Invalid(f"expected a folder path, got {_shown(value)}")
    return value


def _boolean(value: object) -> bool:
    """Checker for true or false (TOML booleans only; no 0/1 or strings)."""
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _one_of(*options: str) -> Callable[[object], str]:
    """Checker for a string among a fixed set."""

    def check(value: object) -> str:
        if value not in options:
            allowed = ", ".join(repr(o) for o in options)
            raise _Invalid(f"expected one of {allowed}, got {_show(value)}")
        return str(value)

    return check


def _retry_on(value: object) -> Mapping[str, int]:
    """Exception name -> attempts allowed, frozen; names are `Name` or `pkg.mod.Name`."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, tuple | list):
        pairs = list(value)
    else:
        raise _Invalid(f"expected a table of exception name = attempts, got {_show(value)}")
    table: dict[str, int] = {}
    for name, attempts in pairs:
        if not isinstance(name, str) or not all(_is_name(p) for p in name.split(".")):
            raise _Invalid("expected an exception class name like 'ValueError'", str(name))
        try:
            table[name] = _int_at_least(1)(attempts)
        except _Invalid as exc:
            raise _Invalid(exc.reason, name) from None
    return MappingProxyType(table)


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit = "N/s"``: at most ``count`` starts per ``per`` seconds, across the store."""

    count: int
    per: float
    text: str


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*([0-9]{1,9})\s*/\s*([smh])\s*")


def _queue(value: object) -> str:
    try:
        return bounds.check_queue(value, what="value")
    except UsageError:
        raise _Invalid(f"expected a queue name (letters, digits, _ and -, at most 64), got {_show(value)}"
                       ) from None


def _rate_limit(value: object) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise _Invalid(f'expected "N/s", "N/m" or "N/h" with N >= 1, got {_show(value)}')
    count, unit = int(match.group(1)), match.group(2)
    return RateLimit(count, _RATE_UNITS[unit], f"{count}/{unit}")


def _optional(check: Callable[[object], object]) -> Callable[[object], object]:
    """A checker that also takes None (the default: no limit)."""
    return lambda value: None if value is None else check(value)


def _positive_seconds(value: object) -> float:
    seconds = _seconds(value)
    if seconds <= 0:
        raise _Invalid(f"expected a number of seconds > 0, got {_shown(value)}")
    return seconds


_POLICY_CHECKS: dict[str, Callable[[object], object]] = {
    "max_attempts": _int_at_least(1),
    "retry_delay": _seconds,
    "backoff": _one_of(*BACKOFFS),
    "max_retry_delay": _seconds,
    "timeout": _seconds,
    "retry_on": _retry_on,
    "queue": _queue,
    "max_running": _optional(_int_at_least(1)),
    "rate_limit": _rate_limit,
    "memory_limit_mb": _optional(_int_at_least(1, 1 << 40)),
    "cpu_limit_s": _optional(_positive_seconds),
}

_RUNNER_CHECKS: dict[str, Callable[[object], object]] = {
    "max_concurrent": _int_at_least(0),
    "cancel_grace": _seconds,
    "launch": _one_of(*LAUNCH_METHODS),
    "preload_jobs": _boolean,
    "worker_idle_exit": _seconds,
    "log_max_bytes": _int_at_least(0),
    "log_backups": _int_at_least(0),
    "log_compress": _boolean,
    "capture_logging": _boolean,
    "result_max_bytes": _int_at_least(1, bounds.MAX_RESULT_BYTES),
    "host_timeout": _seconds,
    "import_root": lambda value: value if value is None else _import_root(value),
}


def _apply_checks(
    obj: object, checks: Mapping[str, Callable[[object], object]], error: type[JobError]
) -> None:
    """Validate a frozen dataclass's fields and normalise them in place (ints to floats...)."""
    for name, check in checks.items():
        try:
            value = check(getattr(obj, name))
        except _Invalid as exc:
            raise error(f"{_key_path(name, *exc.subkeys)}: {exc.reason}") from None
        object.__setattr__(obj, name, value)


def _reduce(obj: object) -> tuple[type, tuple[object, ...]]:
    """Pickle/deepcopy support: rebuild from fields, frozen mappings passed as plain dicts."""
    values = (getattr(obj, f.name) for f in fields(obj))  # type: ignore[arg-type]
    return type(obj), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values)


@dataclass(frozen=True)
class Policy:
    """How a job class is retried and timed out; every field is a `[defaults]` key."""

    max_attempts: int = 3
    retry_delay: float = 5.0
    backoff: str = "fixed"
    max_retry_delay: float = 300.0
    timeout: float = 0.0
    retry_on: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: The queue a target's jobs go to unless a submit names another (CONTRACT §10).
    queue: str = "default"
    #: At most this many of the target's jobs running at once, across the store; None: no limit.
    max_running: int | None = None
    #: At most so many starts per window, across the store; None: no limit.
    rate_limit: RateLimit | None = None
    #: The attempt's process tree may use at most this much memory (RSS, MB); None: no limit.
    memory_limit_mb: int | None = None
    #: CPU seconds per attempt, its process tree included; None: no limit.
    cpu_limit_s: float | None = None

    def __post_init__(self) -> None:
        """Refuse bad values however the policy was built (config, API overrides, tests)."""
        _apply_checks(self, _POLICY_CHECKS, UsageError)

    __reduce__ = _reduce

    def with_overrides(
        self,
        max_attempts: int | None = None,
        retry_delay: float | None = None,
        timeout: float | None = None,
    ) -> Policy:
        """Per-call overrides from the API or CLI; None keeps the allowlist's value.

        Raises UsageError (e.g. "max_attempts: expected an integer >= 1, got 0").
        """
        given = {"max_attempts": max_attempts, "retry_delay": retry_delay, "timeout": timeout}
        changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
        return replace(self, **changes) if changes else self  # type: ignore[arg-type]

    def for_job(self, job: JobRecord) -> Policy:
        """This policy with the overrides a stored job was submitted with (they win)."""
        return self.with_overrides(max_attempts=job.max_attempts, retry_delay=job.retry_delay,
                                   timeout=job.timeout)


@dataclass(frozen=True)
class RunnerSettings:
    """The optional `[runner]` table: limits and timings of the runner itself."""

    max_concurrent: int = 0
    cancel_grace: float = 5.0
    launch: str = "fork"
    preload_jobs: bool = False  # fork mode: the template imports the allow-listed modules too
    worker_idle_exit: float = 60.0
    log_max_bytes: int = 10_000_000
    log_backups: int = 5
    #: Rotated log files are gzipped (``.N.gz``); the CLI and the dashboard read them as they are.
    log_compress: bool = False
    #: A job's stdlib ``logging`` records (its libraries' loggers) go to the job log as well.
    capture_logging: bool = False
    result_max_bytes: int = 65536
    host_timeout: float = 30.0
    #: The folder job modules are imported from, first on ``sys.path`` in place of the
    #: current directory; relative to the project (the folder holding ``config/``). None: the cwd.
    import_root: str | None = None

    def __post_init__(self) -> None:
        """Same validation as at load time, for settings built in code."""
        _apply_checks(self, _RUNNER_CHECKS, ConfigError)

    @property
    def cap(self) -> int:
        """Jobs allowed to run at once: `max_concurrent`, or 2 per CPU when it is 0."""
        return self.max_concurrent or 2 * (os.cpu_count() or 1)


@dataclass(frozen=True)
class JobSpec:
    """One allowed class: its target, the methods that may be called, its policy."""

    target: str
    module: str
    class_name: str
    methods: tuple[str, ...]
    policy: Policy


@dataclass(frozen=True)
class ScheduleSpec:
    """One ``[schedules.NAME]`` entry (CONTRACT §11): what to run, and when.

    ``policy`` is the target's policy with the schedule's own overrides (queue,
    max_attempts, retry_delay, timeout); a fired run is an ordinary job of the target.
    """

    name: str
    target: str
    method: str
    params: list[object] | dict[str, object]
    cron: str | None
    every: float | None
    timezone: str
    overlap: str
    enabled: bool
    priority: int
    policy: Policy


@dataclass(frozen=True)
class Config:
    """A loaded, fully validated allowlist; `check()` is the only gate to running code."""

    path: str
    defaults: Policy = field(default_factory=Policy)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    jobs: Mapping[str, JobSpec] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    schedules: Mapping[str, ScheduleSpec] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        """Freeze the tables so a shared Config cannot be widened at run time."""
        object.__setattr__(self, "jobs", MappingProxyType(dict(self.jobs)))
        object.__setattr__(self, "schedules", MappingProxyType(dict(self.schedules)))

    def limits(self) -> tuple[TargetLimit, ...]:
        """The targets with a ``max_running`` or ``rate_limit``: what every claim must respect."""
        from bgrunner.model import TargetLimit

        return tuple(
            TargetLimit(spec.target, spec.policy.max_running,
                        spec.policy.rate_limit.count if spec.policy.rate_limit else None,
                        spec.policy.rate_limit.per if spec.policy.rate_limit else None)
            for spec in self.jobs.values()
            if spec.policy.max_running is not None or spec.policy.rate_limit is not None)

    __reduce__ = _reduce

    def check(self, target: str, method: str) -> JobSpec:
        """The spec of an allowed target and method, else NotAllowedError with one clear line.

        Order: target syntax, private method, target listed, method listed; nothing
        is imported.
        """
        parse_target(target)
        if not _is_name(method):
            raise NotAllowedError(f"invalid method name {_show(method)}")
        if method.startswith("_"):
            raise NotAllowedError(f"method {method!r} is private and never callable")
        spec = self.jobs.get(target)
        if spec is None:
            raise NotAllowedError(f"target {target!r} is not in the allowlist ({self.path})")
        if method not in spec.methods:
            allowed = ", ".join(spec.methods)
            raise NotAllowedError(
                f"method {method!r} of {target!r} is not allowed (allowed: {allowed})"
            )
        return spec


def parse_target(target: str) -> tuple[str, str]:
    """Split "a.b:C" into ("a.b", "C"), checking syntax only (the allowlist decides the rest).

    Each dotted module part and the class must be identifiers, not keywords, so
    paths ("../x:Y"), attribute chains and empty parts are refused early.
    """
    module, sep, class_name = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not sep or not _is_name(class_name) or not all(_is_name(p) for p in module.split(".")):
        raise NotAllowedError(f"invalid target {_show(target)}: expected module:Class")
    return module, class_name


def target_of(cls: type) -> str:
    """The target string of a class object, as the allowlist spells it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def project_folder(config_path: str) -> str:
    """The project an allowlist belongs to: the folder holding ``config/``, else the file's own folder."""
    folder = os.path.dirname(os.path.abspath(config_path))
    return os.path.dirname(folder) if os.path.basename(folder) == "config" else folder


def resolve_import_root(value: str, config_path: str) -> str:
    """``[runner] import_root`` as an absolute folder: relative paths start at the project."""
    return os.path.normpath(os.path.join(project_folder(config_path), os.path.expanduser(value)))


def load_config(path: str | os.PathLike[str], *, check_schedules: bool = True) -> Config:
    """Read and validate the allowlist file; any problem is a one-line ConfigError.

    ``check_schedules`` False (a job process) leaves schedules' cron expressions and
    timezones unparsed; everything else is checked the same.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {name} (set BGRUNNER_CONFIG or --config)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    return parse_config(text, name, check_schedules=check_schedules)


def parse_config(text: str, path: str, *, check_schedules: bool = True) -> Config:
    """Validate allowlist TOML text; `path` only names the file in errors and messages.

    A job's own `retry_on` table replaces the `[defaults.retry_on]` table rather than
    merging with it, so what a job retries on can be read from its own entry.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{path}: invalid TOML: {str(exc).split(';')[0]}") from None
    _reject_unknown(path, (), doc, ("defaults", "runner", "jobs", "schedules"))
    policy_values = _checked_table(path, ("defaults",), doc.get("defaults", {}), _POLICY_CHECKS)
    defaults = Policy(**policy_values)  # type: ignore[arg-type]
    runner_values = _checked_table(path, ("runner",), doc.get("runner", {}), _RUNNER_CHECKS)
    if runner_values.get("import_root") is not None:
        root = resolve_import_root(str(runner_values["import_root"]), path)
        if not os.path.isdir(root):  # else every job would fail to import, one by one
            raise _config_error(path, ("runner", "import_root"), f"{root} is not a folder")
        runner_values["import_root"] = root
    runner = RunnerSettings(**runner_values)  # type: ignore[arg-type]
    jobs_table = doc.get("jobs", {})
    if not isinstance(jobs_table, dict):
        raise _config_error(path, ("jobs",), f"expected a table, got {_show(jobs_table)}")
    jobs = {key: _job_spec(path, key, value, defaults) for key, value in jobs_table.items()}
    schedules_table = doc.get("schedules", {})
    if not isinstance(schedules_table, dict):
        raise _config_error(path, ("schedules",), f"expected a table, got {_show(schedules_table)}")
    schedules = {name: _schedule_spec(path, name, value, jobs, check_schedules)
                 for name, value in schedules_table.items()}
    return Config(path=path, defaults=defaults, runner=runner, jobs=jobs, schedules=schedules)


def _job_spec(path: str, target: str, table: object, defaults: Policy) -> JobSpec:
    """One `[jobs."module:Class"]` entry: a valid target, its methods, its policy overrides."""
    where = ("jobs", target)
    try:
        module, class_name = parse_target(target)
    except NotAllowedError:
        reason = 'invalid target: expected "module:Class" (quote the key: [jobs."pkg.mod:Class"])'
        raise _config_error(path, where, reason) from None
    values = _checked_table(path, where, table, _JOB_CHECKS)
    if "methods" not in values:
        raise _config_error(path, (*where, "methods"), "missing (a non-empty list of methods)")
    methods = _methods(values.pop("methods"))
    policy = replace(defaults, **values)  # type: ignore[arg-type]
    return JobSpec(target, module, class_name, methods, policy)


def _methods(value: object) -> tuple[str, ...]:
    """A non-empty list of public method names, duplicates dropped, order kept."""
    if not isinstance(value, list | tuple) or not value:
        raise _Invalid(f"expected a non-empty list of method names, got {_show(value)}")
    for item in value:
        if not _is_name(item):
            raise _Invalid(f"{_show(item)} is not a valid method name")
        if item.startswith("_"):
            raise _Invalid(f"{item!r} begins with '_': private methods are never callable")
    return tuple(dict.fromkeys(value))


_JOB_CHECKS: dict[str, Callable[[object], object]] = {**_POLICY_CHECKS, "methods": _methods}

_SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
OVERLAPS = ("skip", "allow")


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string, got {_show(value)}")
    return value


def _schedule_params(value: object) -> object:
    if not isinstance(value, list | dict):
        raise _Invalid(f"expected a list or a table, got {_show(value)}")
    try:
        bounds.check_params(value)
    except UsageError as exc:
        raise _Invalid(str(exc)) from None
    return value


def _priority(value: object) -> int:
    try:
        return bounds.check_int(value, what="value")
    except UsageError:
        raise _Invalid(f"expected an integer, got {_shown(value)}") from None


def _every(value: object) -> float:
    seconds = _positive_seconds(value)
    if seconds < 1:
        raise _Invalid(f"expected at least 1 second, got {_shown(value)}")
    return seconds


_SCHEDULE_CHECKS: dict[str, Callable[[object], object]] = {
    "target": _text,
    "method": _text,
    "params": _schedule_params,
    "cron": _text,
    "every": _every,
    "timezone": _text,
    "overlap": _one_of(*OVERLAPS),
    "enabled": _boolean,
    "priority": _priority,
    **{key: _POLICY_CHECKS[key] for key in ("queue", "max_attempts", "retry_delay", "timeout")},
}


def _schedule_spec(path: str, name: str, table: object, jobs: Mapping[str, JobSpec],
                   check_timing: bool = True) -> ScheduleSpec:
    """One ``[schedules.NAME]`` entry, checked against the allowlist and the cron parser."""
    where = ("schedules", name)
    if not _SCHEDULE_NAME.fullmatch(name):
        raise _config_error(path, where, "invalid schedule name: use letters, digits, '_', '-', '.'"
                            " (at most 64)")
    values = _checked_table(path, where, table, _SCHEDULE_CHECKS)
    for key in ("target", "method"):
        if key not in values:
            raise _config_error(path, (*where, key), "missing")
    target, method = str(values.pop("target")), str(values.pop("method"))
    spec = jobs.get(target)
    if spec is None:
        raise _config_error(path, (*where, "target"), f"{target!r} is not in the allowlist [jobs]")
    if method not in spec.methods:
        raise _config_error(path, (*where, "method"),
                            f"{method!r} is not an allowed method of {target!r}"
                            f" (allowed: {', '.join(spec.methods)})")
    cron_expr, every = values.pop("cron", None), values.pop("every", None)
    if (cron_expr is None) == (every is None):
        raise _config_error(path, where, "set exactly one of cron and every")
    timezone = str(values.pop("timezone", "UTC"))
    if check_timing:
        from bgrunner import cron  # the cron parser is only needed where schedules are

        for key, expr, zone in (("timezone", None, timezone),
                                ("cron", None if cron_expr is None else str(cron_expr), "UTC")):
            try:
                cron.check(expr, zone)
            except ValueError as exc:
                raise _config_error(path, (*where, key), str(exc)) from None
    overrides = {k: values.pop(k) for k in ("queue", "max_attempts", "retry_delay", "timeout") if k in values}
    return ScheduleSpec(
        name=name, target=target, method=method,
        params=values.pop("params", []),  # type: ignore[arg-type]
        cron=None if cron_expr is None else str(cron_expr),
        every=None if every is None else float(every),  # type: ignore[arg-type]
        timezone=timezone, overlap=str(values.pop("overlap", "skip")),
        enabled=bool(values.pop("enabled", True)), priority=int(values.pop("priority", 0)),  # type: ignore[call-overload]
        policy=replace(spec.policy, **overrides),  # type: ignore[arg-type]
    )


def _checked_table(
    path: str,
    where: tuple[str, ...],
    table: object,
    checks: Mapping[str, Callable[[object], object]],
) -> dict[str, object]:
    """Check every key of a table against its checkers; unknown keys are errors (typos)."""
    if not isinstance(table, dict):
        raise _config_error(path, where, f"expected a table, got {_show(table)}")
    _reject_unknown(path, where, table, tuple(checks))
    values: dict[str, object] = {}
    for key, value in table.items():
        try:
            values[key] = checks[key](value)
        except _Invalid as exc:
            raise _config_error(path, (*where, key, *exc.subkeys), exc.reason) from None
    return values


def _reject_unknown(
    path: str, where: tuple[str, ...], table: Mapping[str, object], known: tuple[str, ...]
) -> None:
    """A misspelt key silently ignored would be worse than an error; suggest the near one."""
    for key in table:
        if key not in known:
            import difflib  # only on the error path

            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hint = f"did you mean {close[0]!r}?"
            else:
                hint = "expected one of: " + ", ".join(known)
            raise _config_error(path, (*where, key), f"unknown key ({hint})")


def _config_error(path: str, where: tuple[str, ...], reason: str) -> ConfigError:
    """`FILE: key.path: reason`, the one format of every config error."""
    return ConfigError(f"{path}: {_key_path(*where)}: {reason}")
