"""Import an allow-listed target. Callers must have checked the allowlist first.

The loader is the only place user code is imported; it is called only with a
``JobSpec`` the allowlist returned, so nothing outside ``[jobs]`` is imported.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from bgrunner.allowlist import JobSpec
from bgrunner.errors import TargetLoadError


def use_import_root(root: str | None) -> None:
    """Make job modules import from *root* (``[runner] import_root``), or from the cwd when None.

    With a root, the current directory is taken off ``sys.path`` and the root put
    first, so a job started from another folder cannot pick up a module planted
    there under the name of one of the project's. Call before ``load_class``;
    it stays so for the process (a job's own lazy imports must resolve alike).
    """
    cwd = os.getcwd()
    if root is None:
        if not sys.path or sys.path[0] not in (cwd, ""):
            sys.path.insert(0, cwd)
        return
    if sys.path[:1] == [root] and cwd not in sys.path[1:] and "" not in sys.path:
        return
    sys.path[:] = [root] + [p for p in sys.path if p not in ("", ".", cwd, root)]
    importlib.invalidate_caches()


def load_class(spec: JobSpec) -> type:
    try:
        module = importlib.import_module(spec.module)
    except BaseException as exc:  # a broken module must not take the runner down
        raise TargetLoadError(f"cannot import module {spec.module!r}: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, spec.class_name, None)
    if not isinstance(cls, type):
        raise TargetLoadError(f"module {spec.module!r} has no class {spec.class_name!r}")
    return cls


def signature_callable(cls: type, method: str) -> Callable[..., Any]:
    """A callable with the method's signature as called on an instance (no ``self``).

    Used to bind and convert params before the first attempt without running
    the class's ``__init__`` in the supervising process.
    """
    # getattr_static without inspect (a forked job process would page in inspect for it):
    # the attribute as stored in the first class of the MRO that defines it.
    raw = next((klass.__dict__[method] for klass in cls.__mro__ if method in klass.__dict__), None)
    if raw is None:
        raise TargetLoadError(f"class {cls.__qualname__!r} has no method {method!r}")
    if isinstance(raw, staticmethod):
        return raw.__func__
    if isinstance(raw, classmethod):
        return types.MethodType(raw.__func__, cls)
    if not callable(raw):
        raise TargetLoadError(f"{cls.__qualname__}.{method} is not callable")
    return types.MethodType(raw, object())


def bound_method(cls: type, method: str) -> Callable[..., Any]:
    """Instantiate the class with no arguments and return the method to call."""
    return getattr(cls(), method)  # type: ignore[no-any-return]
