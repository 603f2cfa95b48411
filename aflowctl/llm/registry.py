"""Providers, collected from every plugin's ``register_providers`` hook by one
:class:`aflowctl.plugins.Registry`.

A plugin whose hook raises is recorded (see :func:`hook_errors`, shown by ``aflowctl
plugins list``) and does not hide the providers of the others. The first provider
registered under a name wins (built-ins load first).
"""

from __future__ import annotations

from typing import Any

from aflowctl.errors import ProviderError
from aflowctl.llm.types import split_model
from aflowctl.plugins import Provider, Registry, check_object


def _accept(plugin: str, provider: Any) -> tuple[str, Any]:
    return check_object(
        plugin,
        "provider",
        provider,
        Provider,
        name_hint="give the provider a `name` attribute: the model-string prefix, without '/'",
    ), provider


REGISTRY: Registry[Provider] = Registry(
    "register_providers",
    "provider",
    accept=_accept,
    error=ProviderError,
    hint="use one of those prefixes, or install a provider plugin (see `aflowctl plugins list` and docs/plugins.md)",
)


def providers() -> dict[str, Any]:
    """All registered providers by name (collected once per process, thread-safe)."""
    return REGISTRY.all()


def provider_names() -> list[str]:
    return sorted(REGISTRY.names())


def hook_errors() -> dict[str, str]:
    """Plugins whose ``register_providers`` hook raised: plugin name -> one line."""
    return REGISTRY.hook_errors()


def providers_by_plugin() -> dict[str, list[str]]:
    """Plugin name -> names of the providers it registered."""
    return REGISTRY.by_plugin()


def get_provider(name: str) -> Any:
    return REGISTRY.get(name)


def resolve(model: str) -> tuple[Any, str, str]:
    """``"openai/gpt-4o"`` -> ``(provider, "openai", "gpt-4o")``."""
    prefix, name = split_model(model)
    return get_provider(prefix), prefix, name
