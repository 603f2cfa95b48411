"""The executor LLM as a workflow sees it: the ``llm_config`` a worker passes to
``Workflow(name, llm_config, dataset)`` (:func:`executor_config`), :class:`WorkflowLLM`
(AFlow's ``AsyncLLM`` interface: cost and tokens per workflow instance and per problem),
``create_llm_instance`` and MetaGPT's ``CostManager``. See :mod:`aflowctl.workflow.api`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

from aflowctl.errors import WorkflowError
from aflowctl.llm.types import Usage
from aflowctl.workflow.problem import current_problem

# Seed step between repeated identical requests within one problem (see WorkflowLLM._overrides).
OCCURRENCE_SEED_STRIDE = 7919


class CostManager:
    """MetaGPT's cost counter, for older AFlow graphs that do
    ``self.llm.cost_manager = CostManager()`` and return ``...cost_manager.total_cost``."""

    def __init__(self) -> None:
        self.total_cost = 0.0
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0

    def update_cost(self, prompt_tokens: int, completion_tokens: int, cost: float | None = 0.0, *_: Any) -> None:
        self.total_prompt_tokens += int(prompt_tokens or 0)
        self.total_completion_tokens += int(completion_tokens or 0)
        self.total_cost += float(cost or 0.0)

    def get_total_cost(self) -> float:
        return self.total_cost


def executor_config(
    model_cfg: Any,
    *,
    llm_cfg: Any = None,
    run_id: Optional[str] = None,
    db_path: Any = None,
    seed: Optional[int] = None,
    dataset: Optional[str] = None,
    role: str = "executor",
    code_timeout_s: float = 10.0,
    code_memory_mb: int = 1024,
    gateway: Optional[str] = None,
) -> dict:
    """The ``llm_config`` dict a worker passes to ``Workflow(name, llm_config, dataset)``.

    ``model_cfg`` is a ModelConfig (or its dict, or a model string), ``llm_cfg`` an
    LLMConfig (or dict). ``seed`` is the executor's sampling seed (one per repeat).
    The sandbox limits apply to code the operators run (Programmer, Test).
    """
    if isinstance(model_cfg, str):
        model = {"model": model_cfg}
    elif hasattr(model_cfg, "model_dump"):
        model = model_cfg.model_dump(mode="json")
    else:
        model = dict(model_cfg)
    if llm_cfg is None:
        llm = {}
    elif hasattr(llm_cfg, "model_dump"):
        llm = llm_cfg.model_dump(mode="json")
    else:
        llm = dict(llm_cfg)
    return {
        "kind": "aflowctl.executor",
        "model": model,
        "role": role,
        "run_id": run_id,
        "db_path": str(db_path) if db_path is not None else None,
        "llm": llm,
        "seed": seed,
        "dataset": dataset,
        "sandbox": {"timeout_s": float(code_timeout_s), "memory_mb": int(code_memory_mb)},
        "gateway": gateway,
    }


# Underlying LLM objects are shared per event loop and config, so that a worker that
# builds one workflow per problem still has one router (one concurrency limit).
_shared: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _client_for(cfg: dict) -> Any:
    import json

    from aflowctl.config import LLMConfig, ModelConfig

    try:
        from aflowctl.llm.client import make_llm
    except ImportError as exc:  # pragma: no cover - the LLM layer is part of the package
        raise WorkflowError(f"the LLM layer cannot be imported: {exc}", "reinstall aflowctl") from None
    model = cfg.get("model")
    if isinstance(model, str):
        model = {"model": model}
    if not isinstance(model, dict) or not model.get("model"):
        raise WorkflowError("llm_config has no executor model", "pass executor_config(ModelConfig(model=...))")
    if cfg.get("gateway"):  # a rollout worker: the parent's gateway makes the calls
        from aflowctl.llm.gateway import GatewayClient

        return GatewayClient(str(cfg["gateway"]), str(model["model"]))
    key = json.dumps([model, cfg.get("role"), cfg.get("run_id"), cfg.get("db_path"), cfg.get("llm")], sort_keys=True)

    def build() -> Any:
        return make_llm(
            ModelConfig.model_validate(model),
            role=cfg.get("role") or "executor",
            run_id=cfg.get("run_id"),
            store=cfg.get("db_path"),
            llm_cfg=LLMConfig.model_validate(cfg.get("llm") or {}),
        )

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return build()
    with _shared_lock:
        per_loop = _shared.setdefault(loop, {})
        if key not in per_loop:
            per_loop[key] = build()
        return per_loop[key]


class WorkflowLLM:
    """The executor LLM as a workflow sees it (AFlow's ``AsyncLLM`` interface too).

    ``await llm.generate(...) -> Sample``, ``await llm(prompt) -> str``,
    ``llm.get_usage_summary()`` (``total_cost``...), ``llm.cost_manager``. Costs and
    tokens are counted per instance (one workflow), and in the current
    :class:`ProblemScope` if any.
    """

    def __init__(self, client: Any, *, context: dict | None = None):
        self._client = client
        self.context: dict = dict(context or {})
        self.cost_manager: Any = CostManager()
        self.totals = Usage()  # this workflow instance's calls
        self._lock = threading.Lock()
        self._occurrences: dict = {}

    def __repr__(self) -> str:
        return f"WorkflowLLM({getattr(self._client, 'model', type(self._client).__name__)!r})"

    @property
    def model(self) -> str:
        return str(getattr(self._client, "model", "unknown"))

    @property
    def client(self) -> Any:
        return self._client

    # the counters, read through ``totals``
    calls = property(lambda self: self.totals.calls)
    prompt_tokens = property(lambda self: self.totals.prompt_tokens)
    completion_tokens = property(lambda self: self.totals.completion_tokens)
    total_cost = property(lambda self: self.totals.cost_usd)
    unknown_cost_calls = property(lambda self: self.totals.unknown_cost_calls)
    total_tokens = property(lambda self: self.totals.tokens)

    @property
    def sandbox_limits(self) -> dict:
        sb = self.context.get("sandbox") or {}
        return {"timeout_s": float(sb.get("timeout_s", 10.0)), "memory_mb": int(sb.get("memory_mb", 1024))}

    def _overrides(self, overrides: dict, prompt: Any = None) -> dict:
        """Add the repeat's seed; a request asked again while solving the same problem
        (a k-sample ensemble written as a loop) gets the next seed, so the response cache
        returns the k-th sample instead of the first one k times."""
        seed = self.context.get("seed")
        if "seed" not in overrides:
            k = self._occurrence(prompt, overrides)
            if seed is not None or k:
                overrides = {**overrides, "seed": (seed or 0) + OCCURRENCE_SEED_STRIDE * k}
        return overrides

    def _occurrence(self, prompt: Any, overrides: dict) -> int:
        key = hashlib.sha256(
            json.dumps([prompt, sorted(overrides.items())], default=str, sort_keys=True).encode()
        ).hexdigest()
        scope = current_problem()
        counter = scope.occurrences if scope is not None else self._occurrences
        with self._lock:
            k = counter.get(key, 0)
            counter[key] = k + 1
        return k

    def _account(self, samples: list) -> None:
        scope = current_problem()
        with self._lock:
            for s in samples:
                self.totals.add(s)
                if scope is not None:
                    scope.usage.add(s)
                update = getattr(self.cost_manager, "update_cost", None)
                if callable(update):
                    try:
                        update(
                            int(getattr(s, "prompt_tokens", 0) or 0),
                            int(getattr(s, "completion_tokens", 0) or 0),
                            getattr(s, "cost_usd", None) or 0.0,
                        )
                    except TypeError:
                        pass

    async def generate(self, prompt_or_messages: Any, **overrides: Any) -> Any:
        gen = getattr(self._client, "generate", None)
        if gen is None:  # an AFlow-style callable returning text
            text = await self._client(prompt_or_messages)
            sample = _TextSample(str(text))
        else:
            sample = await gen(prompt_or_messages, **self._overrides(overrides, prompt_or_messages))
        self._account([sample])
        return sample

    async def generate_n(self, prompt_or_messages: Any, n: int, **overrides: Any) -> list:
        gen_n = getattr(self._client, "generate_n", None)
        if gen_n is None:
            return [await self.generate(prompt_or_messages, **overrides) for _ in range(n)]
        samples = list(await gen_n(prompt_or_messages, n, **self._overrides(overrides, prompt_or_messages)))
        self._account(samples)
        return samples

    async def __call__(self, prompt: Any, **overrides: Any) -> str:
        return (await self.generate(prompt, **overrides)).text

    async def aask(self, msg: Any, system_msgs: Any = None, **_: Any) -> str:
        """MetaGPT's ``aask`` (system messages, if any, go first)."""
        if system_msgs:
            system = "\n".join(system_msgs) if isinstance(system_msgs, (list, tuple)) else str(system_msgs)
            return (await self.generate(msg, system=system)).text
        return await self(msg)

    def get_usage_summary(self) -> dict:
        return {
            "total_cost": self.total_cost,
            "total_input_tokens": self.prompt_tokens,
            "total_output_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "unknown_cost_calls": self.unknown_cost_calls,
        }


@dataclass
class _TextSample:
    text: str
    finish_reason: Optional[str] = "stop"
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    cost_usd: Optional[float] = None
    latency_s: float = 0.0
    provider: str = "callable"
    model: str = "callable"
    cached: bool = False
    extra: dict = field(default_factory=dict)


def create_llm_instance(llm_config: Any) -> WorkflowLLM:
    """The executor LLM for one workflow (AFlow's ``create_llm_instance``).

    ``llm_config``: a dict from :func:`executor_config`, a ModelConfig, a model
    string, a :class:`WorkflowLLM` (a fresh counter over the same client), or any
    object with ``async generate(...)`` or an async ``__call__(prompt) -> str``.
    """
    if isinstance(llm_config, WorkflowLLM):
        return WorkflowLLM(llm_config.client, context=llm_config.context)
    if isinstance(llm_config, dict):
        return WorkflowLLM(_client_for(llm_config), context=llm_config)
    if isinstance(llm_config, str) or hasattr(llm_config, "model_dump"):
        cfg = executor_config(llm_config)
        return WorkflowLLM(_client_for(cfg), context=cfg)
    if hasattr(llm_config, "generate") or callable(llm_config):
        return WorkflowLLM(llm_config, context=getattr(llm_config, "context", None))
    raise WorkflowError(
        f"create_llm_instance() cannot use a {type(llm_config).__name__} as llm_config",
        "pass aflowctl.workflow.executor_config(...), a ModelConfig or a model string",
    )


def workflow_usage(workflow: Any) -> tuple[Optional[float], int]:
    """(cost in USD or None when no call had a known cost, tokens) of one workflow
    instance: the sum over the :class:`WorkflowLLM` objects among its attributes."""
    seen: set[int] = set()
    cost, tokens, known = 0.0, 0, False
    for value in list(vars(workflow).values()) if hasattr(workflow, "__dict__") else []:
        cands = [value] + [getattr(value, "llm", None)]
        for llm in cands:
            if isinstance(llm, WorkflowLLM) and id(llm) not in seen:
                seen.add(id(llm))
                tokens += llm.total_tokens
                if llm.calls > llm.unknown_cost_calls:
                    known = True
                    cost += llm.total_cost
    return (cost if known else None), tokens
