"""Operators, collected from every plugin's ``register_operators`` hook by one
:class:`aflowctl.plugins.Registry`.

A plugin calls ``register(operator_class, description)``: the class is what a
workflow gets as ``operator.<Name>`` (constructed with the executor LLM, called with
keyword arguments; the contract is :class:`aflowctl.plugins.Operator`), the
description what the optimizer prompt shows for it. Built-ins
(:mod:`aflowctl.workflow.builtin`) register through the same hook. The first class
registered under a name wins, so a plugin cannot silently replace a built-in; a
plugin whose hook raises is recorded in :func:`hook_errors` and does not hide the
others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from aflowctl.errors import PluginError, WorkflowError
from aflowctl.plugins import Operator, Registry

__all__ = ["get_operator", "names", "description", "operator_descriptions", "hook_errors"]


def _describe(name: str, description: Any) -> str:
    if description is None:
        return name
    if isinstance(description, dict):
        parts = [f"{name}:"]
        if description.get("description"):
            parts.append(str(description["description"]).strip())
        if description.get("interface"):
            parts.append(f"Interface: {description['interface']}")
        return " ".join(parts)
    return str(description).strip()


def _accept(
    plugin: str, operator_class: Any, description: Optional[Any] = None
) -> tuple[str, tuple[type[Operator], str]]:
    name = getattr(operator_class, "__name__", None)
    if not isinstance(operator_class, type) or not name or not name.isidentifier():
        raise PluginError(
            f"plugin {plugin} registered an operator that is not a class ({operator_class!r})",
            "pass the operator class itself to register()",
        )
    if not any("__call__" in vars(k) for k in operator_class.__mro__):  # getattr would find type.__call__
        raise PluginError(
            f"plugin {plugin}: operator {name} has no __call__", "operators are called as `await op(**kwargs)`"
        )
    return name, (operator_class, _describe(name, description))


REGISTRY: Registry[tuple[type[Operator], str]] = Registry(
    "register_operators",
    "operator",
    accept=_accept,
    error=WorkflowError,
    hint="use one of those operators, or register one with a plugin (docs/plugins.md)",
)


def names() -> list[str]:
    """Registered operator names, in registration order."""
    return REGISTRY.names()


def get_operator(name: str) -> type:
    """The operator class called ``name``; an unknown name lists the known ones."""
    return REGISTRY.get(name)[0]


def description(name: str) -> str:
    return REGISTRY.get(name)[1]


def operator_descriptions(names_: Iterable[str]) -> str:
    """The operator list for the optimizer prompt: one numbered entry per operator.

    Unknown names raise :class:`WorkflowError` naming the known ones.
    """
    return "\n".join(f"{i}. {description(name)}" for i, name in enumerate(names_, 1))


def hook_errors() -> dict[str, str]:
    return REGISTRY.hook_errors()
