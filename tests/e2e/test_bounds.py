"""The limits of input and output (CONTRACT §14) through the real entry points, as subprocesses.

Out-of-range input is one line on stderr and exit 2, nothing stored; what a job
hands back is stored so that every reader can encode it (strict JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ALLOWLIST, ROOT, Project

UNRULY = ALLOWLIST + """
[jobs."tests.bounds_fixtures:Unruly"]
methods = ["nan_result", "nan_progress", "huge_error", "huge_result", "echo", "whoami"]
"""

#: The deepest a command line can carry: one argument is at most 128 KiB on Linux.
DEEP = "[" * 100_000
DEEP_CLOSED = "[" * 60_000 + "]" * 60_000


@pytest.fixture
def unruly(sqlite_project: Project) -> Project:
    sqlite_project.write_config(UNRULY)
    return sqlite_project


def assert_usage_error(r: object, *, stored: Project | None = None) -> None:
    """Exit 2, one line on stderr naming the problem, no traceback; nothing recorded."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # type: ignore[attr-defined]
    err = r.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    assert len(err) < 600, err[:600]
    if stored is not None:
        assert stored.jobs() == []


def strict(record: object) -> str:
    """The record as strict JSON (what ``GET /api/jobs`` must manage): NaN or infinity raise."""
    return json.dumps(record, allow_nan=False)


BAD_JSON = [
    pytest.param("[NaN]", id="nan"),
    pytest.param('{"sentinel": Infinity}', id="infinity"),
    pytest.param("[-Infinity]", id="-infinity"),
    pytest.param("[1e400]", id="float-overflow"),
    pytest.param("[9223372036854775808]", id="int-2**63"),
    pytest.param("[-9223372036854775809]", id="int-below-64-bits"),
    pytest.param("[" + "9" * 5000 + "]", id="int-5000-digits"),
    pytest.param(DEEP, id="deep-100000"),
    pytest.param(DEEP_CLOSED, id="deep-60000-closed"),
    pytest.param("[" * 101 + "]" * 101, id="deep-101"),
    pytest.param('["\\ud800"]', id="lone-surrogate"),
]


@pytest.mark.parametrize("text", BAD_JSON)
def test_run_job_json_out_of_bounds_is_a_usage_error(unruly: Project, text: str) -> None:
    """``run_job.py … --json`` (the foreground path) refuses NaN, infinity, 64-bit overflow,
    nesting past 100 and params over 1 MiB with exit 2 and one line; nothing is stored."""
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "echo", "--json", text)
    assert_usage_error(r, stored=unruly)


@pytest.mark.parametrize("text", BAD_JSON)
def test_submit_json_out_of_bounds_is_a_usage_error(unruly: Project, text: str) -> None:
    """``bgrunner submit --json`` refuses the same input the same way."""
    r = unruly.cli("submit", "tests.bounds_fixtures:Unruly", "echo", "--json", text)
    assert_usage_error(r, stored=unruly)


@pytest.mark.parametrize("n, ratio", [("1", "nan"), ("1", "inf"), ("1", "-1e999"), ("9" * 30, "1.5")])
def test_comma_params_converting_to_nan_or_overflow_are_usage_errors(unruly: Project, n: str,
                                                                      ratio: str) -> None:
    """A comma param that would convert to NaN, infinity (float) or past 64 bits (int) is exit 2."""
    r = unruly.run_job("tests.fixtures:Probe", "typed", f"{n},{ratio},yes")
    assert_usage_error(r, stored=unruly)


RUN_JOB_FLAGS = [
    ["--timeout", "1e300"], ["--timeout", "inf"], ["--timeout", "nan"], ["--timeout", "31536001"],
    ["--retry-delay", "nan"], ["--retry-delay", "1e300"], ["--retry-delay", "-inf"],
    ["--max-attempts", "99999999999999999999"], ["--max-attempts", "0"],
]


@pytest.mark.parametrize("flags", RUN_JOB_FLAGS, ids=" ".join)
def test_run_job_flags_out_of_bounds(unruly: Project, flags: list[str]) -> None:
    """``run_job.py`` policy flags: finite, within a year, 64-bit; else exit 2, nothing stored."""
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "echo", *flags)
    assert_usage_error(r, stored=unruly)


def test_run_job_huge_job_id_is_a_usage_error(unruly: Project) -> None:
    """``--job-id`` past 64 bits (no store holds it) is exit 2, not an OverflowError."""
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "echo", "--job-id", "9" * 30)
    assert_usage_error(r)


SUBMIT_FLAGS = [
    ["--delay", "1e300"], ["--delay", "inf"], ["--delay", "nan"], ["--delay", "315360001"],
    ["--timeout", "1e300"], ["--retry-delay", "nan"], ["--retry-delay", "inf"],
    ["--priority", str(2**63)], ["--max-attempts", str(2**64)],
]


@pytest.mark.parametrize("flags", SUBMIT_FLAGS, ids=" ".join)
def test_submit_flags_out_of_bounds(unruly: Project, flags: list[str]) -> None:
    """``bgrunner submit`` flags out of range: exit 2, one line, nothing stored."""
    r = unruly.cli("submit", "tests.bounds_fixtures:Unruly", "echo", *flags)
    assert_usage_error(r, stored=unruly)


@pytest.mark.parametrize("args", [["list", "--limit", "9" * 25], ["prune", "--older-than", "nan"],
                                  ["worker", "--concurrency", "9" * 25]], ids=" ".join)
def test_other_cli_numbers_out_of_bounds(unruly: Project, args: list[str]) -> None:
    """Other numeric flags past 64 bits or NaN are a usage error, not a driver's OverflowError."""
    assert_usage_error(unruly.cli(*args))


@pytest.mark.parametrize("line", [
    "timeout = inf", "timeout = nan", "timeout = 1e300", "retry_delay = nan",
    "retry_delay = inf", "max_retry_delay = 1e300", "max_attempts = 99999999999999999999",
    "max_attempts = 1" + "0" * 5000,
])
def test_allowlist_values_out_of_bounds_are_config_errors(unruly: Project, line: str) -> None:
    """TOML allows inf, nan and huge ints: each is a one-line config error (exit 2), no job runs."""
    key = line.split(" =")[0]
    unruly.write_config(UNRULY.replace("[defaults]\n", f"[defaults]\n{line}\n").replace(
        f"\n{key} = 0\n", "\n").replace(f"\n{key} = 1\n", "\n"))
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "echo")
    assert_usage_error(r, stored=unruly)
    assert "allowed_jobs.toml" in r.stderr


def test_api_refuses_out_of_bounds_values(unruly: Project) -> None:
    """The Python API: NaN, infinity, huge ints in params or numbers are a UsageError, nothing stored."""
    r = unruly.python("""
        import math
        import bgrunner
        from bgrunner import api
        from bgrunner.errors import UsageError
        api.configure(autostart=False)
        T = "tests.bounds_fixtures:Unruly"
        deep = []
        for _ in range(100_000):
            deep = [deep]
        cases = [dict(params=[math.nan]), dict(params={"v": [math.inf]}), dict(params=[2**63]),
                 dict(params=[deep]), dict(params=["x" * (1 << 20)]), dict(params=[object()]),
                 dict(params={1.5: 2}), dict(delay=math.inf), dict(delay=1e300),
                 dict(timeout=math.nan), dict(retry_delay=1e300), dict(priority=2**64),
                 dict(max_attempts=2**64)]
        for kw in cases:
            try:
                api.run_background_job(T, "echo", **{"params": [], **kw})
            except UsageError as exc:
                assert "\\n" not in str(exc) and len(str(exc)) < 300, str(exc)
            else:
                raise SystemExit(f"accepted {list(kw)}")
        for call in (lambda: api.wait_for(1, timeout=math.nan), lambda: api.list_jobs(limit=2**70)):
            try:
                call()
            except UsageError:
                pass
            else:
                raise SystemExit("accepted")
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    assert unruly.jobs() == []


def _cli_json(project: Project, *args: str) -> object:
    r = project.cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout, parse_constant=lambda name: pytest.fail(f"{name} in output"))


def test_nan_result_is_stored_as_null(unruly: Project) -> None:
    """A return value holding NaN/infinity stores null there (an int past 64 bits as its digits);
    every reader encodes the record as strict JSON."""
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "nan_result")
    assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert job.result == {"nan": None, "inf": [None, None], "big": str(2**70), "ok": 1}
    strict(job.to_dict())
    _cli_json(unruly, "status", str(job.id))
    _cli_json(unruly, "list")


def test_nan_progress_is_stored_as_null_and_message_clipped(unruly: Project) -> None:
    """Progress reported as NaN/inf stores null; its message is clipped to 1 KiB (attempt process)."""
    from bgrunner import bounds

    r = unruly.run_job("tests.bounds_fixtures:Unruly", "nan_progress")
    assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert job.progress["done"] is None and job.progress["total"] is None
    assert len(job.progress["message"]) <= bounds.MAX_PROGRESS_MESSAGE_CHARS
    assert "[cut " in job.progress["message"]
    strict(job.to_dict())
    _cli_json(unruly, "status", str(job.id))


def test_nan_progress_inline_in_a_worker(unruly: Project) -> None:
    """The same in a queued job run inline (no attempt process) by a worker."""
    unruly.extra_env["BGRUNNER_AUTOSTART"] = "0"
    r = unruly.cli("submit", "tests.bounds_fixtures:Unruly", "nan_progress")
    assert r.returncode == 0, r.stderr
    r = unruly.cli("worker", "--burst", timeout=120)
    assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert job.status == "completed", (job.status, job.error)
    assert job.progress["done"] is None and len(job.progress["message"]) <= 1024
    strict(job.to_dict())


def test_huge_error_and_traceback_are_clipped(unruly: Project) -> None:
    """A 1 MB exception message is stored clipped: error ≤ 4 KiB, traceback ≤ 64 KiB, marked."""
    from bgrunner import bounds

    r = unruly.run_job("tests.bounds_fixtures:Unruly", "huge_error")
    assert r.returncode == 1
    [job] = unruly.jobs()
    assert job.status == "failed"
    assert job.error.startswith("ValueError: eee") and "[cut " in job.error
    assert len(job.error) <= bounds.MAX_ERROR_CHARS
    assert len(job.traceback) <= bounds.MAX_TRACEBACK_CHARS and "[cut " in job.traceback
    assert len(r.stderr) < 10_000


def test_huge_result_is_not_stored_and_says_why(unruly: Project) -> None:
    """A return value over the 1 MiB ceiling is not stored, whatever result_max_bytes says;
    the job completes and its error field says why (a result_max_bytes past 1 MiB is refused)."""
    unruly.write_config(UNRULY.replace("[runner]\n", "[runner]\nresult_max_bytes = 1048576\n"))
    r = unruly.run_job("tests.bounds_fixtures:Unruly", "huge_result")
    assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert job.result is None and "exceeds result_max_bytes (1048576)" in job.error
    unruly.write_config(UNRULY.replace("[runner]\n", "[runner]\nresult_max_bytes = 10000000\n"))
    assert_usage_error(unruly.run_job("tests.bounds_fixtures:Unruly", "huge_result"))


PLANTED = '''
class Unruly:
    def whoami(self):
        open(__file__ + ".ran", "w").close()
        return "planted"
'''


def _plant(folder: Path) -> Path:
    """A ``tests.bounds_fixtures`` module in *folder*, shadowing the project's."""
    pkg = folder / "tests"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bounds_fixtures.py").write_text(PLANTED)
    return pkg / "bounds_fixtures.py"


@pytest.mark.parametrize("launch", ["foreground", "spawn", "fork"])
def test_import_root_beats_a_planted_module_in_the_cwd(unruly: Project, tmp_path: Path,
                                                        launch: str) -> None:
    """With ``[runner] import_root``, a job started from another folder imports the project's
    module, not one planted in that folder under the same name (foreground, spawn, fork)."""
    import subprocess

    elsewhere = tmp_path / "elsewhere"
    planted = _plant(elsewhere)
    unruly.write_config(UNRULY.replace(
        "[runner]\n", f"[runner]\nimport_root = {json.dumps(str(ROOT))}\nlaunch = "
        f"{json.dumps('fork' if launch == 'fork' else 'spawn')}\n"))
    env = {**unruly.env, "BGRUNNER_AUTOSTART": "0"}
    if launch == "foreground":
        command = [sys.executable, str(ROOT / "run_job.py"), "tests.bounds_fixtures:Unruly", "whoami"]
    else:
        command = [sys.executable, "-m", "bgrunner", "submit", "tests.bounds_fixtures:Unruly", "whoami"]
    r = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if launch != "foreground":
        r = subprocess.run([sys.executable, "-m", "bgrunner", "worker", "--burst"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert (job.status, job.result) == ("completed", "real"), (job.status, job.error)
    assert not Path(str(planted) + ".ran").exists()


def test_without_import_root_the_cwd_comes_first(unruly: Project, tmp_path: Path) -> None:
    """The default stays as documented: job modules import from the current directory first."""
    import subprocess

    elsewhere = tmp_path / "elsewhere"
    _plant(elsewhere)
    r = subprocess.run([sys.executable, str(ROOT / "run_job.py"), "tests.bounds_fixtures:Unruly",
                        "whoami"], cwd=elsewhere, env=unruly.env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    [job] = unruly.jobs()
    assert job.result == "planted"
