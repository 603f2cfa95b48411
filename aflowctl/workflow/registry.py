"""Operators, collected from every plugin's ``register_operators`` hook.

A plugin calls ``register(operator_class, description)``: the class is what a
workflow gets as ``operator.<Name>`` (constructed with the executor LLM, called with
keyword arguments), the description what the optimizer prompt shows for it.
Built-ins (:mod:`aflowctl.workflow.builtin`) register through the same hook. The
first class registered under a name wins; a plugin whose hook raises is recorded in
:func:`hook_errors` and does not hide the others.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

from aflowctl.errors import PluginError, WorkflowError

__all__ = ["get_operator", "names", "description", "operator_descriptions", "hook_errors"]

_lock = threading.RLock()
_ops: Optional[dict[str, tuple[type, str]]] = None
_hook_errors: dict[str, str] = {}


def _reset() -> None:
    """Forget the collected operators (called by :func:`aflowctl.plugins.reset`)."""
    global _ops
    with _lock:
        _ops = None
        _hook_errors.clear()


def _accept(plugin: str, operator_class: Any, description: Any = None) -> tuple[str, tuple[type, str]]:
    name = getattr(operator_class, "__name__", None)
    if not isinstance(operator_class, type) or not name or not name.isidentifier():
        raise PluginError(f"plugin {plugin} registered an operator that is not a class ({operator_class!r})",
                          "pass the operator class itself to register()")
    if not callable(getattr(operator_class, "__call__", None)):
        raise PluginError(f"plugin {plugin}: operator {name} has no __call__",
                          "operators are called as `await op(**kwargs)`")
    return name, (operator_class, _describe(name, description))


def _collect() -> dict[str, tuple[type, str]]:
    # First registration wins (built-ins first), so a plugin cannot silently replace a
    # built-in operator: the same rule as providers and benchmarks.
    from aflowctl.plugins import collect_registrations

    found, _, errors = collect_registrations("register_operators", _accept, "operator")
    _hook_errors.clear()
    _hook_errors.update(errors)
    return found


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


def _all() -> dict[str, tuple[type, str]]:
    global _ops
    with _lock:
        if _ops is None:
            _ops = _collect()
        return _ops


def names() -> list[str]:
    """Registered operator names, in registration order."""
    return list(_all())


def get_operator(name: str) -> type:
    """The operator class called ``name``; an unknown name lists the known ones."""
    ops = _all()
    if name in ops:
        return ops[name][0]
    raise WorkflowError(f"unknown operator {name!r}", f"known operators: {', '.join(ops) or 'none'}")


def description(name: str) -> str:
    get_operator(name)
    return _all()[name][1]


def operator_descriptions(names_: Iterable[str]) -> str:
    """The operator list for the optimizer prompt: one numbered entry per operator.

    Unknown names raise :class:`WorkflowError` naming the known ones.
    """
    lines = []
    for i, name in enumerate(names_, 1):
        lines.append(f"{i}. {description(name)}")
    return "\n".join(lines)


def hook_errors() -> dict[str, str]:
    _all()
    return dict(_hook_errors)
