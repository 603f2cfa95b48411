"""Benchmarks, collected from every plugin's ``register_benchmarks`` hook.

``get(name)`` returns a benchmark object (see :mod:`aflowctl.benchmarks.base` for the
contract); ``names()`` lists the registered ones. Built-ins (gsm8k, math, humaneval,
mbpp, hotpotqa, drop) register through the same hook as plugins
(:mod:`aflowctl.benchmarks.builtin`). The first benchmark registered under a name
wins; a plugin whose hook raises is recorded in :func:`hook_errors` and does not hide
the others.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from aflowctl.errors import BenchmarkError, PluginError

__all__ = ["get", "names", "all_benchmarks", "hook_errors"]

_lock = threading.RLock()
_benchmarks: Optional[dict[str, Any]] = None
_hook_errors: dict[str, str] = {}


def _reset() -> None:
    """Forget the collected benchmarks (called by :func:`aflowctl.plugins.reset`)."""
    global _benchmarks
    with _lock:
        _benchmarks = None
        _hook_errors.clear()


def _check(benchmark: Any, plugin: str) -> str:
    name = getattr(benchmark, "name", None)
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
        raise PluginError(
            f"plugin {plugin} registered a benchmark without a valid name ({name!r})",
            "give the benchmark a `name` attribute: a short lower-case word",
        )
    for attr in ("load", "score", "inputs"):
        if not callable(getattr(benchmark, attr, None)):
            raise PluginError(
                f"plugin {plugin} registered benchmark {name!r} without a {attr}() method",
                "see aflowctl.benchmarks.base for the benchmark contract",
            )
    return name


def _collect() -> dict[str, Any]:
    from aflowctl.plugins import collect_registrations

    found, _, errors = collect_registrations(
        "register_benchmarks", lambda plugin, benchmark: (_check(benchmark, plugin), benchmark), "benchmark"
    )
    _hook_errors.clear()
    _hook_errors.update(errors)
    return found


def all_benchmarks() -> dict[str, Any]:
    """All registered benchmarks by name (collected once per process, thread-safe)."""
    global _benchmarks
    with _lock:
        if _benchmarks is None:
            _benchmarks = _collect()
        return _benchmarks


def names() -> list[str]:
    return sorted(all_benchmarks())


def get(name: str) -> Any:
    """The benchmark called ``name``; an unknown name lists the ones that exist."""
    found = all_benchmarks()
    key = str(name).strip().lower()
    if key in found:
        return found[key]
    if name in found:
        return found[name]
    available = ", ".join(sorted(found)) or "none"
    raise BenchmarkError(
        f"unknown benchmark {name!r}",
        f"available: {available} (add one with a plugin, see docs/benchmarks.md)",
    )


def hook_errors() -> dict[str, str]:
    all_benchmarks()
    return dict(_hook_errors)
