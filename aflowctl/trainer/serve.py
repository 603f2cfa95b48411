"""Serving a trained policy as the optimizer (`aflowctl optimize --policy`).

``--policy`` takes an exported policy directory (``aflowctl export-policy``), any
Hugging Face model directory, a trainer checkpoint directory, or a training run id
(its latest checkpoint). A checkpoint is exported once to a cached model directory
under ``models_dir()/policies``. The policy is served in-process by the ``local``
provider (on GPU when there is one) and its calls are logged with role ``policy``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from aflowctl.config import Config, ModelConfig
from aflowctl.errors import CheckpointError, NotFoundError


def _is_model_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())


def resolve_policy_dir(spec: str) -> Path:
    """A Hugging Face model directory for ``spec`` (exporting a checkpoint once)."""
    from aflowctl import paths

    p = Path(spec).expanduser()
    if _is_model_dir(p):
        return p.resolve()
    from aflowctl.trainer.export import export_policy, resolve_checkpoint

    try:
        info = resolve_checkpoint(spec)
    except NotFoundError:
        raise NotFoundError(
            f"policy '{spec}' does not exist (not a model directory, checkpoint or training run)",
            "pass the directory written by 'aflowctl export-policy', a checkpoint folder, or a training run id",
        ) from None
    key = hashlib.sha256(f"{Path(info.path).resolve()}:{info.step}".encode()).hexdigest()[:16]
    out = paths.models_dir() / "policies" / key
    if not _is_model_dir(out):
        export_policy(str(info.path), out, overwrite=True)
    return out


def _base_fingerprint(policy_dir: Path) -> str | None:
    meta = policy_dir / "aflowctl_policy.json"
    if meta.is_file():
        return (json.loads(meta.read_text()).get("base_model") or {}).get("fingerprint")
    from aflowctl.trainer.policy import model_fingerprint

    return model_fingerprint(policy_dir)


def check_policy(spec: str, cfg: Config) -> Path:
    """Refuse a policy that does not exist or was trained from another base model than
    the config's ``train.policy_model`` (default: the embedded SmolLM2)."""
    policy_dir = resolve_policy_dir(spec)
    from aflowctl.trainer.policy import model_fingerprint, resolve_policy_path

    try:
        base = resolve_policy_path(cfg.train.policy_model)
    except Exception as exc:  # noqa: BLE001 - the base model is unavailable: cannot compare
        raise CheckpointError(
            f"cannot check the policy's base model: {getattr(exc, 'message', exc)}",
            "set train.policy_model to the base model the policy was trained from",
        ) from None
    want = model_fingerprint(base)
    got = _base_fingerprint(policy_dir)
    if got is not None and got != want:
        raise CheckpointError(
            f"policy {spec} was trained from another base model ({got}) than the config names "
            f"({cfg.train.policy_model or 'the embedded SmolLM2'}: {want})",
            "set train.policy_model to the policy's base model, or pass a policy trained from this one",
        )
    return policy_dir


def policy_model_config(spec: str, base: ModelConfig) -> ModelConfig:
    """The ModelConfig that serves the policy through the local provider."""
    policy_dir = resolve_policy_dir(spec)
    return ModelConfig(
        model=f"local/{policy_dir}",
        temperature=base.temperature if base.temperature > 0 else 0.7,
        top_p=base.top_p,
        max_tokens=base.max_tokens or 768,
        timeout_s=max(base.timeout_s, 600.0),
    )


def describe(spec: str) -> dict[str, Any]:
    d = resolve_policy_dir(spec)
    meta = d / "aflowctl_policy.json"
    return {"dir": str(d), **(json.loads(meta.read_text()) if meta.is_file() else {})}


def serve_policy(cfg: Config) -> ModelConfig:
    """The ModelConfig serving ``cfg.optimize.policy`` after :func:`check_policy` accepted it."""
    spec = cfg.optimize.policy
    assert spec is not None, "serve_policy needs optimize.policy"
    check_policy(spec, cfg)
    return policy_model_config(spec, cfg.optimize.optimizer)
