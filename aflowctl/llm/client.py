"""The per-role LLM facade used by workflow operators, the optimizer and the trainer.

>>> llm = make_llm(ModelConfig(model="openai/gpt-4o-mini"), role="executor", run_id=run_id, store=db_path)
>>> sample = await llm.generate("What is 2+2?", temperature=0.0)
>>> sample.text, llm.total_cost, llm.total_tokens

It works the same in the CLI process and in spawn-started rollout workers: providers
come from the plugin manager of the process that calls, heavy libraries load on
first use, and every error it raises is a picklable
:class:`~aflowctl.errors.AflowctlError`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Optional, Union

from aflowctl.config import LLMConfig, ModelConfig
from aflowctl.errors import ProviderError
from aflowctl.llm.router import Router
from aflowctl.llm.types import LLMRequest, PromptOrMessages, Sample, Usage, split_model, to_messages

ROLES = ("optimizer", "executor", "policy", "cli")
# Keyword overrides accepted by generate()/generate_n().
OVERRIDES = ("temperature", "top_p", "max_tokens", "stop", "seed", "timeout_s", "system", "model", "api_base")


class LLM:
    """One model for one role of one run; accumulates cost and tokens of its calls."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        *,
        role: str,
        run_id: Optional[str] = None,
        store: Any = None,
        llm_cfg: Optional[LLMConfig] = None,
    ):
        split_model(model_cfg.model)  # malformed strings fail here, before any call
        self.model_cfg = model_cfg
        self.role = role
        self.run_id = run_id
        self.llm_cfg = llm_cfg or LLMConfig()
        self.store = store
        self.router = Router(self.llm_cfg, store)
        self._lock = threading.Lock()
        self.totals = Usage()  # every sample of this facade (cache hits are free)

    @property
    def total_cost(self) -> float:
        """USD of the calls with a known cost."""
        return self.totals.cost_usd

    @property
    def total_tokens(self) -> int:
        return self.totals.tokens

    @property
    def calls(self) -> int:
        return self.totals.calls

    @property
    def unknown_cost_calls(self) -> int:
        return self.totals.unknown_cost_calls

    @property
    def model(self) -> str:
        return self.model_cfg.model

    def __repr__(self) -> str:
        return f"LLM({self.model_cfg.model!r}, role={self.role!r}, run_id={self.run_id!r})"

    def request(self, prompt_or_messages: PromptOrMessages, n: int = 1, **overrides: Any) -> LLMRequest:
        unknown = set(overrides) - set(OVERRIDES)
        if unknown:
            raise ProviderError(
                f"unknown generate() option(s): {', '.join(sorted(unknown))}", f"use only {', '.join(OVERRIDES)}"
            )
        mc = self.model_cfg
        stop = overrides.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        return LLMRequest(
            messages=to_messages(prompt_or_messages, overrides.get("system")),
            model=overrides.get("model") or mc.model,
            temperature=float(overrides.get("temperature", mc.temperature)),
            top_p=float(overrides.get("top_p", mc.top_p)),
            max_tokens=overrides.get("max_tokens", mc.max_tokens),
            stop=list(stop) if stop else None,
            seed=overrides.get("seed"),
            n=n,
            api_base=overrides.get("api_base") or mc.api_base,
            api_key_env=mc.api_key_env,
            # both the model's and the layer's timeouts are limits: the smaller wins
            timeout_s=overrides.get("timeout_s") or min(mc.timeout_s or self.llm_cfg.timeout_s, self.llm_cfg.timeout_s),
        )

    async def generate(self, prompt_or_messages: PromptOrMessages, **overrides: Any) -> Sample:
        """One sample (through cache, budget check, limits, retries and the call log)."""
        return (await self.generate_n(prompt_or_messages, 1, **overrides))[0]

    async def generate_n(self, prompt_or_messages: PromptOrMessages, n: int, **overrides: Any) -> list[Sample]:
        """``n`` samples of one prompt (sample indices 0..n-1: each is cached on its own)."""
        req = self.request(prompt_or_messages, n, **overrides)
        samples = await self.router.complete(req, role=self.role, run_id=self.run_id)
        with self._lock:
            for s in samples:
                self.totals.add(s)
        return samples

    async def flush(self) -> None:
        """Wait until this process's call-log rows queued on this event loop are committed
        (only :func:`~aflowctl.llm.router.deferred_logging` leaves rows uncommitted)."""
        await self.router.flush()

    def generate_sync(self, prompt_or_messages: PromptOrMessages, **overrides: Any) -> Sample:
        """:meth:`generate` for code without an event loop."""
        return asyncio.run(self.generate(prompt_or_messages, **overrides))

    def usage(self) -> dict:
        return {
            "calls": self.calls,
            "tokens": self.total_tokens,
            "cost_usd": self.total_cost,
            "unknown_cost_calls": self.unknown_cost_calls,
        }


def _open(store: Any):
    """None -> the default store; a path -> that store; False -> no store; a Store -> itself."""
    if store is False:
        return None
    if store is None or isinstance(store, (str, os.PathLike)):
        from aflowctl.store import open_store

        return open_store(store)
    return store


def make_llm(
    model_cfg: Union[ModelConfig, str],
    *,
    role: str,
    run_id: Optional[str] = None,
    store: Any = None,
    llm_cfg: Optional[LLMConfig] = None,
) -> LLM:
    """The facade for one role. ``store``: an opened Store, a database path, ``None``
    for the default database, or ``False`` for no logging/cache (benchmarks only)."""
    if isinstance(model_cfg, str):
        model_cfg = ModelConfig(model=model_cfg)
    return LLM(model_cfg, role=role, run_id=run_id, store=_open(store), llm_cfg=llm_cfg)
