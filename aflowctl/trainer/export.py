"""Export a trained policy as a plain Hugging Face model directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from aflowctl.errors import CheckpointError, ConfigError, NotFoundError


def resolve_checkpoint(source: str, *, fallback: bool = False):
    """A verified checkpoint from a run id (its latest) or a checkpoint directory."""
    from aflowctl import paths
    from aflowctl.trainer import checkpoint as ck

    p = Path(source).expanduser()
    if p.is_dir() and (p / ck.MANIFEST).exists():
        return ck.load_checkpoint(p)
    if p.is_dir() and (p / ck.LATEST).exists():  # a checkpoints/ folder
        info = ck.latest_checkpoint(p.parent, fallback=fallback)
        if info is not None:
            return info
    run_dir = paths.run_dir(source) if "/" not in source else None
    if run_dir is not None and run_dir.is_dir():
        info = ck.latest_checkpoint(run_dir, fallback=fallback)
        if info is None:
            raise NotFoundError(f"training run '{source}' has no checkpoint yet", "train it first (aflowctl train)")
        return info
    raise NotFoundError(
        f"'{source}' is neither a training run id nor a checkpoint directory",
        "pass a run id from 'aflowctl inspect runs --kind train' or a checkpoints/step-N folder",
    )


def export_policy(source: str, out: str | Path, *, overwrite: bool = False, fallback: bool = False) -> Path:
    """Write the policy of ``source`` (run id or checkpoint dir) to ``out`` as an HF model directory.

    A LoRA checkpoint is merged into its base model. Returns ``out``.
    """
    info = resolve_checkpoint(source, fallback=fallback)
    out = Path(out).expanduser()
    occupied = (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir())
    if occupied:
        if not overwrite:
            raise ConfigError(f"output directory {out} exists and is not empty", "pick another path or pass --force")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model_dir = info.model_dir
    try:
        if (model_dir / "adapter_config.json").is_file():
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            base_path = info.state.get("model", {}).get("path")
            if not base_path or not Path(base_path).is_dir():
                raise CheckpointError(
                    f"the base model of {info.path} ({base_path}) is not available",
                    "restore the base model directory to merge the LoRA adapter",
                )
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
            merged = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
            merged.save_pretrained(str(tmp), safe_serialization=True)
            AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(tmp))
        else:
            shutil.copytree(model_dir, tmp)
        (tmp / "aflowctl_policy.json").write_text(
            json.dumps(
                {
                    "source_checkpoint": str(info.path),
                    "step": info.step,
                    "run_id": info.state.get("run_id"),
                    "policy_version": info.state.get("policy_version"),
                    "base_model": info.state.get("model", {}),
                    "config_hash": info.state.get("config_hash"),
                },
                indent=2,
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
