"""Benchmarks of the GiGPO trainer; prints one JSON summary.

    python bench/bench_trainer.py                 # CPU: advantages + update throughput vs TRL
    python bench/bench_trainer.py --model tiny    # the same on a tiny random Llama (seconds)
    python bench/bench_trainer.py --gpu           # GPU: ~0.5B random Qwen2-shaped model, utilisation

1. ``gigpo_advantages`` on 1,000,000 step rows (groups of 8 episodes x 5 steps, 3
   anchor states per group): the plain entry point (list of dicts in and out) and the
   array form it uses inside.
2. Update throughput, tokens/s of forward+backward (prompt + response tokens), of the
   trainer's loss path (``pack`` -> ``response_logprobs`` with entropy ->
   ``ppo_loss`` -> ``backward``) against TRL's ``GRPOTrainer.compute_loss`` + backward
   (loss_type "bnpo" = token mean, beta 0) on the same model, batch and lengths,
   measured in one run, alternating the two. Without trl installed, a plain
   hand-written reference loop (full-sequence logits, log_softmax, gather) stands in
   and the summary says so.
3. ``--gpu``: a randomly initialised Qwen2-0.5B-shaped model (no network needed), bf16
   autocast, full PPO updates (forward+backward+AdamW) in micro-batches; reports
   tokens/s and GPU utilisation sampled every 0.1 s during the updates (nvidia-smi or
   pynvml), peak memory. Self-contained (torch, transformers, numpy, aflowctl) and
   bounded to about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------- advantages


def bench_advantages(n: int = 1_000_000) -> dict:
    from aflowctl.trainer.advantages import factorize, gigpo_advantages, gigpo_advantages_arrays

    rng = random.Random(0)
    steps = [
        {"group_id": i // 40, "episode_id": (i // 5) % 8, "t": i % 5, "anchor": f"s{rng.randrange(3)}",
         "reward": rng.random(), "valid": rng.random() > 0.1}
        for i in range(n)
    ]
    t0 = time.perf_counter()
    out = gigpo_advantages(steps, gamma=0.95, mode="mean_std_norm", step_advantage_w=1.0, invalid_penalty=0.1)
    total = time.perf_counter() - t0
    assert len(out) == n
    group = factorize(s["group_id"] for s in steps)
    episode = factorize((s["group_id"], s["episode_id"]) for s in steps)
    anchor = factorize(s["anchor"] for s in steps)
    t = np.array([s["t"] for s in steps], dtype=np.int64)
    r = np.array([s["reward"] for s in steps])
    v = np.array([s["valid"] for s in steps])
    t0 = time.perf_counter()
    gigpo_advantages_arrays(group, episode, t, anchor, r, v, gamma=0.95, mode="mean_std_norm", step_advantage_w=1.0,
                            invalid_penalty=0.1)
    arrays = time.perf_counter() - t0
    return {"steps": n, "total_s": round(total, 3), "array_form_s": round(arrays, 3)}


# --------------------------------------------------------------------------- CPU update throughput


def _batch(tok_vocab: int, batch: int, prompt_len: int, completion_len: int, seed: int = 0):
    from aflowctl.trainer.policy import Rollout

    g = np.random.default_rng(seed)
    rolls = []
    for i in range(batch):
        p = g.integers(10, tok_vocab - 10, prompt_len).tolist()
        c = g.integers(10, tok_vocab - 10, completion_len).tolist()
        rolls.append(Rollout(p, c, "", "length"))
    adv = g.standard_normal(batch).astype(np.float32)
    return rolls, adv


def ours_fwd_bwd(model, rolls, adv, pad_id, micro: int, device: str = "cpu", autocast=None) -> float:
    """One forward+backward of the trainer's loss path over the batch; returns seconds."""
    import torch

    from aflowctl.trainer import policy as pol
    from aflowctl.trainer.loss import ppo_loss

    n_tok = sum(len(r.response_ids) for r in rolls)
    t0 = time.perf_counter()
    for s in range(0, len(rolls), micro):
        mb = rolls[s : s + micro]
        ids, att, pos, resp, rmask = pol.pack(mb, pad_id, device)
        lp, ent = pol.response_logprobs(model, ids, att, pos, resp, with_entropy=True, autocast=autocast)
        a = torch.tensor(adv[s : s + micro], device=lp.device)
        out = ppo_loss(lp, lp.detach(), a, rmask, entropy=ent, entropy_coef=0.0)
        (out.loss * float(rmask.sum()) / n_tok).backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def make_trl_trainer(model, tokenizer, batch: int, completion_len: int, workdir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=workdir, per_device_train_batch_size=batch, num_generations=batch,
                      max_completion_length=completion_len, loss_type="bnpo", beta=0.0, report_to="none",
                      use_cpu=True, bf16=False, logging_steps=1000, save_strategy="no")
    ds = Dataset.from_dict({"prompt": ["x"] * batch})
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                          args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def trl_fwd_bwd(trainer, model, rolls, adv) -> float:
    import torch

    P = len(rolls[0].prompt_ids)
    inputs = {
        "prompt_ids": torch.tensor([r.prompt_ids for r in rolls]),
        "prompt_mask": torch.ones((len(rolls), P), dtype=torch.long),
        "completion_ids": torch.tensor([r.response_ids for r in rolls]),
        "completion_mask": torch.ones((len(rolls), len(rolls[0].response_ids)), dtype=torch.long),
        "advantages": torch.tensor(adv),
        "num_items_in_batch": torch.tensor(float(sum(len(r.response_ids) for r in rolls))),
    }
    t0 = time.perf_counter()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return time.perf_counter() - t0


def reference_fwd_bwd(model, rolls, adv) -> float:
    """A plain hand-written loop: logits of the whole sequence, log_softmax, gather, token mean."""
    import torch

    ids = torch.tensor([r.prompt_ids + r.response_ids for r in rolls])
    P, C = len(rolls[0].prompt_ids), len(rolls[0].response_ids)
    t0 = time.perf_counter()
    logits = model(input_ids=ids).logits[:, P - 1 : P + C - 1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(lp - lp.detach())
    loss = -(torch.tensor(adv)[:, None] * ratio).mean()
    loss.backward()
    return time.perf_counter() - t0


def bench_cpu_update(model_kind: str, batch: int, prompt_len: int, completion_len: int, repeats: int) -> dict:
    import tempfile

    import torch

    from aflowctl.trainer.policy import load_policy, make_tiny_policy, resolve_policy_path

    if model_kind == "tiny":
        path = make_tiny_policy(Path(tempfile.mkdtemp()) / "tiny", hidden=64, layers=2)
    else:
        path = resolve_policy_path(None)
    model, tok = load_policy(path)
    model.train()
    rolls, adv = _batch(len(tok), batch, prompt_len, completion_len)
    tokens = batch * (prompt_len + completion_len)
    baseline = "trl.GRPOTrainer.compute_loss"
    try:
        import trl  # noqa: F401

        trainer = make_trl_trainer(model, tok, batch, completion_len, tempfile.mkdtemp())
        other = lambda: trl_fwd_bwd(trainer, model, rolls, adv)  # noqa: E731
        baseline += f" (trl {trl.__version__})"
    except ImportError:
        baseline = "hand-written reference loop (trl not installed)"
        other = lambda: reference_fwd_bwd(model, rolls, adv)  # noqa: E731
    ours_t, other_t = [], []
    # warm-up once each, then alternate
    ours_fwd_bwd(model, rolls, adv, tok.pad_token_id, micro=batch)
    model.zero_grad(set_to_none=True)
    other()
    model.zero_grad(set_to_none=True)
    for _ in range(repeats):
        ours_t.append(ours_fwd_bwd(model, rolls, adv, tok.pad_token_id, micro=batch))
        model.zero_grad(set_to_none=True)
        other_t.append(other())
        model.zero_grad(set_to_none=True)
    o, b = float(np.median(ours_t)), float(np.median(other_t))
    return {
        "model": str(path.name), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch": batch, "prompt_len": prompt_len, "completion_len": completion_len, "threads": torch.get_num_threads(),
        "ours_s": [round(x, 3) for x in ours_t], "baseline_s": [round(x, 3) for x in other_t],
        "ours_tokens_per_s": round(tokens / o, 1), "baseline_tokens_per_s": round(tokens / b, 1),
        "speedup": round(b / o, 3), "baseline": baseline,
    }


# --------------------------------------------------------------------------- GPU


class _UtilSampler(threading.Thread):
    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[float] = []
        self.active = threading.Event()
        self.stop_flag = threading.Event()
        self.source = None
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            self.source = "pynvml"
        except Exception:  # noqa: BLE001
            self._read = self._smi
            self.source = "nvidia-smi"

    @staticmethod
    def _smi() -> float:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0])

    def run(self):
        while not self.stop_flag.is_set():
            if self.active.is_set():
                try:
                    self.samples.append(self._read())
                except Exception:  # noqa: BLE001
                    pass
            time.sleep(self.interval)


def bench_gpu(budget_s: float = 120.0, batch: int = 16, prompt_len: int = 768, completion_len: int = 256,
              micro: int = 8, grad_ckpt: bool = False) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from aflowctl.trainer.loss import ppo_loss
    from aflowctl.trainer import policy as pol

    if not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    dev = "cuda"
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, rope_theta=1_000_000.0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dev)
    model.config.use_cache = False
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)
    rolls, adv = _batch(cfg.vocab_size, batch, prompt_len, completion_len)
    tokens = batch * (prompt_len + completion_len)
    sampler = _UtilSampler()
    sampler.start()
    times, fb_times = [], []
    t_start = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    n_tok = sum(len(r.response_ids) for r in rolls)
    try:
        while time.perf_counter() - t_start < budget_s:
            if len(times) == 1:
                sampler.active.set()  # the first update is warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            # behaviour log-probs (no grad), then the PPO step, as the trainer does
            old = []
            with torch.no_grad():
                for s in range(0, batch, micro):
                    ids, att, pos, resp, _ = pol.pack(rolls[s : s + micro], 0, dev)
                    lp, _ = pol.response_logprobs(model, ids, att, pos, resp, autocast="cuda")
                    old.append(lp)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for k, s in enumerate(range(0, batch, micro)):
                ids, att, pos, resp, rmask = pol.pack(rolls[s : s + micro], 0, dev)
                lp, ent = pol.response_logprobs(model, ids, att, pos, resp, with_entropy=True, autocast="cuda")
                out = ppo_loss(lp, old[k], torch.tensor(adv[s : s + micro], device=dev), rmask, entropy=ent,
                               entropy_coef=0.001)
                (out.loss * float(rmask.sum()) / n_tok).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            times.append(t2 - t0)
            fb_times.append(t2 - t1)
    except torch.cuda.OutOfMemoryError:
        sampler.stop_flag.set()
        return {"error": f"out of GPU memory at batch {batch} x {prompt_len + completion_len} tokens, micro {micro}: "
                         "lower --micro or use --grad-ckpt"}
    sampler.stop_flag.set()
    sampler.active.clear()
    meas = times[1:] or times
    fbm = fb_times[1:] or fb_times
    util = sampler.samples
    return {
        "device": torch.cuda.get_device_name(0), "model": "Qwen2-0.5B-shaped (random init)",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "dtype": "fp32 weights, bf16 autocast",
        "batch": batch, "prompt_len": prompt_len, "completion_len": completion_len, "micro_batch": micro,
        "gradient_checkpointing": grad_ckpt, "updates": len(times), "update_s_median": round(float(np.median(meas)), 3),
        "update_tokens_per_s": round(tokens / float(np.median(meas)), 1),
        "fwd_bwd_step_tokens_per_s": round(tokens / float(np.median(fbm)), 1),
        "gpu_util_mean": round(float(np.mean(util)), 1) if util else None,
        "gpu_util_median": round(float(np.median(util)), 1) if util else None, "util_samples": len(util),
        "util_source": sampler.source, "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="GPU mode (random ~0.5B Qwen2-shaped model)")
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2", help="CPU throughput model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=170)
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1_000_000, help="rows for the advantages benchmark")
    ap.add_argument("--skip-advantages", action="store_true")
    ap.add_argument("--budget-s", type=float, default=120.0, help="GPU mode: seconds of updates")
    ap.add_argument("--micro", type=int, default=8, help="GPU mode: micro-batch size")
    ap.add_argument("--grad-ckpt", action="store_true", help="GPU mode: gradient checkpointing")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary: dict = {"python": sys.version.split()[0]}
    if not args.skip_advantages:
        summary["gigpo_advantages"] = bench_advantages(args.steps)
    if args.gpu:
        summary["gpu_update"] = bench_gpu(budget_s=args.budget_s, micro=args.micro, grad_ckpt=args.grad_ckpt)
    else:
        summary["cpu_update"] = bench_cpu_update(args.model, args.batch, args.prompt_len, args.completion_len, args.repeats)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
