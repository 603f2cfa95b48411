"""The LLM layer: provider plugins, the router (retries, limits, cache, budget, call
log) and the per-role :class:`~aflowctl.llm.client.LLM` facade.

Nothing heavy is imported here: litellm, torch and transformers load lazily inside
the providers that need them.
"""

from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample

__all__ = ["LLMRequest", "Sample", "ProviderCallError"]
