"""Config fields' roles: every field of :mod:`aflowctl.config` declares what it means for a
run (:class:`Role`), and the key sets that decide what may change on resume, what
``compare`` groups by and what makes two evaluations the same are derived from them here.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, Field


class Role(str, Enum):
    """What a config field means for a run; every field declares one (``role`` metadata).

    The role decides what may change when a run is resumed, what ``compare`` groups
    runs by, and what makes two ``evaluate`` commands the same evaluation.
    """

    EXPERIMENT = "experiment"  # defines the experiment: fixed for a run's life, compared
    RESUMABLE = "resumable"  # a limit (rounds, budget, epochs): may change on resume, compared
    RESOURCE = "resource"  # resource only (workers, retries, timeouts): may change on resume, not compared
    SEED = "seed"  # the random seed: fixed for a run's life; runs differing only in it are replicates


ROLE_DOCS = {
    Role.EXPERIMENT: (
        "defines the experiment: a resumed run must keep it (or pass --force); `compare` groups runs by it"
    ),
    Role.RESUMABLE: "a limit: may change when a run is resumed; `compare` still groups runs by it",
    Role.RESOURCE: (
        "resource only: may change when a run is resumed; ignored by `compare` and by `evaluate`'s resume check"
    ),
    Role.SEED: (
        "the random seed: a resumed run must keep it; `compare` treats runs that differ only in it as replicates"
    ),
}


def _f(default: Any = ..., *, role: Role, description: str, **kw: Any) -> Any:
    """A config field with its role (see :class:`Role`) and its description (docs/config.md)."""
    return Field(default, description=description, json_schema_extra={"role": role.value}, **kw)


def _section(model: type, description: str) -> Any:
    """A nested table: its fields carry their own roles."""
    return Field(default_factory=model, description=description)


def _nested_model(annotation: Any) -> Optional[type[BaseModel]]:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def iter_fields(model: Optional[type[BaseModel]] = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, FieldInfo)`` of every leaf field (keys as written in a config file)."""
    if model is None:
        from aflowctl.config import Config

        model = Config
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        sub = _nested_model(info.annotation)
        if sub is not None:
            yield from iter_fields(sub, key + ".")
        else:
            yield key, info


def field_role(info: Any) -> Optional[Role]:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return Role(extra["role"]) if "role" in extra else None


def role_of(key: str) -> Role:
    """The role of a dotted config key (a key below a dict field, such as
    ``llm.prices.openai/x.input_cost_per_token``, has that field's role). Unknown keys
    count as :attr:`Role.EXPERIMENT`, the safe choice."""
    from aflowctl.config import Config

    model: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return Role.EXPERIMENT
        sub = _nested_model(info.annotation)
        if sub is None or i == len(parts) - 1:
            return field_role(info) or Role.EXPERIMENT
        model = sub
    return Role.EXPERIMENT


def keys_with_role(*roles: Role) -> set[str]:
    """Dotted keys of every leaf field whose role is one of ``roles``."""
    return {k for k, info in iter_fields() if field_role(info) in roles}


def changeable_on_resume(key: str) -> bool:
    """May this key differ between a run's stored config and the config it resumes with?"""
    return role_of(key) in (Role.RESUMABLE, Role.RESOURCE)


def conflicting_keys(stored: dict, new: dict) -> list[str]:
    """Keys that differ between a run's stored config and a new one and may not change on
    resume. A key one side lacks (a field added or removed since the run was stored)
    conflicts only when the other side's value is not the field's default."""
    from aflowctl.config import Config

    a, b = flatten(stored), flatten(new)
    defaults = flatten(Config().model_dump(mode="json", by_alias=True))
    out = []
    for key in diff_configs(stored, new):
        if changeable_on_resume(key):
            continue
        if (key not in a or key not in b) and (a.get(key, b.get(key)) == defaults.get(key, object())):
            continue
        out.append(key)
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{dotted key: value}``."""
    out: dict[str, Any] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def defining_values(cfg_json: dict, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The flattened values under ``prefixes`` that define a result (roles experiment and seed)."""
    flat = flatten(cfg_json)
    return {
        k: v for k, v in sorted(flat.items()) if k.startswith(prefixes) and role_of(k) in (Role.EXPERIMENT, Role.SEED)
    }


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff_configs(va, vb, name + "."))
        elif va != vb:
            out.append(name)
    return out
