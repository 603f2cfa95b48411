"""Providers, collected from every plugin's ``register_providers`` hook.

Each hook implementation is called on its own, so a plugin whose hook raises is
recorded (see :func:`hook_errors`, shown by ``aflowctl plugins list``) and does not
hide the providers of the others. The first provider registered under a name wins
(built-ins load first).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from loguru import logger

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


def _collect() -> dict[str, Any]:
    from aflowctl.plugins import get_plugin_manager

    pm = get_plugin_manager()
    found: dict[str, Any] = {}
    errors: dict[str, str] = {}
    by_plugin: dict[str, list[str]] = {}
    # get_hookimpls() lists implementations in registration order (pluggy *calls* them
    # in reverse); walk them in registration order so that built-ins come first.
    for impl in pm.hook.register_providers.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(provider: Any, _plugin: str = plugin_name) -> None:
            name = getattr(provider, "name", None)
            if not isinstance(name, str) or not name or "/" in name:
                raise PluginError(
                    f"plugin {_plugin} registered a provider without a valid name ({name!r})",
                    "give the provider a `name` attribute: the model-string prefix, without '/'",
                )
            if not callable(getattr(provider, "complete", None)):
                raise PluginError(
                    f"plugin {_plugin} registered provider {name!r} without an async complete(request) method",
                    "implement `async def complete(self, request) -> list[Sample]`",
                )
            if name in found:
                logger.warning("provider {!r} from plugin {} ignored: already registered", name, _plugin)
                return
            found[name] = provider
            by_plugin.setdefault(_plugin, []).append(name)

        try:
            impl.function(register=register)
        except Exception as exc:  # a broken plugin must not take the others down
            errors[plugin_name] = f"register_providers raised {type(exc).__name__}: {exc}"
            logger.warning("plugin {} failed in register_providers: {}", plugin_name, exc)
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
