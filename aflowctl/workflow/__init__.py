"""AFlow-compatible workflows: sources and loading (:mod:`.loader`), what a graph.py
imports (:mod:`.api`), operators (:mod:`.operators`, :mod:`.registry`), the sandbox
for generated code (:mod:`.sandbox`), AFlow round folders (:mod:`.aflow_io`) and the
seed workflows (:mod:`.seeds`).

Importing this package is cheap: the names below are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "WorkflowSource",
    "canonical_hash",
    "check_source",
    "load_folder",
    "instantiate",
    "seed_workflow",
    "executor_config",
    "workflow_usage",
    "problem_context",
]

_LAZY = {
    "WorkflowSource": "aflowctl.workflow.loader",
    "canonical_hash": "aflowctl.workflow.loader",
    "check_source": "aflowctl.workflow.loader",
    "load_folder": "aflowctl.workflow.loader",
    "instantiate": "aflowctl.workflow.loader",
    "seed_workflow": "aflowctl.workflow.seeds",
    "executor_config": "aflowctl.workflow.api",
    "workflow_usage": "aflowctl.workflow.api",
    "problem_context": "aflowctl.workflow.api",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'aflowctl.workflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
