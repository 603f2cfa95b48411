"""Plain data types of the LLM layer: requests, samples, the provider protocol.

A provider is any object with a ``name`` (the prefix of model strings it answers,
``"local"`` for ``local/smollm2``) and ``async complete(request) -> list[Sample]``
returning ``request.n`` samples. Providers raise :class:`ProviderCallError` (or any
:class:`~aflowctl.errors.ProviderError`); ``retryable=True`` asks the router to try
again after a back-off (``retry_after`` seconds when the server said so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Protocol, Union, runtime_checkable

from aflowctl.errors import ProviderError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
PromptOrMessages = Union[str, Sequence[Message]]

# Sampling parameters that change the answer: they are part of the request hash.
SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")


@dataclass(frozen=True)
class LLMRequest:
    """One chat-completion request for ``n`` samples. ``model`` is ``provider/model``."""

    messages: list
    model: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: Optional[int] = None
    stop: Optional[list] = None
    seed: Optional[int] = None
    n: int = 1
    api_base: Optional[str] = None
    api_key_env: Optional[str] = None
    timeout_s: Optional[float] = None
    # "auto" | "litellm" | "direct": how OpenAI-compatible servers are reached (not hashed)
    transport: Optional[str] = None

    @property
    def provider_name(self) -> str:
        return split_model(self.model)[0]

    @property
    def model_name(self) -> str:
        """The model string without its provider prefix."""
        return split_model(self.model)[1]

    def sampling_params(self) -> dict:
        return {k: getattr(self, k) for k in SAMPLING_FIELDS}

    def with_(self, **changes: Any) -> LLMRequest:
        return replace(self, **changes)

    def request_hash(self) -> str:
        """Hash of (provider, model, messages, sampling parameters): the cache and replay key.

        ``n``, ``api_base``, keys and timeouts are not part of it; the sample index
        is stored next to it (``llm_calls.sample_index``).
        """
        provider, model = split_model(self.model)
        blob = json.dumps(
            {"provider": provider, "model": model, "messages": self.messages, "params": self.sampling_params()},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class Sample:
    """One generated answer. ``cost_usd`` is ``None`` when unknown (never a silent 0)."""

    text: str
    finish_reason: Optional[str]
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    cost_usd: Optional[float]
    latency_s: float
    provider: str
    model: str
    cached: bool = False
    token_ids: Optional[list] = None
    logprobs: Optional[list] = None
    request_hash: Optional[str] = field(default=None, compare=False)
    sample_index: int = field(default=0, compare=False)

    @property
    def total_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Usage:
    """What a set of LLM calls used: the one counter of calls, tokens and cost (the
    facade :class:`~aflowctl.llm.client.LLM`, a workflow's ``WorkflowLLM`` and a
    problem's scope each keep one). ``cost_usd`` sums the known costs;
    ``unknown_cost_calls`` counts the samples whose cost nobody could tell."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unknown_cost_calls: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def known_cost(self) -> Optional[float]:
        """``None`` when calls were made and none had a known cost (never a silent 0)."""
        return None if self.calls and self.unknown_cost_calls == self.calls else self.cost_usd

    def add(self, sample: Any) -> None:
        """Count one sample (anything with ``prompt_tokens``, ``completion_tokens``, ``cost_usd``)."""
        self.calls += 1
        self.prompt_tokens += int(getattr(sample, "prompt_tokens", 0) or 0)
        self.completion_tokens += int(getattr(sample, "completion_tokens", 0) or 0)
        cost = getattr(sample, "cost_usd", None)
        if cost is None:
            self.unknown_cost_calls += 1
        else:
            self.cost_usd += float(cost)


@runtime_checkable
class Provider(Protocol):
    """What a provider plugin registers."""

    name: str

    async def complete(self, request: LLMRequest) -> list[Sample]: ...


class ProviderCallError(ProviderError):
    """A provider call failed. Picklable (crosses process pools).

    ``retryable``: a rate limit, 5xx, timeout or connection error worth retrying;
    ``status``: the HTTP status if any; ``retry_after``: seconds the server asked to wait.
    """

    def __init__(
        self,
        message: str,
        hint: Optional[str] = None,
        *,
        retryable: bool = False,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
    ):
        super().__init__(message, hint)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self):
        return (_rebuild_call_error, (self.message, self.hint, self.retryable, self.status, self.retry_after))


def _rebuild_call_error(message, hint, retryable, status, retry_after):
    return ProviderCallError(message, hint, retryable=retryable, status=status, retry_after=retry_after)


def split_model(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o"`` -> ``("openai", "gpt-4o")``; a clear error for anything else."""
    if not isinstance(model, str) or "/" not in model:
        raise ProviderError(
            f"malformed model string {model!r}: expected provider/model",
            "write it as provider/model, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-sonnet-20240620 "
            "or local/smollm2",
        )
    provider, _, name = model.partition("/")
    provider = provider.strip()
    if not provider or not name.strip() or any(c.isspace() for c in provider):
        raise ProviderError(
            f"malformed model string {model!r}: expected provider/model",
            "write it as provider/model, e.g. openai/gpt-4o-mini or local/smollm2",
        )
    return provider, name


def to_messages(prompt_or_messages: PromptOrMessages, system: Optional[str] = None) -> list:
    """A prompt string or a list of messages -> a fresh list of ``{"role", "content"}`` dicts."""
    if isinstance(prompt_or_messages, str):
        msgs = [{"role": "user", "content": prompt_or_messages}]
    else:
        msgs = []
        for m in prompt_or_messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ProviderError(
                    f"bad chat message {m!r}", "pass a string or a list of {'role': ..., 'content': ...} dicts"
                )
            msgs.append({"role": str(m["role"]), "content": m["content"]})
    if system is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs
