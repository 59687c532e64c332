"""The allowlist: TOML validation at load time and the check() gate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bgrunner.allowlist import (
    Config,
    Policy,
    RunnerSettings,
    load_config,
    parse_config,
    parse_target,
    target_of,
)
from bgrunner.errors import ConfigError, NotAllowedError, UsageError

CFG = "config/allowed_jobs.toml"

CONTRACT_EXAMPLE = """
[defaults]
max_attempts = 3
retry_delay = 5
backoff = "fixed"
timeout = 0

[defaults.retry_on]
"ConnectionError" = 5
"ValueError" = 1

[jobs."examples.jobs:SampleJob"]
methods = ["process", "handle"]
max_attempts = 5
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONTRACT_EXAMPLE, CFG)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, CFG)
    return str(info.value)


def test_contract_example_loads_with_per_class_override(config: Config) -> None:
    """A per-class key overrides [defaults]; keys it does not set are inherited."""
    spec = config.jobs["examples.jobs:SampleJob"]
    assert spec.module == "examples.jobs" and spec.class_name == "SampleJob"
    assert spec.methods == ("process", "handle")
    assert spec.policy.max_attempts == 5
    assert spec.policy.retry_delay == 5.0 and isinstance(spec.policy.retry_delay, float)
    assert dict(spec.policy.retry_on) == {"ConnectionError": 5, "ValueError": 1}
    assert config.defaults.max_attempts == 3


def test_job_retry_on_replaces_the_defaults_table() -> None:
    """A job's own retry_on table replaces [defaults.retry_on] instead of merging with it."""
    text = CONTRACT_EXAMPLE + '\n[jobs."examples.jobs:SampleJob".retry_on]\n"KeyError" = 2\n'
    spec = parse_config(text, CFG).jobs["examples.jobs:SampleJob"]
    assert dict(spec.policy.retry_on) == {"KeyError": 2}


def test_empty_config_allows_nothing_and_uses_builtin_defaults() -> None:
    """With no [jobs] table nothing may run, and the policy falls back to the built-in defaults."""
    config = parse_config("", CFG)
    assert config.defaults == Policy()
    assert config.runner == RunnerSettings()
    with pytest.raises(NotAllowedError, match="not in the allowlist"):
        config.check("examples.jobs:SampleJob", "process")


def test_check_returns_the_spec_of_an_allowed_method(config: Config) -> None:
    """An allowed target and listed method give back that class's spec."""
    spec = config.check("examples.jobs:SampleJob", "handle")
    assert spec.target == "examples.jobs:SampleJob"


def test_check_rejects_a_target_not_listed(config: Config) -> None:
    """An unlisted target is refused with a message naming the target and the config file."""
    with pytest.raises(NotAllowedError) as info:
        config.check("os:system", "handle")
    assert str(info.value) == f"target 'os:system' is not in the allowlist ({CFG})"


def test_check_rejects_a_method_not_listed(config: Config) -> None:
    """A method that is not listed is refused, and the message lists the allowed ones."""
    with pytest.raises(NotAllowedError) as info:
        config.check("examples.jobs:SampleJob", "foo")
    expected = "method 'foo' of 'examples.jobs:SampleJob' is not allowed (allowed: process, handle)"
    assert str(info.value) == expected


@pytest.mark.parametrize("method", ["_x", "__init__", "__class__", "_process"])
def test_check_rejects_private_methods(config: Config, method: str) -> None:
    """A method beginning with '_' is never callable, on any target."""
    with pytest.raises(NotAllowedError) as info:
        config.check("examples.jobs:SampleJob", method)
    assert str(info.value) == f"method {method!r} is private and never callable"


@pytest.mark.parametrize("method", ["", "a.b", "process()", "class", 3])
def test_check_rejects_method_names_that_are_not_identifiers(config: Config, method: str) -> None:
    """Method names that are not identifiers are refused before any lookup."""
    with pytest.raises(NotAllowedError, match="invalid method name"):
        config.check("examples.jobs:SampleJob", method)


def test_check_rejects_an_invalid_target_before_lookup(config: Config) -> None:
    """A syntactically invalid target gets a syntax message, not an 'not in the allowlist' one."""
    with pytest.raises(NotAllowedError) as info:
        config.check("../x:Y", "process")
    assert str(info.value) == "invalid target '../x:Y': expected module:Class"


def test_check_never_imports_the_target_module() -> None:
    """Loading the allowlist and checking a listed target imports nothing of the job."""
    module = "bgrunner_unit_never_imported_mod"
    config = parse_config(f'[jobs."{module}:Job"]\nmethods = ["run"]\n', CFG)
    config.check(f"{module}:Job", "run")
    assert module not in sys.modules


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("a.b:C", ("a.b", "C")),
        ("examples.jobs:SampleJob", ("examples.jobs", "SampleJob")),
        ("m:_Private", ("m", "_Private")),
    ],
)
def test_parse_target_splits_module_and_class(target: str, expected: tuple[str, str]) -> None:
    """A well-formed target splits at the colon into module path and class name."""
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "",
        "a.b",
        "a:b:C",
        "../x:Y",
        "a..b:C",
        ".a:C",
        "a:",
        ":C",
        "a:B.C",
        "class:C",
        "a :C",
        "a:C ",
    ],
)
def test_parse_target_rejects_malformed_targets(target: str) -> None:
    """Anything but dotted identifiers, one colon and a class identifier is refused."""
    with pytest.raises(NotAllowedError, match="expected module:Class"):
        parse_target(target)


def test_target_of_names_a_class_as_the_allowlist_does() -> None:
    """target_of gives `module:QualName`, which parse_target accepts for a top-level class."""
    assert target_of(Path) == "pathlib:Path"
    assert parse_target(target_of(Config)) == ("bgrunner.allowlist", "Config")


def test_error_names_file_key_and_reason() -> None:
    """A bad value is reported on one line with the file, the full key path and the reason."""
    text = '[jobs."examples.jobs:SampleJob"]\nmethods = ["process"]\nmax_attempts = "three"\n'
    assert config_error(text) == (
        'config/allowed_jobs.toml: jobs."examples.jobs:SampleJob".max_attempts: '
        "expected an integer >= 1, got 'three'"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[defaults]\nmax_attempts = true", "defaults.max_attempts: expected an integer >= 1"),
        ("[defaults]\nmax_attempts = 0", "defaults.max_attempts: expected an integer >= 1"),
        ("[defaults]\nmax_attempts = 2.0", "defaults.max_attempts: expected an integer >= 1"),
        ("[defaults]\nretry_delay = -1", "defaults.retry_delay: expected a number of seconds"),
        ("[defaults]\ntimeout = true", "defaults.timeout: expected a number of seconds"),
        ("[defaults]\ntimeout = inf", "defaults.timeout: expected a number of seconds"),
        ("[defaults]\nmax_retry_delay = '9'", "defaults.max_retry_delay: expected a number"),
        ("[defaults]\nbackoff = 'linear'", "defaults.backoff: expected one of 'fixed', 'exp"),
        ("[defaults]\nmax_attemps = 2", "defaults.max_attemps: unknown key (did you mean 'm"),
        ("[defualts]\nmax_attempts = 2", "defualts: unknown key (did you mean 'defaults'?)"),
        ("defaults = 3", "defaults: expected a table, got 3"),
        ("[defaults.retry_on]\nValueError = 0", "defaults.retry_on.ValueError: expected an int"),
        ('[defaults.retry_on]\n"not a name" = 2', 'defaults.retry_on."not a name": expected an'),
        ("[runner]\nlaunch = 'thread'", "runner.launch: expected one of 'spawn', 'fork'"),
        ("[runner]\npreload_jobs = 1", "runner.preload_jobs: expected true or false, got 1"),
        ("[runner]\npreload_jobs = 'yes'", "runner.preload_jobs: expected true or false"),
        ("[runner]\nmax_concurrent = -1", "runner.max_concurrent: expected an integer >= 0"),
        ("[runner]\nmax_attempts = 3", "runner.max_attempts: unknown key"),
        ("[runner]\nresult_max_bytes = 0", "runner.result_max_bytes: expected an integer >= 1"),
        ("jobs = []", "jobs: expected a table, got []"),
        ('[jobs."a:B"]\nmax_attempts = 2', 'jobs."a:B".methods: missing'),
        ('[jobs."a:B"]\nmethods = []', 'jobs."a:B".methods: expected a non-empty list'),
        ('[jobs."a:B"]\nmethods = "run"', 'jobs."a:B".methods: expected a non-empty list'),
        ('[jobs."a:B"]\nmethods = ["a-b"]', "jobs.\"a:B\".methods: 'a-b' is not a valid"),
        ('[jobs."a:B"]\nmethods = [1]', 'jobs."a:B".methods: 1 is not a valid method name'),
        ('[jobs."a:B"]\nmethods = ["_secret"]', "jobs.\"a:B\".methods: '_secret' begins with"),
        ('[jobs."a:B"]\nmethods = ["__init__"]', "jobs.\"a:B\".methods: '__init__' begins"),
        ('[jobs."a:B"]\nmethods = ["run"]\nmethod = ["x"]', 'jobs."a:B".method: unknown key'),
        ('[jobs."../x:Y"]\nmethods = ["run"]', 'jobs."../x:Y": invalid target'),
        ('[jobs.examples]\nmethods = ["run"]', "jobs.examples: invalid target"),
        ('[jobs]\n"a:B" = ["run"]', "jobs.\"a:B\": expected a table, got ['run']"),
    ],
)
def test_invalid_values_are_config_errors(text: str, expected: str) -> None:
    """Each kind of invalid value or unknown key is refused at load with its key path."""
    message = config_error(text)
    assert message.startswith(f"{CFG}: {expected}")
    assert "\n" not in message


def test_toml_syntax_error_shows_line_and_column() -> None:
    """A TOML syntax error keeps tomllib's message, which gives the line and column."""
    message = config_error("[defaults]\nmax_attempts = = 3\n")
    assert message.startswith(f"{CFG}: invalid TOML: ")
    assert "line 2" in message and "column" in message


def test_delays_accept_int_or_float_and_are_stored_as_float() -> None:
    """Seconds may be written as an int or a float; the policy always holds floats."""
    config = parse_config("[defaults]\nretry_delay = 2\ntimeout = 1.5\nmax_retry_delay = 0\n", CFG)
    assert config.defaults.retry_delay == 2.0 and type(config.defaults.retry_delay) is float
    assert config.defaults.timeout == 1.5
    assert config.defaults.max_retry_delay == 0.0


def test_duplicate_methods_are_kept_once_in_order() -> None:
    """Listing a method twice is harmless: it appears once, in its first position."""
    config = parse_config('[jobs."a:B"]\nmethods = ["run", "stop", "run"]\n', CFG)
    assert config.jobs["a:B"].methods == ("run", "stop")


def test_runner_table_is_read_and_validated() -> None:
    """The optional [runner] table sets the runner settings; unset keys keep their defaults."""
    config = parse_config('[runner]\nmax_concurrent = 4\nlaunch = "fork"\ncancel_grace = 1\n', CFG)
    assert config.runner.max_concurrent == 4 and config.runner.cap == 4
    assert config.runner.launch == "fork"
    assert config.runner.cancel_grace == 1.0
    assert config.runner.preload_jobs is False
    assert parse_config("[runner]\npreload_jobs = true\n", CFG).runner.preload_jobs is True
    assert config.runner.log_backups == RunnerSettings().log_backups


def test_runner_cap_defaults_to_twice_the_cpus() -> None:
    """max_concurrent = 0 means two jobs per CPU."""
    assert RunnerSettings().cap == 2 * (os.cpu_count() or 1)


def test_loaded_config_cannot_be_widened() -> None:
    """The jobs table and retry_on of a loaded config are read-only."""
    config = parse_config(CONTRACT_EXAMPLE, CFG)
    with pytest.raises(TypeError):
        config.jobs["os:system"] = config.jobs["examples.jobs:SampleJob"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.defaults.retry_on["Exception"] = 9  # type: ignore[index]


def test_with_overrides_replaces_only_given_values() -> None:
    """None keeps the allowlist's value; a given value replaces it; the original is unchanged."""
    base = Policy(max_attempts=3, retry_delay=5.0, timeout=10.0)
    changed = base.with_overrides(max_attempts=1, timeout=0)
    assert (changed.max_attempts, changed.retry_delay, changed.timeout) == (1, 5.0, 0.0)
    assert base.max_attempts == 3
    assert base.with_overrides() == base


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"max_attempts": 0}, "max_attempts: expected an integer >= 1, got 0"),
        ({"max_attempts": True}, "max_attempts: expected an integer >= 1, got True"),
        ({"retry_delay": -0.5}, "retry_delay: expected a number of seconds >= 0, got -0.5"),
        ({"timeout": "30"}, "timeout: expected a number of seconds >= 0, got '30'"),
    ],
)
def test_with_overrides_validates_like_the_config(
    overrides: dict[str, object], expected: str
) -> None:
    """Invalid overrides from the API or CLI are usage errors with the same wording."""
    with pytest.raises(UsageError) as info:
        Policy().with_overrides(**overrides)  # type: ignore[arg-type]
    assert str(info.value) == expected


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    """load_config reads the TOML file and remembers its path for messages."""
    path = tmp_path / "allowed_jobs.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    config = load_config(path)
    assert config.path == str(path)
    assert "examples.jobs:SampleJob" in config.jobs


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing file says which path was tried and how to point at another."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path} (set BGRUNNER_CONFIG or --config)"


def test_load_config_unreadable_path_names_the_file(tmp_path: Path) -> None:
    """A path that cannot be read (here a directory) is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read: "):
        load_config(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_load_config_permission_denied(tmp_path: Path) -> None:
    """A file without read permission is a ConfigError naming the file and the reason."""
    path = tmp_path / "secret.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        load_config(path)


def test_load_config_rejects_non_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError rather than a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[defaults]\nbackoff = "fix\xe9d"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)
