"""A direct HTTP path for OpenAI-compatible servers on this machine (vLLM, llama.cpp,
Ollama's /v1, test servers).

litellm costs a few milliseconds of CPU per call, which caps throughput at high
concurrency on small machines; for a server on the loopback interface the router
can instead POST ``/chat/completions`` itself, with the small keep-alive HTTP/1.1
client of :mod:`aflowctl.llm.providers._http` (httpx's pool was the bottleneck at
high concurrency). Remote providers always go through litellm.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from aflowctl.llm import pricing
from aflowctl.llm.providers._common import chat_body, one_line, parse_retry_after, status_error
from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample


async def complete(
    request: LLMRequest, *, prefix: str, model: str, api_base: str, api_key: Optional[str]
) -> list[Sample]:
    from aflowctl.llm.providers import _http

    url = f"{api_base}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = request.timeout_s or 120.0
    t0 = time.perf_counter()
    try:
        resp = await asyncio.wait_for(_http.post_json(url, chat_body(request, model), headers), timeout)
    except asyncio.TimeoutError:
        raise ProviderCallError(
            f"{request.model}: no answer from {url} within {timeout:g} s",
            "raise the timeout (llm.timeout_s) or check the server",
            retryable=True,
        ) from None
    except (OSError, ValueError) as exc:  # refused, reset, DNS, malformed HTTP
        raise ProviderCallError(
            f"{request.model}: cannot reach {url} ({type(exc).__name__}: {one_line(str(exc), 120)})",
            "check that the server is running and the base URL (api_base / OPENAI_API_BASE) is right",
            retryable=True,
        ) from None
    latency = time.perf_counter() - t0
    if resp.status != 200:
        raise status_error(
            request.model, url, resp.status, resp.text, parse_retry_after(resp.headers.get("retry-after"))
        )
    try:
        data = resp.json()
        choices = data["choices"]
    except (ValueError, KeyError, TypeError):
        raise ProviderCallError(
            f"{request.model}: {url} answered with something that is not a chat completion: {one_line(resp.text, 120)}",
            "check that api_base points at an OpenAI-compatible /v1 endpoint",
        ) from None
    return samples_from_choices(request, prefix, model, choices, data.get("usage") or {}, latency, None)


def samples_from_choices(
    request: LLMRequest,
    prefix: str,
    model: str,
    choices: list,
    usage: dict,
    latency: float,
    total_cost: Optional[float],
) -> list[Sample]:
    """Split one response with ``len(choices)`` samples into Samples (usage and cost shared evenly)."""
    k = max(len(choices), 1)
    pt = usage.get("prompt_tokens")
    ct = usage.get("completion_tokens")
    per_ct = None if ct is None else int(round(ct / k))
    if total_cost is None:
        total_cost = pricing.cost(prefix, model, pt, ct)
    out = []
    for ch in sorted(choices, key=lambda c: c.get("index", 0)):
        msg = ch.get("message") or {}
        out.append(
            Sample(
                text=msg.get("content") or "",
                finish_reason=ch.get("finish_reason"),
                prompt_tokens=pt,
                completion_tokens=per_ct,
                cost_usd=None if total_cost is None else total_cost / k,
                latency_s=latency,
                provider=prefix,
                model=model,
            )
        )
    return out


async def aclose_all() -> None:
    from aflowctl.llm.providers import _http

    await _http.close_all()
