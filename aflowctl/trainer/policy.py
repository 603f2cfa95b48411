"""The trained policy: loading it, sampling from it, and its log-probs in torch.

Loading and generation go through :mod:`aflowctl.llm.local_model` when it provides
them (the same loader as the ``local`` provider); the trainer computes the
log-probs of sampled tokens itself with the policy's own forward pass.

Batch layout for a forward pass: prompts left-padded to a common length P,
responses right-padded to a common length R; the logits of positions P-1..P+R-2
predict the R response tokens, so only the last R+1 positions are materialised
(``logits_to_keep``), which keeps the [tokens x vocabulary] tensor small.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from aflowctl.trainer import TrainingError

TINY_MARKER = "aflowctl_tiny"


@dataclass
class Rollout:
    """One sampled response: token ids of prompt and response, behaviour log-probs."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str
    old_logprobs: Optional[list[float]] = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def _embedded_gguf() -> Path:
    """The embedded SmolLM2 GGUF (the same lookup as the local provider's)."""
    from aflowctl.errors import AflowctlError
    from aflowctl.llm.local_model import embedded_gguf

    try:
        return embedded_gguf()
    except AflowctlError as exc:
        raise TrainingError(
            exc.message, (exc.hint or "") + ", or set train.policy_model to an HF model directory"
        ) from None


def embedded_tokenizer_dir() -> Path:
    """The embedded SmolLM2 tokenizer as an HF folder (converted once from the GGUF, cached)."""
    from aflowctl import paths

    out = paths.models_dir() / "smollm2-tokenizer"
    if (out / "tokenizer_config.json").is_file():
        return out
    from transformers import AutoTokenizer

    gguf = _embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_tiny_policy(
    out_dir: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, head_scale: float = 1.0
) -> Path:
    """Write a small randomly initialised Llama with the embedded tokenizer to ``out_dir``.

    For tests and benchmarks: it trains and samples in milliseconds on a CPU. The
    output head is untied and multiplied by ``head_scale``: a random model's
    next-token distribution is nearly uniform over the 49k tokens, a scale of ~20
    gives it a few likely tokens (entropy ~6 nats), which an RL test can reinforce.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / f"{TINY_MARKER}.json").write_text(
        json.dumps({"seed": seed, "hidden": hidden, "layers": layers, "head_scale": head_scale})
    )
    return out


def resolve_policy_path(spec: Optional[str]) -> Path:
    """An HF model directory for ``spec`` (None: the embedded SmolLM2, converted once)."""
    if spec is not None:
        p = Path(spec).expanduser()
        hub_id = not p.exists() and spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
        if not p.exists() and not hub_id:
            raise TrainingError(
                f"policy model path {p} does not exist",
                "set train.policy_model (or --policy-model) to an HF model directory or a GGUF file",
            )
        if p.is_dir():
            if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
                raise TrainingError(
                    f"policy model directory {p} has no config.json",
                    "point train.policy_model at a Hugging Face model directory (config.json + weights)",
                )
            return p
    from aflowctl.errors import ProviderError
    from aflowctl.llm import local_model

    try:
        return Path(local_model.resolve(spec))
    except ProviderError as exc:
        raise TrainingError(
            f"cannot resolve the policy model: {exc.message}",
            "set train.policy_model to an HF model directory, a GGUF file or a hub id",
        ) from None


def model_fingerprint(path: Path) -> str:
    """A short hash identifying the base model (its config.json, or the adapter's base)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        cfg = path / "adapter_config.json"
    data = json.loads(cfg.read_text())
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"):
        data.pop(k, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_policy(path: Path, *, device: str = "cpu", lora: Optional[dict] = None, gradient_checkpointing: bool = False):
    """A fresh (never shared) trainable copy of the model at ``path`` and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        # Any: a PreTrainedModel, or the PeftModel wrapping it below
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainingError(
            f"cannot load the policy model from {path}: {str(exc).splitlines()[0]}",
            "check that the directory holds a Hugging Face causal LM",
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise TrainingError("LoRA needs peft", "pip install 'aflowctl[lora]' or set train.lora = false") from None
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=0.0,
                target_modules="all-linear",
            ),
        )
    model.to(device)
    return model, tok


# --------------------------------------------------------------------------- sampling


def render_prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sample(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    *,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 16,
    device: str = "cpu",
) -> list[Rollout]:
    """Sample one response per prompt (chat messages) from the current policy.

    Generation is :func:`aflowctl.llm.local_model.generate_batch` (left padding, KV
    cache, batched on the model's device) in chunks of ``batch_size``; row ``i`` is
    seeded with ``seed + i``, so a resumed run samples exactly what an uninterrupted
    one would, whatever the batching.
    """
    from aflowctl.llm.local_model import generate_batch

    out: list[Rollout] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [list(m) for m in prompts[start : start + batch_size]]
            res = generate_batch(
                model,
                tokenizer,
                chunk,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=[(seed + start + i) % (2**63) for i in range(len(chunk))],
            )
            for r in res:
                out.append(
                    Rollout(
                        list(r.prompt_ids),
                        list(r.token_ids),
                        r.text,
                        r.finish_reason,
                        meta={"sample_logprobs": list(r.logprobs)},
                    )
                )
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- log-probs


def pack(batch: Sequence[Rollout], pad_id: int, device: str = "cpu"):
    """(input_ids, attention_mask, position_ids, response_ids, response_mask) for a micro-batch."""
    import torch

    P = max(len(r.prompt_ids) for r in batch)
    R = max(max(len(r.response_ids) for r in batch), 1)
    n = len(batch)
    ids = torch.full((n, P + R), pad_id, dtype=torch.long)
    att = torch.zeros((n, P + R), dtype=torch.long)
    resp = torch.full((n, R), pad_id, dtype=torch.long)
    rmask = torch.zeros((n, R), dtype=torch.float32)
    for i, r in enumerate(batch):
        lp, lr = len(r.prompt_ids), len(r.response_ids)
        ids[i, P - lp : P] = torch.tensor(r.prompt_ids, dtype=torch.long)
        att[i, P - lp : P + lr] = 1
        if lr:
            ids[i, P : P + lr] = torch.tensor(r.response_ids, dtype=torch.long)
            resp[i, :lr] = torch.tensor(r.response_ids, dtype=torch.long)
            rmask[i, :lr] = 1.0
    pos = (att.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), att.to(device), pos.to(device), resp.to(device), rmask.to(device)


def response_logprobs(
    model, ids, att, pos, resp, *, temperature: float = 1.0, with_entropy: bool = False, autocast: Optional[str] = None
):
    """Per-token log-probs of the response tokens (and their entropy) under ``model``."""
    import contextlib

    import torch

    R = resp.shape[1]
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast == "cuda" else contextlib.nullcontext()
    with ctx:
        logits = model(
            input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=R + 1, use_cache=False
        ).logits
    logits = logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    ent = None
    if with_entropy:
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent
