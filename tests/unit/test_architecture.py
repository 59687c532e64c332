"""The import rule of ARCHITECTURE.md, enforced: which part of bgrunner may import which.

Every ``import`` in the package is read from the source (function-level and
``TYPE_CHECKING`` imports included: a lazy import is still a dependency) and
checked against the table below. When a test here fails, either move the code
to the part where it belongs, or change the rule here *and* in ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bgrunner"

#: Each part of the package: a name and the modules (prefixes) it is made of.
PARTS: dict[str, tuple[str, ...]] = {
    "foundation": ("bgrunner.errors", "bgrunner.model"),
    "core": ("bgrunner.allowlist", "bgrunner.retry", "bgrunner.eventlog", "bgrunner.procs",
             "bgrunner.signals", "bgrunner.output", "bgrunner.cmdline", "bgrunner.context",
             "bgrunner.settle", "bgrunner.safefiles", "bgrunner.bounds", "bgrunner.cron",
             "bgrunner.joblog", "bgrunner.logread"),
    "binding": ("bgrunner.binding",),
    "store": ("bgrunner.store",),
    "launch": ("bgrunner.launch",),
    "job": ("bgrunner.job",),
    "operations": ("bgrunner.jobs", "bgrunner.schedules"),
    "worker": ("bgrunner.worker",),
    "api": ("bgrunner.api",),
    "cli": ("bgrunner.cli", "bgrunner.__main__"),
    "dashboard": ("bgrunner.dashboard",),
    "public": ("bgrunner",),
}

#: The store's interface: the only store modules a part outside ``store/`` may import.
STORE_INTERFACE = ("bgrunner.store.base", "bgrunner.store.factory")
#: The job side's entry points the parent side may name: how a job process is started.
JOB_ENTRIES = ("bgrunner.job.command", "bgrunner.job.forked")

#: part -> the parts (or single modules) it may import, besides itself.
ALLOWED: dict[str, tuple[str, ...]] = {
    "foundation": (),
    "core": ("foundation", "binding", *STORE_INTERFACE),
    "binding": ("foundation", "bgrunner.allowlist", "bgrunner.bounds"),
    "store": ("foundation",),
    "launch": ("foundation", "core", *STORE_INTERFACE, *JOB_ENTRIES),
    "job": ("foundation", "core", "binding", *STORE_INTERFACE, "operations"),
    "operations": ("foundation", "core", "binding", *STORE_INTERFACE, "launch", "bgrunner.job.command"),
    "worker": ("foundation", "core", *STORE_INTERFACE, "operations", "launch"),
    "api": ("foundation", "core", "operations"),
    "cli": ("foundation", "core", "binding", *STORE_INTERFACE, "operations", "worker",
            "bgrunner.dashboard.server"),
    "dashboard": ("foundation", "core", "binding", *STORE_INTERFACE, "operations",
                  "bgrunner.job.reporting"),
    "public": ("foundation", "api", "bgrunner.job.reporting", "bgrunner.joblog"),
}

#: Drivers only the store may import.
DRIVERS = ("sqlite3", "psycopg", "psycopg_pool")
#: Text that reads as SQL (a statement's opening words).
SQL = re.compile(r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The part a module belongs to: the longest prefix that names it."""
    best = ""
    for part, prefixes in PARTS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, found = prefix, part
    if not best:
        raise AssertionError(f"{module} is in no part of the import rule: add it to PARTS")
    return found


def is_module(name: str) -> bool:
    where = PACKAGE.parent / name.replace(".", "/")
    return where.with_suffix(".py").exists() or where.is_dir()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every bgrunner module and driver imported anywhere in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from bgrunner.job import forked`` imports the module bgrunner.job.forked
            modules = [f"{node.module}.{alias.name}" for alias in node.names
                       if is_module(f"{node.module}.{alias.name}")]
            found += [(node.lineno, name) for name in modules]
            if len(modules) < len(node.names):
                found.append((node.lineno, node.module))
    return found


def allowed(importer: str, imported: str) -> bool:
    mine, theirs = part_of(importer), part_of(imported)
    if imported == "bgrunner" or mine == theirs:  # the package itself: ``from bgrunner import x``
        return True
    rules = ALLOWED[mine]
    if theirs == "store":
        return imported in STORE_INTERFACE and imported in rules
    return any(theirs == rule or imported == rule or imported.startswith(rule + ".") for rule in rules)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_part() -> None:
    """The rule names a part for every module of the package (a new folder must be placed)."""
    for path in SOURCES:
        part_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_follow_the_rule(path: Path) -> None:
    """A module imports only the parts its own part may import (ARCHITECTURE.md, 'The import rule')."""
    me = module_name(path)
    broken = [f"{path.relative_to(PACKAGE.parent)}:{line}: {part_of(me)} ({me}) may not import "
              f"{part_of(name)} ({name})"
              for line, name in imports(path)
              if name.startswith("bgrunner") and not allowed(me, name)]
    assert not broken, "\n".join(broken)


def test_store_backends_do_not_import_each_other() -> None:
    """sqlite, postgres and memory share the base and the SQL base, never each other's code."""
    backends = {"bgrunner.store.sqlite", "bgrunner.store.postgres", "bgrunner.store.memory"}
    for path in (PACKAGE / "store").glob("*.py"):
        me = module_name(path)
        for line, name in imports(path):
            assert not (me in backends and name in backends - {me}), f"{me}:{line} imports {name}"


def test_only_the_store_talks_to_a_database() -> None:
    """No module outside store/ imports a database driver or holds SQL text."""
    for path in SOURCES:
        me = module_name(path)
        if part_of(me) == "store":
            continue
        for line, name in imports(path):
            assert name.split(".")[0] not in DRIVERS, f"{me}:{line} imports {name}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.search(node.value), f"{me}:{node.lineno} holds SQL: {node.value[:60]!r}"


def test_package_init_files_are_empty() -> None:
    """Sub-package __init__ files run nothing (a docstring at most): importing one module of a
    folder must not import its siblings, so the job path pays for nothing it does not use."""
    for init in PACKAGE.glob("**/__init__.py"):
        if init.parent == PACKAGE:
            continue  # the package's own __init__ is the public API (lazy)
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert not code, f"{init.relative_to(PACKAGE.parent)}:{code[0].lineno} runs code"


def test_the_rule_catches_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: the job side importing the launch side is refused, the reverse allowed."""
    assert not allowed("bgrunner.job.supervisor", "bgrunner.launch.spawn")
    assert not allowed("bgrunner.dashboard.app", "bgrunner.store.sqlite")
    assert not allowed("bgrunner.store.sqlite", "bgrunner.jobs")
    assert allowed("bgrunner.launch.template", "bgrunner.job.forked")
    assert allowed("bgrunner.jobs", "bgrunner.launch.spawn")
    assert allowed("bgrunner.store.postgres", "bgrunner.store._sql")
