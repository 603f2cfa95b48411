"""Benchmarks, collected from every plugin's ``register_benchmarks`` hook by one
:class:`aflowctl.plugins.Registry`.

``get(name)`` returns a benchmark object (the contract is
:class:`aflowctl.plugins.Benchmark`; :mod:`aflowctl.benchmarks.base` is a base class
for it); ``names()`` lists the registered ones. Built-ins (gsm8k, math, humaneval,
mbpp, hotpotqa, drop) register through the same hook as plugins
(:mod:`aflowctl.benchmarks.builtin`). The first benchmark registered under a name
wins; a plugin whose hook raises, or registers an object that misses part of the
contract, is recorded in :func:`hook_errors` and does not hide the others.
"""

from __future__ import annotations

from typing import Any

from aflowctl.errors import BenchmarkError
from aflowctl.plugins import Benchmark, Registry, check_object

__all__ = ["get", "names", "all_benchmarks", "hook_errors"]


#: methods :class:`aflowctl.benchmarks.base.Benchmark` leaves to subclasses (they raise NotImplementedError)
_SUBCLASS_METHODS = ("inputs", "expected", "score")


def _unimplemented(benchmark: Any) -> tuple[str, ...]:
    """Methods left as the base class's stubs."""
    from aflowctl.benchmarks import base

    return tuple(f"{m}()" for m in _SUBCLASS_METHODS if getattr(type(benchmark), m, None) is getattr(base.Benchmark, m))


def _accept(plugin: str, benchmark: Any) -> tuple[str, Any]:
    name = check_object(
        plugin,
        "benchmark",
        benchmark,
        Benchmark,
        unimplemented=_unimplemented(benchmark),
        name_hint="give the benchmark a `name` attribute: a short lower-case word",
    )
    return name, benchmark


REGISTRY: Registry[Benchmark] = Registry(
    "register_benchmarks",
    "benchmark",
    accept=_accept,
    error=BenchmarkError,
    hint="use one of those names, or add one with a plugin (see docs/plugins.md and docs/benchmarks.md)",
    key=lambda name: str(name).strip().lower(),
)


def all_benchmarks() -> dict[str, Any]:
    """All registered benchmarks by name (collected once per process, thread-safe)."""
    return REGISTRY.all()


def names() -> list[str]:
    return sorted(REGISTRY.names())


def get(name: str) -> Any:
    """The benchmark called ``name``; an unknown name lists the ones that exist."""
    return REGISTRY.get(name)


def hook_errors() -> dict[str, str]:
    return REGISTRY.hook_errors()
