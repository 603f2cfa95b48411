"""Registers the built-in operators through the same hook plugins use."""

from __future__ import annotations

from aflowctl.hookspecs import hookimpl


@hookimpl
def register_operators(register):
    from aflowctl.workflow import operators
    from aflowctl.workflow.descriptions import DESCRIPTIONS

    for cls in operators.BUILTIN_OPERATORS:
        register(cls, DESCRIPTIONS[cls.__name__])
