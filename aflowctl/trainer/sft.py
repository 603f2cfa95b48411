"""Offline warm start: supervised fine-tuning on (prompt, action) pairs from ``experiences``.

``aflowctl train --from-experiences RUN_ID...`` reads the experiences that
``aflowctl optimize`` (with any optimizer model) or earlier training runs recorded,
and trains the policy to produce the recorded responses:

* ``sft_mode = "filter"``: keep valid experiences with reward > ``sft_min_reward``,
  each weighted 1 (reward-filtered behaviour cloning);
* ``sft_mode = "weight"``: keep every valid experience, weighted by
  softmax(reward / ``sft_beta``) over the pairs, scaled so that the mean weight is 1
  (reward-weighted regression).

The loss is the weighted token-mean negative log-likelihood of the response tokens.
The prompt column holds the chat messages as JSON (a plain string is taken as one
user message).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from aflowctl.errors import NotFoundError
from aflowctl.trainer import TrainingError


@dataclass
class Pair:
    messages: list
    response: str
    weight: float
    reward: float


def _messages(prompt: str) -> list:
    try:
        val = json.loads(prompt)
    except ValueError:
        val = None
    if isinstance(val, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in val):
        return val
    return [{"role": "user", "content": prompt}]


def load_pairs(store, run_ids: Sequence[str], train_cfg) -> list[Pair]:
    """The weighted (prompt, response) pairs of the given runs; raises when there are none."""
    from sqlmodel import col, select

    from aflowctl.store import Experience, Run

    with store.read() as s:
        missing = [r for r in run_ids if s.get(Run, r) is None]
        if missing:
            raise NotFoundError(f"run(s) {', '.join(missing)} do not exist", "see 'aflowctl inspect runs'")
        rows = s.exec(select(Experience).where(col(Experience.run_id).in_(list(run_ids))).order_by(Experience.id)).all()
    usable = [r for r in rows if r.valid and r.prompt.strip() and r.action_text.strip()]
    if train_cfg.sft_mode == "filter":
        usable = [r for r in usable if r.reward > train_cfg.sft_min_reward]
    if not usable:
        raise TrainingError(
            f"no usable experiences in run(s) {', '.join(run_ids)} ({len(rows)} rows; need valid ones with a prompt "
            f"and a response"
            + (f" and reward > {train_cfg.sft_min_reward}" if train_cfg.sft_mode == "filter" else "")
            + ")",
            "run 'aflowctl optimize' first, lower train.sft_min_reward, or use train.sft_mode = 'weight'",
        )
    if train_cfg.sft_mode == "weight":
        rs = [r.reward / train_cfg.sft_beta for r in usable]
        m = max(rs)
        ex = [math.exp(x - m) for x in rs]
        z = sum(ex)
        weights = [len(ex) * e / z for e in ex]
    else:
        weights = [1.0] * len(usable)
    pairs = [Pair(_messages(r.prompt), r.action_text, w, r.reward) for r, w in zip(usable, weights)]
    if train_cfg.sft_max_pairs:
        pairs = pairs[: train_cfg.sft_max_pairs]
    return pairs


def run_sft(trainer, run_ids: Sequence[str]) -> dict:
    """Fine-tune ``trainer.model`` on the pairs of ``run_ids``; returns summary metrics."""
    import time

    import torch

    from aflowctl.trainer import policy as pol

    t = trainer.t
    pairs = load_pairs(trainer.store, run_ids, t)
    tok = trainer.tok
    eos = tok.eos_token_id
    rolls = []
    for p in pairs:
        ids = tok(p.response, add_special_tokens=False)["input_ids"][: t.max_new_tokens]
        rolls.append(pol.Rollout(pol.render_prompt_ids(tok, p.messages), ids + [eos], p.response, "stop"))
    opt = torch.optim.AdamW(trainer.params, lr=t.sft_lr, weight_decay=t.weight_decay)
    rng = random.Random(t.seed)
    losses = []
    tokens = 0
    t0 = time.perf_counter()
    order = list(range(len(rolls)))
    for epoch in range(t.sft_epochs):
        rng.shuffle(order)
        for start in range(0, len(order), t.micro_batch_size):
            mb = order[start : start + t.micro_batch_size]
            ids, att, pos, resp, rmask = pol.pack([rolls[i] for i in mb], tok.pad_token_id, trainer.device)
            lp, _ = pol.response_logprobs(trainer.model, ids, att, pos, resp, autocast=trainer.autocast)
            w = torch.tensor([pairs[i].weight for i in mb], dtype=lp.dtype, device=lp.device)[:, None]
            loss = -(lp * rmask * w).sum() / rmask.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.params, t.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            tokens += int(att.sum())
            trainer.callback("sft", {"epoch": epoch, "step": len(losses), "loss": losses[-1]})
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    return {
        "sft_pairs": len(pairs),
        "sft_steps": len(losses),
        "sft_loss_first": losses[0],
        "sft_loss_last": losses[-1],
        "sft_reward_mean": sum(p.reward for p in pairs) / len(pairs),
        "tokens_per_s": tokens / max(dt, 1e-9),
    }
