"""What this machine can train (for ``aflowctl doctor``): devices, memory, a suggestion."""

from __future__ import annotations

import os
from typing import Any

# bytes per parameter of a full fine-tune with AdamW in fp32 (weights, grads, 2 moments)
FULL_FT_BYTES_PER_PARAM = 16
# LoRA: frozen weights only (bf16 on GPU), adapters and their optimizer are small
LORA_BYTES_PER_PARAM = 2


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def training_capabilities() -> dict[str, Any]:
    """Devices, memory and the largest policy each can fully fine-tune or LoRA-train (rough, activations aside)."""
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "cuda": torch.cuda.is_available(),
        "gpus": [],
    }
    for i in range(torch.cuda.device_count() if out["cuda"] else 0):
        p = torch.cuda.get_device_properties(i)
        mem = p.total_memory / 2**30
        out["gpus"].append(
            {
                "index": i,
                "name": p.name,
                "memory_gb": round(mem, 1),
                "bf16": bool(torch.cuda.is_bf16_supported()),
                "full_finetune_max_params_b": round(0.6 * mem * 2**30 / FULL_FT_BYTES_PER_PARAM / 1e9, 2),
                "lora_max_params_b": round(0.6 * mem * 2**30 / LORA_BYTES_PER_PARAM / 1e9, 1),
            }
        )
    if out["gpus"]:
        g = max(out["gpus"], key=lambda x: x["memory_gb"])
        out["suggestion"] = (
            f"train on cuda:{g['index']} ({g['name']}): full fine-tune up to ~{g['full_finetune_max_params_b']}B "
            f"parameters, LoRA up to ~{g['lora_max_params_b']}B (configs/train/deep.toml)"
        )
    else:
        ram = out["ram_gb"] or 0
        out["suggestion"] = (
            "CPU only: the embedded SmolLM2-135M trains (about 6 GB RAM and ~20 s per update of 8 x 64 tokens "
            "on 2 cores; configs/train/test.toml)"
            if ram >= 8
            else "CPU only with little RAM: use train.lora = true or a smaller policy"
        )
    return out
