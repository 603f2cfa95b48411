"""Resolve a worker function from an import string (``"package.module:attr"``).

Rollout workers are plain functions of installed packages, found by name in any
process (a spawned pool worker, a Ray worker on another machine): never by editing
``sys.path``. Errors say which of three things is wrong: the string's format, the
module, or the attribute. An ``ImportError`` raised *inside* a module that exists
(one of its own imports failed) is re-raised unchanged, so its real cause shows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from aflowctl.errors import AflowctlError

WORKER_GROUP = "aflowctl_workers"


class ImportFromStringError(AflowctlError):
    """An import string is malformed, or names a module or attribute that does not exist."""


def import_from_string(target: str) -> Any:
    """Return the object named by ``"module.path:attr.path"``."""
    if not isinstance(target, str):
        return target
    module_str, sep, attrs_str = target.partition(":")
    if not sep or not module_str or not attrs_str or ":" in attrs_str:
        raise ImportFromStringError(
            f'import string {target!r} must be in the format "<module>:<attribute>"',
            "for example aflowctl.rollout.worker:evaluate",
        )
    try:
        module = importlib.import_module(module_str)
    except PermissionError:  # a confined worker reads only code imported before it confined itself
        raise ImportFromStringError(
            f"module {module_str!r} cannot be read in a confined rollout worker",
            "import it before confinement: add it to the pool's preload option, "
            "or register the worker as an aflowctl_workers entry point",
        ) from None
    except ModuleNotFoundError as exc:
        # Only "this module does not exist" becomes our error; a missing import
        # inside an existing module is the module's own bug and is re-raised.
        if exc.name is None or not _is_prefix(exc.name, module_str):
            raise
        raise ImportFromStringError(
            f"could not import module {module_str!r}",
            "check the spelling, and that its package is installed in this environment (pip install ...)",
        ) from None
    obj: Any = module
    try:
        for attr in attrs_str.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        raise ImportFromStringError(
            f"attribute {attrs_str!r} not found in module {module_str!r}",
            "check the name after the colon",
        ) from None
    return obj


def _is_prefix(name: str, module_str: str) -> bool:
    """Whether the missing module ``name`` is ``module_str`` or one of its parents."""
    return module_str == name or module_str.startswith(name + ".")


_registered: dict[str, str] = {}  # entry-point name -> import string, read by preload_workers()


def preload_workers() -> dict[str, str]:
    """Import every ``aflowctl_workers`` entry point now and remember the names: a rollout
    worker calls it before confining itself, after which neither the packages' metadata
    nor the code of packages not yet imported can be read. Returns name -> import string;
    a worker that fails to import is left to the task that names it to report."""
    for ep in entry_points(group=WORKER_GROUP):
        _registered[ep.name] = ep.value
        try:
            import_from_string(ep.value)
        except Exception:  # noqa: BLE001 - reported when a task uses it
            pass
    return dict(_registered)


def _worker_names() -> dict[str, str]:
    return dict(_registered) or {ep.name: ep.value for ep in entry_points(group=WORKER_GROUP)}


def resolve_worker(name: str) -> Callable[[dict], dict]:
    """A worker function from an import string or an ``aflowctl_workers`` entry-point name."""
    if ":" not in name:
        names = _worker_names()
        if name in names:
            return import_from_string(names[name])
        known = sorted(names)
        raise ImportFromStringError(
            f"unknown rollout worker {name!r} (known: {', '.join(known) or 'none'})",
            "give an entry-point name of group aflowctl_workers or an import string module:function",
        )
    fn = import_from_string(name)
    if not callable(fn):
        raise ImportFromStringError(f"{name!r} is not callable", "name a function taking one dict payload")
    return fn
