"""Shared helpers of the trainer tests: a tiny random Llama with the embedded tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TINY_NAME = "tiny-llama-h64-l2-s20-seed0"


def tiny_policy_dir() -> Path:
    """The tiny test policy, built once into the shared models cache (AFLOWCTL_MODELS_DIR)."""
    from aflowctl import paths
    from aflowctl.trainer.policy import make_tiny_policy

    out = paths.models_dir() / TINY_NAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_policy(tmp, seed=0, hidden=64, layers=2, head_scale=20.0)
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def keyword_config_toml(policy: Path, *, keyword: str = "measures", epochs: int = 6, lr: float = 3e-3,
                        extra: str = "") -> str:
    return f"""
[train]
env = "keyword"
keyword = "{keyword}"
policy_model = "{policy}"
episodes_per_group = 8
groups_per_batch = 2
max_new_tokens = 4
lr = {lr}
entropy_coef = 0.0
epochs = {epochs}
micro_batch_size = 8
checkpoint_every = 1
keep_checkpoints = 3
{extra}
"""
