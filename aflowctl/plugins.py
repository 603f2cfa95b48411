"""The plugin manager: built-in plugins plus entry-point plugins of group ``aflowctl``.

``AFLOWCTL_LOAD_PLUGINS`` (comma-separated distribution or entry-point names; empty
means none) limits which installed plugins load; built-ins always load. Under tests
(``sys._called_from_test``) installed plugins load only when that variable names them.
A plugin that fails to import is recorded in :func:`load_errors` and never crashes.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from importlib.metadata import entry_points
from typing import Any

import pluggy

from aflowctl import hookspecs

ENTRY_POINT_GROUP = "aflowctl"

# Modules inside aflowctl that implement hooks, loaded on every start.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "aflowctl.llm.providers.builtin",
    "aflowctl.benchmarks.builtin",
    "aflowctl.workflow.builtin",
)

# Modules that collect objects from the hooks; each has _reset() (and hook_errors()).
REGISTRIES: tuple[str, ...] = ("aflowctl.llm.registry", "aflowctl.benchmarks", "aflowctl.workflow.registry")

_pm: pluggy.PluginManager | None = None
_pm_lock = threading.RLock()
_load_errors: dict[str, str] = {}
_plugin_dists: dict[str, tuple[str, str]] = {}  # plugin name -> (dist name, version)
_failed_dists: dict[str, tuple[str, str]] = {}  # plugins that failed to load -> (dist name, version)


def _wanted() -> set[str] | None:
    env = os.environ.get("AFLOWCTL_LOAD_PLUGINS")
    if env is None:
        return set() if getattr(sys, "_called_from_test", False) else None
    return {p.strip() for p in env.split(",") if p.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading plugins on first use (thread-safe)."""
    if _pm is not None:
        return _pm
    with _pm_lock:
        if _pm is not None:
            return _pm
        return _build()


def _build() -> pluggy.PluginManager:
    global _pm
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # part not built yet in this checkout
                continue
            raise
        pm.register(mod, name=modname)
    wanted = _wanted()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.name if dist is not None else ep.name
        if wanted is not None and ep.name not in wanted and dist_name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()  # a hookimpl of an unknown hook is this plugin's error
            _plugin_dists[ep.name] = (dist_name, dist.version if dist is not None else "")
        except Exception as exc:  # a broken plugin is reported, never fatal
            _load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            _failed_dists[ep.name] = (dist_name, dist.version if dist is not None else "")
            try:  # half-registered: take it out again
                if pm.get_plugin(ep.name) is not None:
                    pm.unregister(name=ep.name)
            except Exception:  # noqa: BLE001
                pass
    pm.check_pending()
    _pm = pm
    return pm


def reset() -> None:
    """Forget the manager (tests, or after changing AFLOWCTL_LOAD_PLUGINS)."""
    global _pm
    _pm = None
    _load_errors.clear()
    _plugin_dists.clear()
    _failed_dists.clear()
    for mod in REGISTRIES:
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "_reset"):
            m._reset()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object at run time (tests and embedding applications)."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    reset_caches = [sys.modules.get(m) for m in REGISTRIES]
    for m in reset_caches:
        if m is not None and hasattr(m, "_reset"):
            m._reset()


def load_errors() -> dict[str, str]:
    get_plugin_manager()
    return dict(_load_errors)


def list_plugins() -> list[dict[str, Any]]:
    """Each plugin: name, package, version, hooks implemented, providers it registered,
    and its error if it failed to load or its hook raised (``None`` otherwise)."""
    pm = get_plugin_manager()
    from aflowctl import __version__

    hook_errors: dict[str, list[str]] = {}
    provided: dict[str, list[str]] = {}
    for modname in REGISTRIES:  # each registry calls its hook, and records plugins whose hook raised
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # pragma: no cover - part missing from this checkout
            continue
        errs = getattr(mod, "hook_errors", None)
        if callable(errs):
            for plugin_name, err in errs().items():
                hook_errors.setdefault(plugin_name, []).append(err)
        if modname == "aflowctl.llm.registry":
            provided = mod.providers_by_plugin()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist, ver = _plugin_dists.get(name, ("aflowctl", __version__))
        out.append(
            {
                "name": name,
                "package": dist,
                "version": ver,
                "hooks": hooks,
                "providers": sorted(provided.get(name, [])),
                "error": "; ".join(hook_errors[name]) if name in hook_errors else None,
            }
        )
    for name, err in _load_errors.items():
        dist = _failed_dists.get(name, (None, None))
        out.append({"name": name, "package": dist[0], "version": dist[1], "hooks": [], "providers": [], "error": err})
    return out


def collect_registrations(
    hook_name: str, accept: Any, what: str
) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, str]]:
    """Call every implementation of ``register_*`` hook ``hook_name`` with a callback.

    Implementations are walked in registration order (built-ins first; pluggy would
    *call* them the other way round), so the first registration of a name wins.
    ``accept(plugin, *args, **kwargs) -> (name, value)`` checks one registration and
    raises :class:`~aflowctl.errors.PluginError` for a bad one. A hook that raises is
    recorded and does not hide the others. Returns (name -> value, plugin -> names,
    plugin -> error line).
    """
    from loguru import logger

    pm = get_plugin_manager()
    found: dict[str, Any] = {}
    by_plugin: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin_name = impl.plugin_name

        def register(*args: Any, _plugin: str = plugin_name, **kwargs: Any) -> None:
            name, value = accept(_plugin, *args, **kwargs)
            if name in found:
                logger.warning("{} {!r} from plugin {} ignored: already registered", what, name, _plugin)
                return
            found[name] = value
            by_plugin.setdefault(_plugin, []).append(name)

        try:
            impl.function(register=register)
        except Exception as exc:  # a broken plugin must not take the others down
            errors[plugin_name] = f"{hook_name} raised {type(exc).__name__}: {exc}"
            logger.warning("plugin {} failed in {}: {}", plugin_name, hook_name, exc)
    return found, by_plugin, errors

