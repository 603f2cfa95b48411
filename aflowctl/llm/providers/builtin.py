"""Built-in providers, registered through the same hook as any plugin."""

from __future__ import annotations

from aflowctl.hookspecs import hookimpl


@hookimpl
def register_providers(register):
    from aflowctl.llm.providers.litellm_provider import providers as litellm_providers
    from aflowctl.llm.providers.local import LocalProvider
    from aflowctl.llm.providers.replay import ReplayProvider

    for p in litellm_providers():
        register(p)
    register(LocalProvider())
    register(ReplayProvider())
