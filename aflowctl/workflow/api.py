"""What a workflow's ``graph.py`` imports.

A graph written for AFlow starts with lines such as::

    import workspace.GSM8K.workflows.template.operator as operator
    import workspace.GSM8K.workflows.round_1.prompt as prompt_custom
    from scripts.async_llm import create_llm_instance
    from scripts.evaluator import DatasetType

:mod:`aflowctl.workflow.loader` rewrites each of them to
``from aflowctl.workflow.api import <name>``. When a workflow is instantiated, that
import is answered by a fresh namespace holding

* ``operator``: every registered operator class (built-ins and plugins), as AFlow's
  ``operator`` module did (``operator.Custom(self.llm)``);
* ``prompt_custom``: the workflow's own ``prompt.py``, executed as a fresh module;
* ``create_llm_instance(llm_config)``: the executor LLM (:class:`WorkflowLLM`);
* ``DatasetType`` and MetaGPT's ``CostManager`` (for older AFlow graphs);
* each operator class by name (``from aflowctl.workflow.api import Custom``).

``llm_config`` is what the rollout worker hands to ``Workflow(name, llm_config,
dataset)``; build it with :func:`executor_config`. It is a plain JSON-able dict::

    {"kind": "aflowctl.executor", "model": {ModelConfig fields}, "role": "executor",
     "run_id": str | None, "db_path": str | None, "llm": {LLMConfig fields},
     "seed": int | None, "dataset": str | None,
     "sandbox": {"timeout_s": float, "memory_mb": int}, "gateway": str | None}

``gateway`` is the client id a rollout worker's calls go through (the parent's LLM
gateway, :mod:`aflowctl.llm.gateway`); then ``db_path`` and ``llm`` are unused.

``create_llm_instance`` also accepts a ModelConfig, a model string, or any object
with ``async generate(prompt_or_messages, **overrides) -> Sample`` (tests use a
fake one), and wraps it so that cost is counted per workflow instance.
"""

from __future__ import annotations

import types
from typing import Any, Literal

from aflowctl.errors import WorkflowError

# what a graph imports, and what the worker and operators use, live in two modules; re-exported here
from aflowctl.workflow.executor import OCCURRENCE_SEED_STRIDE as OCCURRENCE_SEED_STRIDE
from aflowctl.workflow.executor import CostManager as CostManager
from aflowctl.workflow.executor import WorkflowLLM as WorkflowLLM
from aflowctl.workflow.executor import create_llm_instance as create_llm_instance
from aflowctl.workflow.executor import executor_config as executor_config
from aflowctl.workflow.executor import workflow_usage as workflow_usage
from aflowctl.workflow.problem import HIDDEN_FIELDS as HIDDEN_FIELDS
from aflowctl.workflow.problem import ProblemScope as ProblemScope
from aflowctl.workflow.problem import current_problem as current_problem
from aflowctl.workflow.problem import problem_context as problem_context

DatasetType = Literal[
    "HumanEval",
    "MBPP",
    "GSM8K",
    "MATH",
    "HotpotQA",
    "DROP",
    "humaneval",
    "mbpp",
    "gsm8k",
    "math",
    "hotpotqa",
    "drop",
]

#: names ``from aflowctl.workflow.api import ...`` can give a graph (besides operators)
API_NAMES = ("operator", "prompt_custom", "create_llm_instance", "DatasetType", "CostManager")


# --------------------------------------------------------------------------- namespace


def operator_module() -> types.ModuleType:
    """A module object holding every registered operator class (AFlow's ``operator``)."""
    from aflowctl.workflow import registry

    mod = types.ModuleType("operator", "aflowctl workflow operators (registered through register_operators)")
    for name in registry.names():
        setattr(mod, name, registry.get_operator(name))
    return mod


def namespace(prompt_module: types.ModuleType | None = None) -> types.ModuleType:
    """The object ``from aflowctl.workflow.api import X`` reads inside one workflow."""
    ns = types.ModuleType("aflowctl.workflow.api")
    op = operator_module()
    ns.operator = op  # type: ignore[attr-defined]
    for name, value in vars(op).items():
        if not name.startswith("__"):
            setattr(ns, name, value)
    ns.prompt_custom = prompt_module if prompt_module is not None else types.ModuleType("prompt_custom")  # type: ignore[attr-defined]
    ns.create_llm_instance = create_llm_instance  # type: ignore[attr-defined]
    ns.DatasetType = DatasetType  # type: ignore[attr-defined]
    ns.CostManager = CostManager  # type: ignore[attr-defined]
    ns.__all__ = [n for n in vars(ns) if not n.startswith("_")]  # type: ignore[attr-defined]  # for `import *`
    return ns


def __getattr__(name: str) -> Any:  # ``from aflowctl.workflow.api import Custom`` outside a workflow
    if name == "operator":
        return operator_module()
    from aflowctl.workflow import registry

    try:
        return registry.get_operator(name)
    except WorkflowError:
        raise AttributeError(name) from None
