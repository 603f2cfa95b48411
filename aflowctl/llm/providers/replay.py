"""The ``replay`` provider: ``replay/<provider>/<model>`` answers from the call log.

It looks up the exact request (hash of provider, model, messages and sampling
parameters, plus the sample index) in ``llm_calls`` and returns the recorded
answer at zero cost; a miss is a :class:`ProviderCallError` naming the request hash.
``llm.replay_from`` (a run id, or ``*``) turns every call of a run into a replay.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from aflowctl.llm import cache as cache_mod
from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample, split_model


class ReplayProvider:
    name = "replay"

    def __init__(self, store=None, run_id: Optional[str] = None):
        self._store = store
        self.run_id = run_id
        self.indices: Optional[list] = None  # sample indices asked for (set by the router)

    def bind(self, store, llm_cfg) -> ReplayProvider:
        run = getattr(llm_cfg, "replay_from", None)
        return ReplayProvider(store, None if run in (None, "*") else run)

    def worst_case_cost(self, request: LLMRequest) -> float:
        return 0.0

    async def complete(self, request: LLMRequest) -> list[Sample]:
        inner_model = request.model_name
        split_model(inner_model)  # "replay/gpt-4o" is malformed: the inner model needs its provider
        inner = request.with_(model=inner_model)
        h = inner.request_hash()
        store = self._store
        if store is None:
            from aflowctl.store import open_store

            store = open_store()
        indices = list(self.indices) if self.indices and len(self.indices) == request.n else list(range(request.n))
        found = await asyncio.to_thread(cache_mod.replay_lookup, store, h, indices, self.run_id)
        missing = [i for i in indices if i not in found]
        if missing:
            where = f"run {self.run_id}" if self.run_id else "the call log"
            raise ProviderCallError(
                f"replay miss: no recorded answer in {where} for request {h} (sample {missing[0]}) to {inner_model}",
                "replay only answers requests recorded earlier with identical messages and sampling parameters; "
                "run once against the real provider first",
            )
        p, m = split_model(inner_model)
        return [
            Sample(
                text=found[i]["response"],
                finish_reason=found[i]["finish_reason"],
                prompt_tokens=found[i]["prompt_tokens"],
                completion_tokens=found[i]["completion_tokens"],
                cost_usd=0.0,
                latency_s=0.0,
                provider=p,
                model=m,
            )
            for i in indices
        ]
