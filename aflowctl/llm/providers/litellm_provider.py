"""The ``litellm`` route: every remote or server model (``openai/``, ``anthropic/``,
``gemini/``, ``ollama/``, ``hosted_vllm/``, ``openrouter/``, ...).

litellm is imported lazily, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first so
that the import reaches nothing on the network. Its exceptions cannot be pickled, so
they are converted here, inside the process that called, into
:class:`~aflowctl.llm.types.ProviderCallError`. Keys come from the environment and
are passed per call, never stored.

OpenAI-compatible servers on the loopback interface are called directly over HTTP
(see :mod:`aflowctl.llm.providers.openai_http`) unless ``transport="litellm"``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Optional

from aflowctl.llm.providers import openai_http
from aflowctl.llm.providers._common import (
    api_base_for,
    api_key_for,
    chat_body,
    is_loopback,
    one_line,
    parse_retry_after,
)
from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample

# Model-string prefixes routed to litellm. "litellm/<anything>" passes <anything> as is.
PREFIXES: tuple[str, ...] = (
    "openai",
    "anthropic",
    "gemini",
    "ollama",
    "ollama_chat",
    "hosted_vllm",
    "openrouter",
    "azure",
    "mistral",
    "groq",
    "together_ai",
    "deepseek",
    "vertex_ai",
    "bedrock",
    "cohere",
    "fireworks_ai",
    "xai",
    "huggingface",
    "litellm",
)
# Providers whose API takes n>1 in one request; the others get n parallel requests.
NATIVE_N = {"openai", "hosted_vllm", "azure", "deepseek", "together_ai", "fireworks_ai", "xai"}
# Prefixes speaking the OpenAI protocol, eligible for the direct HTTP path.
OPENAI_COMPATIBLE = {"openai", "hosted_vllm"}

_import_lock = threading.Lock()
_litellm: Any = None


def import_litellm():
    """Import litellm once, offline and quiet."""
    global _litellm
    with _import_lock:
        if _litellm is None:
            os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
            import litellm

            litellm.suppress_debug_info = True
            litellm.drop_params = True  # e.g. seed for providers without it
            litellm.telemetry = False
            _litellm = litellm
        return _litellm


def convert_exception(exc: BaseException, model: str, url: Optional[str]) -> ProviderCallError:
    """A litellm/openai/httpx exception -> a picklable ProviderCallError (no key in it)."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = None
    headers = None
    for attr in ("litellm_response_headers", "response"):
        obj = getattr(exc, attr, None)
        h = getattr(obj, "headers", obj) if attr == "response" else obj
        if h is not None and hasattr(h, "get"):
            headers = h
            break
    retry_after = parse_retry_after(headers.get("retry-after")) if headers is not None else None
    text = one_line(str(exc), 240)
    where = f" from {url}" if url else ""
    if name in ("Timeout", "TimeoutException", "APITimeoutError") or isinstance(exc, asyncio.TimeoutError):
        return ProviderCallError(
            f"{model}: timed out waiting{where} ({text})", "raise llm.timeout_s or check the server", retryable=True
        )
    if (
        name in ("APIConnectionError", "ConnectError", "ConnectionError")
        or "connection error" in text.lower()
        or (status is None and "connect" in text.lower())
    ):
        return ProviderCallError(
            f"{model}: cannot reach {url or 'the provider'} ({name}: {text})",
            "check the network, the server and the base URL (api_base / OPENAI_API_BASE)",
            retryable=True,
        )
    if name == "AuthenticationError" or status in (401, 403):
        return ProviderCallError(
            f"{model}: authentication failed{where} ({text})",
            "check the API key in the provider's environment variable (or api_key_env)",
            status=status,
        )
    retryable = (status is not None and (status == 429 or status >= 500 or status == 408)) or name in (
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
    )
    hint = (
        "lower llm.concurrency_per_model or set llm.requests_per_minute"
        if status == 429
        else ("see the provider's message" if not retryable else "the provider is failing; try again later")
    )
    return ProviderCallError(
        f"{model}: {name}{f' (HTTP {status})' if status else ''}{where}: {text}",
        hint,
        retryable=retryable,
        status=status,
        retry_after=retry_after,
    )


class LiteLLMProvider:
    """One prefix (``openai``, ``anthropic``, ...) answered through litellm.

    ``extra`` is passed to ``litellm.acompletion`` on every call (tests use
    ``{"mock_response": "..."}``).
    """

    def __init__(self, name: str, *, extra: Optional[dict] = None):
        self.name = name
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return f"LiteLLMProvider({self.name!r})"

    def litellm_model(self, request: LLMRequest) -> str:
        return request.model_name if self.name == "litellm" else request.model

    def use_direct(self, request: LLMRequest, api_base: Optional[str]) -> bool:
        transport = getattr(request, "transport", None) or "auto"
        if transport == "litellm" or self.extra or self.name not in OPENAI_COMPATIBLE or not api_base:
            return False
        return transport == "direct" or is_loopback(api_base)

    async def complete(self, request: LLMRequest) -> list[Sample]:
        api_base = api_base_for(self.name, request)
        api_key = api_key_for(self.name, request, api_base)
        if api_base and self.use_direct(request, api_base):
            return await openai_http.complete(
                request, prefix=self.name, model=request.model_name, api_base=api_base, api_key=api_key
            )
        if request.n > 1 and self.name not in NATIVE_N:
            one = request.with_(n=1)
            parts = await asyncio.gather(*(self._call(one, api_base, api_key) for _ in range(request.n)))
            return [s for part in parts for s in part]
        return await self._call(request, api_base, api_key)

    async def _call(self, request: LLMRequest, api_base: Optional[str], api_key: Optional[str]) -> list[Sample]:
        litellm = import_litellm()
        kwargs = chat_body(request, self.litellm_model(request))
        kwargs["num_retries"] = 0  # the router retries
        if request.timeout_s:
            kwargs["timeout"] = request.timeout_s
        if api_base:
            kwargs["api_base"] = api_base
        if api_key:
            kwargs["api_key"] = api_key
        kwargs.update(self.extra)
        url = api_base or f"the {self.name} API"
        t0 = time.perf_counter()
        try:
            resp = await litellm.acompletion(**kwargs)
        except ProviderCallError:
            raise
        except Exception as exc:  # noqa: BLE001 - every litellm error becomes a picklable one
            err = convert_exception(exc, request.model, url)
            if api_key and api_key != "EMPTY" and api_key in err.message:  # belt and braces
                err = ProviderCallError(
                    err.message.replace(api_key, "[REDACTED]"),
                    err.hint,
                    retryable=err.retryable,
                    status=err.status,
                    retry_after=err.retry_after,
                )
            raise err from None
        latency = time.perf_counter() - t0
        total_cost = None
        hidden = getattr(resp, "_hidden_params", None) or {}
        if hidden.get("response_cost") is not None:
            total_cost = float(hidden["response_cost"])
        usage = getattr(resp, "usage", None)
        usage_d = {
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
        }
        choices = []
        for i, ch in enumerate(resp.choices):
            msg = getattr(ch, "message", None)
            choices.append(
                {
                    "index": getattr(ch, "index", i) or i,
                    "message": {"content": getattr(msg, "content", None) or ""},
                    "finish_reason": getattr(ch, "finish_reason", None),
                }
            )
        return openai_http.samples_from_choices(
            request, self.name, request.model_name, choices, usage_d, latency, total_cost
        )


def providers() -> list[LiteLLMProvider]:
    return [LiteLLMProvider(p) for p in PREFIXES]
