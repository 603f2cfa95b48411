"""Hook specifications of aflowctl's plugin system (pluggy, project name ``aflowctl``).

Plugins are packages that declare an entry point in the group ``aflowctl`` and
implement some of these hooks with ``@aflowctl.hookspecs.hookimpl``. Each hook hands
the plugin a ``register`` callback; the plugin calls it once per object it provides
and never touches a registry itself. Built-in providers, benchmarks and operators
are registered through the very same hooks. What each object must provide is a
protocol in :mod:`aflowctl.plugins` (:class:`~aflowctl.plugins.Provider`,
:class:`~aflowctl.plugins.Benchmark`, :class:`~aflowctl.plugins.Operator`).

Calling convention: every implementation is called, with keyword arguments, in
registration order (built-ins first); the first object registered under a name wins.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

from aflowctl.plugins import Benchmark, Operator, Provider

PROJECT = "aflowctl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterProvider(Protocol):
    """The callback of :func:`register_providers`."""

    def __call__(self, provider: Provider) -> None: ...


class RegisterBenchmark(Protocol):
    """The callback of :func:`register_benchmarks`."""

    def __call__(self, benchmark: Benchmark) -> None: ...


class RegisterOperator(Protocol):
    """The callback of :func:`register_operators`."""

    def __call__(self, operator_class: type[Operator], description: str | dict[str, Any] | None = None) -> None: ...


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Register LLM providers.

    :param register: call ``register(provider)`` for each :class:`~aflowctl.plugins.Provider`:
        an object with a ``name`` (the model-string prefix, e.g. ``"echo"`` for
        ``echo/model``) and an ``async complete(request) -> list[Sample]`` method.
    """


@hookspec
def register_benchmarks(register: RegisterBenchmark) -> None:
    """Register benchmarks.

    :param register: call ``register(benchmark)`` for each :class:`~aflowctl.plugins.Benchmark`:
        ``name``, ``kind``, ``load(split)``, ``inputs(problem)``, ``score(prediction,
        problem)``, ``problem_id(problem, index)`` and ``expected(problem)``.
    """


@hookspec
def register_operators(register: RegisterOperator) -> None:
    """Register workflow operators.

    :param register: call ``register(operator_class, description)`` for each
        :class:`~aflowctl.plugins.Operator` class; ``description`` is the text the
        optimizer prompt shows (interface and output keys), a string or a dict with
        ``description`` and ``interface``.
    """
