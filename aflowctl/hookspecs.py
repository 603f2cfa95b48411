"""Hook specifications of aflowctl's plugin system (pluggy, project name ``aflowctl``).

Plugins are packages that declare an entry point in the group ``aflowctl`` and
implement some of these hooks with ``@aflowctl.hookspecs.hookimpl``. Each hook hands
the plugin a ``register`` callback; the plugin calls it once per object it provides
and never touches a registry itself. Built-in providers, benchmarks and operators
are registered through the very same hooks.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "aflowctl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers(register: Callable[[Any], None]) -> None:
    """Register LLM providers.

    :param register: call ``register(provider)`` for each provider, an object with a
        ``name`` (the model-string prefix, e.g. ``"echo"`` for ``echo/model``) and an
        ``async complete(request) -> list[Sample]`` method (see
        :mod:`aflowctl.llm.types`). All implementations are called.
    """


@hookspec
def register_benchmarks(register: Callable[[Any], None]) -> None:
    """Register benchmarks.

    :param register: call ``register(benchmark)`` for each benchmark, an object with
        ``name``, ``load(split)`` and ``score(prediction, problem) -> float``
        (see :mod:`aflowctl.benchmarks.base`). All implementations are called.
    """


@hookspec
def register_operators(register: Callable[[Any], None]) -> None:
    """Register workflow operators.

    :param register: call ``register(operator_class, description)`` for each
        operator class; ``description`` is the text the optimizer prompt shows
        (interface and output keys). All implementations are called.
    """
