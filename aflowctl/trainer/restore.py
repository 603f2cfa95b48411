"""The trainer's model state: the device, the policy and its optimizer from the base model or a
checkpoint (weights, LoRA adapter, AdamW state, RNG, counters), and the check that a checkpoint
belongs to this model and config."""

from __future__ import annotations

import random
from typing import Optional

from aflowctl.errors import CheckpointError, ConfigError


def pick_device(requested: Optional[str]) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"train.device = {requested} but no CUDA device is available",
                "set train.device = 'cpu' or leave it unset",
            )
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_checkpoint(trainer, ckpt) -> None:
    """Refuse a checkpoint of another base model or config (unless --force)."""
    from aflowctl.trainer import checkpoint as ck
    from aflowctl.trainer import policy as pol

    fingerprint = pol.model_fingerprint(pol.resolve_policy_path(trainer.t.policy_model))
    problems = ck.compatibility_problems(
        ckpt.state, config=trainer._config_dict(), model_fingerprint=fingerprint, lora=trainer.t.lora
    )
    if problems and not trainer.force:
        raise CheckpointError(
            f"checkpoint {ckpt.path.name} of run {trainer.run_id} belongs to another model or config: "
            + "; ".join(problems),
            "resume with the run's own config (omit --config), or pass --force to use it anyway",
        )


def load_model(trainer, ckpt) -> None:
    """Load the policy (base model, or the checkpoint's weights), the reference model, AdamW, and
    the RNG and counters of ``ckpt`` (seeded afresh without one)."""
    import torch

    from aflowctl.trainer import checkpoint as ck
    from aflowctl.trainer import policy as pol

    trainer.device = pick_device(trainer.t.device)
    trainer.autocast = "cuda" if (trainer.device.startswith("cuda") and trainer.t.bf16) else None
    base = pol.resolve_policy_path(trainer.t.policy_model)
    trainer.base_path = base
    trainer.fingerprint = pol.model_fingerprint(base)
    lora = {"r": trainer.t.lora_r, "alpha": trainer.t.lora_alpha} if trainer.t.lora else None
    if ckpt is not None:
        check_checkpoint(trainer, ckpt)
    if ckpt is not None and not trainer.t.lora:
        trainer.model, trainer.tok = pol.load_policy(
            ckpt.model_dir, device=trainer.device, gradient_checkpointing=trainer.t.gradient_checkpointing
        )
    else:
        trainer.model, trainer.tok = pol.load_policy(
            base, device=trainer.device, lora=lora, gradient_checkpointing=trainer.t.gradient_checkpointing
        )
        if ckpt is not None:  # LoRA: put the adapter weights back
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(trainer.model, load_file(str(ckpt.model_dir / "adapter_model.safetensors")))
    trainer.model.train()
    trainer.ref_model = None
    if trainer.t.use_kl and not trainer.t.lora:
        trainer.ref_model, _ = pol.load_policy(base, device=trainer.device)
        trainer.ref_model.eval()
        for p in trainer.ref_model.parameters():
            p.requires_grad_(False)
    trainer.params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.AdamW(trainer.params, lr=trainer.t.lr, weight_decay=trainer.t.weight_decay)
    if ckpt is not None:
        trainer.optimizer.load_state_dict(ckpt.load_optimizer_state(trainer.device))
        ck.restore_rng(ckpt.load_rng_state())
        trainer.counters.update(ckpt.state.get("counters", {}))
        trainer.last_checkpoint = ckpt.path
    else:
        random.seed(trainer.t.seed)
        import numpy as np

        np.random.seed(trainer.t.seed % (2**32))
        torch.manual_seed(trainer.t.seed)
