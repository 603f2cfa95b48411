"""aflowctl-echo: an example provider plugin.

Models: ``echo/plain`` answers with the last user message, ``echo/upper`` in upper
case, ``echo/reverse`` with its words reversed. It honours ``n``, ``max_tokens``
(words) and ``stop``, counts words as tokens, and costs nothing (``cost_usd=0.0``:
known to be free, unlike ``None`` which means unknown).
"""

from __future__ import annotations

import time

from aflowctl.hookspecs import hookimpl
from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample

MODES = {
    "plain": lambda s: s,
    "upper": str.upper,
    "reverse": lambda s: " ".join(reversed(s.split())),
}


class EchoProvider:
    name = "echo"

    async def complete(self, request: LLMRequest) -> list[Sample]:
        t0 = time.perf_counter()
        mode = MODES.get(request.model_name)
        if mode is None:
            raise ProviderCallError(
                f"unknown echo model {request.model!r}",
                f"use one of: {', '.join('echo/' + m for m in MODES)}",
            )
        last = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        text, finish = mode(str(last)), "stop"
        for s in request.stop or []:
            if s and s in text:
                text = text[: text.index(s)]
        words = text.split()
        if request.max_tokens is not None and len(words) > request.max_tokens:
            text, finish = " ".join(words[: request.max_tokens]), "length"
        prompt_tokens = sum(len(str(m["content"]).split()) for m in request.messages)
        return [
            Sample(
                text=text,
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(text.split()),
                cost_usd=0.0,
                latency_s=time.perf_counter() - t0,
                provider=self.name,
                model=request.model_name,
            )
            for _ in range(request.n)
        ]


@hookimpl
def register_providers(register):
    register(EchoProvider())
