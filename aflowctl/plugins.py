"""The plugin manager, the contracts of what plugins provide, and the one registry.

* :func:`get_plugin_manager`: built-in plugins plus entry-point plugins of group
  ``aflowctl``. ``AFLOWCTL_LOAD_PLUGINS`` (comma-separated distribution or entry-point
  names; empty means none) limits which installed plugins load; built-ins always load.
  Under tests (``sys._called_from_test``) installed plugins load only when that
  variable names them. A plugin that fails to import is recorded in
  :func:`load_errors` and never crashes.
* :class:`Provider`, :class:`Benchmark`, :class:`Operator`: what the ``register_*``
  hooks hand over, as :class:`typing.Protocol` classes; their optional extension
  points are the ``*Extensions`` protocols.
* :class:`Registry`: the objects one ``register_*`` hook provides, collected once per
  process (thread-safe), checked against their protocol, first registration of a name
  wins, a hook that raises recorded in :meth:`Registry.hook_errors` without hiding the
  others. Providers (:mod:`aflowctl.llm.registry`), benchmarks
  (:mod:`aflowctl.benchmarks`) and operators (:mod:`aflowctl.workflow.registry`) are
  three instances of it.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Optional, Protocol, TypeVar

import pluggy

from aflowctl.errors import AflowctlError, PluginError

if TYPE_CHECKING:
    from aflowctl.llm.types import LLMRequest, Sample

ENTRY_POINT_GROUP = "aflowctl"

# Modules inside aflowctl that implement hooks, loaded on every start.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "aflowctl.llm.providers.builtin",
    "aflowctl.benchmarks.builtin",
    "aflowctl.workflow.builtin",
)

# Modules that hold a Registry (imported by list_plugins so that every hook is collected).
REGISTRIES: tuple[str, ...] = ("aflowctl.llm.registry", "aflowctl.benchmarks", "aflowctl.workflow.registry")

_pm: pluggy.PluginManager | None = None
_pm_lock = threading.RLock()
_load_errors: dict[str, str] = {}
_plugin_dists: dict[str, tuple[str, str]] = {}  # plugin name -> (dist name, version)
_failed_dists: dict[
    str, tuple[Optional[str], Optional[str]]
] = {}  # plugins that failed to load -> (dist name, version)


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
    from aflowctl import hookspecs  # hookspecs imports this module's protocols

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
    for registry in list(_registries):
        registry.reset()


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object at run time (tests and embedding applications)."""
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    for registry in list(_registries):
        registry.reset()


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
    for modname in REGISTRIES:
        try:
            importlib.import_module(modname)
        except ImportError:  # pragma: no cover - part missing from this checkout
            continue
    for registry in list(_registries):  # each registry calls its hook, and records plugins whose hook raised
        for plugin_name, err in registry.hook_errors().items():
            hook_errors.setdefault(plugin_name, []).append(err)
        if registry.hook == "register_providers":
            provided = registry.by_plugin()
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
        package, version = _failed_dists.get(name, (None, None))
        out.append({"name": name, "package": package, "version": version, "hooks": [], "providers": [], "error": err})
    return out


# --------------------------------------------------------------------------- contracts


class Provider(Protocol):
    """An LLM provider, handed to ``register_providers``'s callback.

    It answers the model strings ``<name>/<model>``; the router does caching, the
    budget, concurrency limits, retries and the call log around it."""

    #: the model-string prefix it answers (``"echo"`` answers ``echo/upper``); no ``/``
    name: str

    async def complete(self, request: LLMRequest) -> list[Sample]:
        """Exactly ``request.n`` samples; a failure raises ``ProviderCallError``."""
        ...


class ProviderExtensions(Protocol):
    """Optional members of a :class:`Provider`; the router uses each one that is present."""

    #: ``True`` for in-process models a timeout cannot interrupt (no per-call timeout)
    timeout_exempt: bool

    def worst_case_cost(self, request: LLMRequest) -> float | None:
        """The most the call can cost (USD), for the budget check; ``None`` when unknown."""
        ...


class Benchmark(Protocol):
    """A benchmark, handed to ``register_benchmarks``'s callback.

    Subclassing :class:`aflowctl.benchmarks.base.Benchmark` gives ``load``,
    ``problem_id`` and the ``aflowctl data`` support; ``inputs``, ``expected`` and
    ``score`` are the benchmark's own."""

    #: lower case, used on the command line and in file names
    name: str
    #: ``"math"``, ``"qa"`` or ``"code"``
    kind: str

    def load(self, split: str) -> list[dict[str, Any]]:
        """The problems of ``split``: rows of AFlow's JSONL."""
        ...

    def inputs(self, problem: dict[str, Any]) -> tuple[Any, ...]:
        """The workflow's call arguments after the problem: ``(question,)`` or ``(prompt, entry_point)``."""
        ...

    def score(self, prediction: Any, problem: dict[str, Any]) -> float:
        """The workflow's raw answer scored in ``[0, 1]``."""
        ...

    def problem_id(self, problem: dict[str, Any], index: int) -> str:
        """The problem's own id, or its index in the split."""
        ...

    def expected(self, problem: dict[str, Any]) -> str:
        """The gold answer, shown to the optimizer next to failed cases (from round 2 on)."""
        ...


class BenchmarkExtensions(Protocol):
    """Optional members of a :class:`Benchmark`; each is used when present."""

    #: the splits it knows (``aflowctl data list``)
    splits: tuple[str, ...]
    #: the folder of the splits shipped with the plugin (searched last)
    package_dir: Path | None
    #: where the shipped splits came from (``aflowctl data list``)
    data_source: str | None

    def public_tests(self, problem: dict[str, Any]) -> list[str]:
        """Code benchmarks: the assert lines a workflow's Test operator may see (never the evaluation test)."""
        ...

    def hub_rows(self, split: str) -> tuple[list[dict[str, Any]], str]:
        """``aflowctl data fetch``: the split's rows from the Hugging Face hub, and where they came from."""
        ...


class Operator(Protocol):
    """A workflow operator. ``register_operators``'s callback takes the class: a workflow
    constructs it with the executor LLM (``operator.Shout(self.llm)``) and awaits it
    with keyword arguments. :class:`aflowctl.workflow.operators.Operator` is a base."""

    async def __call__(self, **kwargs: Any) -> dict[str, Any]:
        """Run the operator; the result's keys are the ones its description names."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """Public attributes and methods a protocol declares (its ``__call__`` included)."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is Protocol:
            continue
        for name in [*getattr(cls, "__annotations__", {}), *vars(cls)]:
            if (name == "__call__" or not name.startswith("_")) and name not in names:
                names.append(name)
    return names


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks (methods must be callable)."""
    missing = []
    for name in protocol_members(protocol):
        declared = getattr(protocol, name, None)
        value = getattr(obj, name, None)
        if value is None or (callable(declared) and not callable(value)):
            missing.append(f"{name}()" if callable(declared) else name)
    return missing


# --------------------------------------------------------------------------- the registry

T = TypeVar("T")
_registries: list[Registry[Any]] = []


class Registry(Generic[T]):
    """The objects registered through one ``register_*`` hook.

    :param hook: the hook's name, e.g. ``"register_benchmarks"``.
    :param what: what one object is called in messages (``"benchmark"``).
    :param accept: ``accept(plugin_name, *args, **kwargs) -> (name, value)``: checks
        one call of the plugin's ``register`` callback; raises
        :class:`~aflowctl.errors.PluginError` for a bad one.
    :param error: the error class of an unknown name, with ``hint`` as its hint.
    :param key: normalises a name looked up with :meth:`get` (tried after the name itself).

    Objects are collected on first use, once per process (thread-safe), and again
    after :func:`reset` or :func:`register_plugin`. Implementations are walked in
    registration order (built-ins first; pluggy would *call* them the other way
    round), so the first registration of a name wins.
    """

    def __init__(
        self,
        hook: str,
        what: str,
        *,
        accept: Callable[..., tuple[str, T]],
        error: type[AflowctlError],
        hint: str,
        key: Callable[[str], str] = str,
    ) -> None:
        self.hook, self.what, self.hint = hook, what, hint
        self._accept, self._error, self._key = accept, error, key
        self._lock = threading.RLock()
        self._found: Optional[dict[str, T]] = None
        self._errors: dict[str, str] = {}
        self._by_plugin: dict[str, list[str]] = {}
        _registries.append(self)

    def reset(self) -> None:
        """Forget what was collected (the next use collects again)."""
        with self._lock:
            self._found = None
            self._errors = {}
            self._by_plugin = {}

    def _collect(self) -> dict[str, T]:
        from loguru import logger

        found: dict[str, T] = {}
        for impl in getattr(get_plugin_manager().hook, self.hook).get_hookimpls():
            plugin_name = impl.plugin_name

            def register(*args: Any, _plugin: str = plugin_name, **kwargs: Any) -> None:
                name, value = self._accept(_plugin, *args, **kwargs)
                if name in found:
                    logger.warning("{} {!r} from plugin {} ignored: already registered", self.what, name, _plugin)
                    return
                found[name] = value
                self._by_plugin.setdefault(_plugin, []).append(name)

            try:
                impl.function(register=register)
            except Exception as exc:  # a broken plugin must not take the others down
                self._errors[plugin_name] = f"{self.hook} raised {type(exc).__name__}: {exc}"
                logger.warning("plugin {} failed in {}: {}", plugin_name, self.hook, exc)
        return found

    def all(self) -> dict[str, T]:
        """Every registered object by name, in registration order."""
        with self._lock:
            if self._found is None:
                self._errors, self._by_plugin = {}, {}
                self._found = self._collect()
            return self._found

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self.all())

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the registered ones
        and the plugins that failed to load or register."""
        found = self.all()
        for k in (name, self._key(name)):
            if k in found:
                return found[k]
        broken = ""
        if self._errors:
            broken = "; plugins that failed to register: " + ", ".join(f"{k} ({v})" for k, v in self._errors.items())
        failed_loads = load_errors()
        if failed_loads:
            broken += "; plugins that failed to load: " + ", ".join(sorted(failed_loads))
        raise self._error(
            f"unknown {self.what} {name!r}; installed {self.what}s: {', '.join(sorted(found)) or '(none)'}{broken}",
            self.hint,
        )

    def hook_errors(self) -> dict[str, str]:
        """Plugins whose hook raised (or registered a bad object): plugin name -> one line."""
        self.all()
        return dict(self._errors)

    def by_plugin(self) -> dict[str, list[str]]:
        """Plugin name -> the names it registered."""
        self.all()
        return {k: list(v) for k, v in self._by_plugin.items()}


def check_object(
    plugin: str, what: str, obj: Any, protocol: type, *, name_hint: str, unimplemented: tuple[str, ...] = ()
) -> str:
    """The name ``obj`` registers under, once it is a valid name (non-empty, no ``/``, no
    outer spaces) and ``obj`` has every member of ``protocol``; else :class:`PluginError`
    naming what is missing (``unimplemented``: members known to be stubs)."""
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
        raise PluginError(f"plugin {plugin} registered a {what} without a valid name ({name!r})", name_hint)
    missing = missing_members(obj, protocol) + list(unimplemented)
    if missing:
        raise PluginError(
            f"plugin {plugin} registered {what} {name!r} without {', '.join(missing)}",
            f"implement the {what} contract (docs/plugins.md, {protocol.__name__})",
        )
    return name
