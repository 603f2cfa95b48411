"""Helpers shared by the HTTP providers: keys, base URLs, request bodies, error conversion."""

from __future__ import annotations

import os
from typing import Any, Optional
from urllib.parse import urlparse

from aflowctl.errors import MissingKeyError
from aflowctl.llm.types import LLMRequest, ProviderCallError

# The usual environment variables of each provider's key (first found wins).
KEY_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY"),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY"),
    "xai": ("XAI_API_KEY",),
    "azure": ("AZURE_API_KEY",),
    "hosted_vllm": ("HOSTED_VLLM_API_KEY",),
}
# Providers that work without any key (local servers).
KEYLESS = {"ollama", "ollama_chat", "hosted_vllm", "litellm", "bedrock", "vertex_ai", "huggingface"}
BASE_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_BASE", "OPENAI_BASE_URL"),
    "hosted_vllm": ("HOSTED_VLLM_API_BASE",),
    "ollama": ("OLLAMA_API_BASE",),
    "ollama_chat": ("OLLAMA_API_BASE",),
    "openrouter": ("OPENROUTER_API_BASE",),
    "anthropic": ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"),
}
PLACEHOLDER_KEY = "EMPTY"  # sent to local OpenAI-compatible servers that want no key


def chat_body(request: LLMRequest, model: str) -> dict[str, Any]:
    """The OpenAI ``/chat/completions`` fields of ``request`` (defaults left out)."""
    body: dict[str, Any] = {"model": model, "messages": request.messages, "temperature": request.temperature}
    if request.top_p != 1.0:
        body["top_p"] = request.top_p
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.n != 1:
        body["n"] = request.n
    return body


def api_base_for(prefix: str, request: LLMRequest) -> Optional[str]:
    if request.api_base:
        return request.api_base.rstrip("/")
    for var in BASE_ENV.get(prefix, ()):
        val = os.environ.get(var)
        if val:
            return val.rstrip("/")
    return None


def api_key_for(prefix: str, request: LLMRequest, api_base: Optional[str]) -> Optional[str]:
    """The key from ``api_key_env`` or the provider's usual variable; errors name the variable only."""
    if request.api_key_env:
        val = os.environ.get(request.api_key_env)
        if not val:
            raise MissingKeyError(
                f"missing API key for {request.model}: environment variable {request.api_key_env} is not set",
                f"export {request.api_key_env}=... (the config's api_key_env names it)",
            )
        from aflowctl.logging import register_secret

        register_secret(val)  # masked in logs, errors and stored rows whatever the variable's name
        return val
    names = KEY_ENV.get(prefix, ())
    for var in names:
        val = os.environ.get(var)
        if val:
            return val
    if api_base is not None:
        return PLACEHOLDER_KEY if prefix in ("openai", "hosted_vllm") else None
    if names and prefix not in KEYLESS:
        raise MissingKeyError(
            f"missing API key for {request.model}: environment variable {names[0]} is not set",
            f"export {names[0]}=..., or set api_key_env in the config to the variable that holds it",
        )
    return None


def is_loopback(url: Optional[str]) -> bool:
    if not url:
        return False
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_retry_after(value) -> Optional[float]:
    if value is None:
        return None
    try:
        secs = float(value)
    except (TypeError, ValueError):
        from datetime import datetime, timezone
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            return None
        secs = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, min(secs, 600.0))


def one_line(text: str, limit: int = 300) -> str:
    from aflowctl.logging import redact

    text = " ".join(str(text).split())
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_error(model: str, url: str, status: int, body: str, retry_after: Optional[float]) -> ProviderCallError:
    retryable = status == 429 or status >= 500 or status == 408
    if status in (401, 403):
        hint = "check the API key (its environment variable) and the model's access rights"
    elif status == 404:
        hint = "check the model name and the base URL"
    elif status == 429:
        hint = "lower llm.concurrency_per_model or set llm.requests_per_minute"
    else:
        hint = "see the provider's message above"
    return ProviderCallError(
        f"{model}: HTTP {status} from {url}: {one_line(body, 200)}",
        hint,
        retryable=retryable,
        status=status,
        retry_after=retry_after,
    )
