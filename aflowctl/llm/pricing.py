"""Model prices from litellm's bundled cost map, read as JSON without importing litellm.

Used for the cost of calls answered outside litellm (the direct HTTP path) and for
the worst-case estimate that the budget check needs before a call.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from pathlib import Path
from typing import Optional

_lock = threading.Lock()
_map: Optional[dict] = None

# Output tokens assumed when a request gives no max_tokens and the map gives no limit.
DEFAULT_WORST_CASE_OUTPUT_TOKENS = 4096


def _cost_map() -> dict:
    global _map
    with _lock:
        if _map is None:
            _map = {}
            spec = importlib.util.find_spec("litellm")
            if spec is not None and spec.submodule_search_locations:
                for loc in spec.submodule_search_locations:
                    p = Path(loc) / "model_prices_and_context_window_backup.json"
                    if p.is_file():
                        try:
                            _map = json.loads(p.read_text())
                        except (OSError, ValueError):
                            _map = {}
                        break
        return _map


_user_prices: dict[str, dict] = {}


def register_prices(prices: dict) -> None:
    """Prices from the config (``[llm.prices."provider/model"]``); they win over litellm's map."""
    for key, p in (prices or {}).items():
        d = p.model_dump() if hasattr(p, "model_dump") else dict(p)
        with _lock:
            _user_prices[key] = {
                "input_cost_per_token": float(d["input_cost_per_token"]),
                "output_cost_per_token": float(d["output_cost_per_token"]),
            }


def model_info(provider: str, model: str) -> Optional[dict]:
    """The cost-map entry of ``provider/model`` (``None`` if unknown)."""
    user = _user_prices.get(f"{provider}/{model}")
    if user is not None:
        return user
    cm = _cost_map()
    for key in (f"{provider}/{model}", model):
        info = cm.get(key)
        if isinstance(info, dict) and "input_cost_per_token" in info:
            if (
                key == model
                and info.get("litellm_provider") not in (None, provider)
                and provider
                not in (
                    "litellm",
                    "hosted_vllm",
                )
            ):
                # e.g. "gpt-4o" priced for openai, asked via openrouter: a different price
                if not (provider == "openai" and info.get("litellm_provider") == "text-completion-openai"):
                    continue
            return info
    return None


def prices(provider: str, model: str) -> Optional[tuple[float, float]]:
    """(USD per input token, USD per output token), or ``None`` when unknown."""
    info = model_info(provider, model)
    if info is None:
        return None
    return float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0)


def cost(provider: str, model: str, prompt_tokens: Optional[int], completion_tokens: Optional[int]) -> Optional[float]:
    p = prices(provider, model)
    if p is None or prompt_tokens is None or completion_tokens is None:
        return None
    return prompt_tokens * p[0] + completion_tokens * p[1]


def estimate_prompt_tokens(messages: list) -> int:
    """A deliberately high estimate of the prompt's token count (2 characters per token)."""
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else len(json.dumps(c))
    return math.ceil(chars / 2) + 8 * len(messages) + 8


def worst_case_cost(provider: str, model: str, messages: list, max_tokens: Optional[int], n: int) -> Optional[float]:
    """Upper bound of the cost of ``n`` samples, or ``None`` when the price is unknown."""
    info = model_info(provider, model)
    if info is None:
        return None
    out = max_tokens
    if out is None:
        out = int(info.get("max_output_tokens") or info.get("max_tokens") or DEFAULT_WORST_CASE_OUTPUT_TOKENS)
        out = min(out, DEFAULT_WORST_CASE_OUTPUT_TOKENS)
    pin, pout = float(info.get("input_cost_per_token") or 0.0), float(info.get("output_cost_per_token") or 0.0)
    return n * (estimate_prompt_tokens(messages) * pin + out * pout)
