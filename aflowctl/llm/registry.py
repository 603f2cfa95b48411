"""Providers, collected from every plugin's ``register_providers`` hook.

Each hook implementation is called on its own, so a plugin whose hook raises is
recorded (see :func:`hook_errors`, shown by ``aflowctl plugins list``) and does not
hide the providers of the others. The first provider registered under a name wins
(built-ins load first).
"""

from __future__ import annotations

import threading
from typing import Any, Optional


from aflowctl.errors import PluginError, ProviderError
from aflowctl.llm.types import split_model

_lock = threading.RLock()
_providers: Optional[dict[str, Any]] = None
_hook_errors: dict[str, str] = {}
_by_plugin: dict[str, list[str]] = {}


def _reset() -> None:
    """Forget the collected providers (called by :func:`aflowctl.plugins.reset`)."""
    global _providers
    with _lock:
        _providers = None
        _hook_errors.clear()
        _by_plugin.clear()


def _accept(plugin: str, provider: Any) -> tuple[str, Any]:
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise PluginError(
            f"plugin {plugin} registered a provider without a valid name ({name!r})",
            "give the provider a `name` attribute: the model-string prefix, without '/'",
        )
    if not callable(getattr(provider, "complete", None)):
        raise PluginError(
            f"plugin {plugin} registered provider {name!r} without an async complete(request) method",
            "implement `async def complete(self, request) -> list[Sample]`",
        )
    return name, provider


def _collect() -> dict[str, Any]:
    from aflowctl.plugins import collect_registrations

    found, by_plugin, errors = collect_registrations("register_providers", _accept, "provider")
    _hook_errors.clear()
    _hook_errors.update(errors)
    _by_plugin.clear()
    _by_plugin.update(by_plugin)
    return found


def providers() -> dict[str, Any]:
    """All registered providers by name (collected once per process, thread-safe)."""
    global _providers
    with _lock:
        if _providers is None:
            _providers = _collect()
        return _providers


def provider_names() -> list[str]:
    return sorted(providers())


def hook_errors() -> dict[str, str]:
    """Plugins whose ``register_providers`` hook raised: plugin name -> one line."""
    providers()
    return dict(_hook_errors)


def providers_by_plugin() -> dict[str, list[str]]:
    """Plugin name -> names of the providers it registered."""
    providers()
    return {k: list(v) for k, v in _by_plugin.items()}


def get_provider(name: str) -> Any:
    provs = providers()
    if name in provs:
        return provs[name]
    broken = ""
    if _hook_errors:
        broken = "; plugins that failed to register: " + ", ".join(f"{k} ({v})" for k, v in _hook_errors.items())
    from aflowctl.plugins import load_errors

    failed_loads = load_errors()
    if failed_loads:
        broken += "; plugins that failed to load: " + ", ".join(sorted(failed_loads))
    raise ProviderError(
        f"unknown provider {name!r}; installed providers: {', '.join(sorted(provs)) or '(none)'}{broken}",
        "use one of those prefixes, or install a provider plugin (see `aflowctl plugins list` and docs/plugins.md)",
    )


def resolve(model: str) -> tuple[Any, str, str]:
    """``"openai/gpt-4o"`` -> ``(provider, "openai", "gpt-4o")``."""
    prefix, name = split_model(model)
    return get_provider(prefix), prefix, name
