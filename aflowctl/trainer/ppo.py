"""One policy update on a batch of collected steps.

GiGPO advantages (:mod:`aflowctl.trainer.advantages`), one value per step, broadcast to its
response tokens; behaviour (and reference) log-probs of every sampled token from the policy's
forward pass before the update (no gradient); then ``ppo_epochs`` optimizer steps of the
clipped surrogate (:mod:`.loss`), each over the whole batch in micro-batches with gradient
accumulation (token mean over the batch), gradient clipping, AdamW, learning rate
``lr_at(update)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aflowctl.trainer.episodes import StepRecord, derive_seed


@dataclass
class UpdateStats:
    """What one update measured (the trainer turns it into the update's metrics)."""

    lr: float
    losses: dict[str, float]  # token-weighted means over the last PPO epoch
    grad_norm: float
    response_tokens: int
    forward_tokens: int  # tokens through forward and backward passes, all epochs
    seconds: float


def micro_batches(idx: Sequence[int], size: int) -> list[list[int]]:
    return [list(idx[i : i + size]) for i in range(0, len(idx), size)]


def assign_advantages(records: list[StepRecord], t) -> dict:
    """GiGPO advantages of the steps, set on each record; returns the arrays."""
    import numpy as np

    from aflowctl.trainer.advantages import factorize, gigpo_advantages_arrays

    adv = gigpo_advantages_arrays(
        factorize(r.group_id for r in records),
        factorize(r.episode_id for r in records),
        np.array([r.t for r in records], dtype=np.int64),
        factorize(r.anchor for r in records),
        np.array([r.reward for r in records], dtype=np.float64),
        np.array([r.valid for r in records], dtype=bool),
        gamma=t.gamma,
        mode=t.mode,
        step_advantage_w=t.step_advantage_w,
        invalid_penalty=t.invalid_penalty,
    )
    for r, a in zip(records, adv["advantage"].tolist()):
        r.advantage = a
    return adv


def ppo_update(trainer, records: list[StepRecord], u: int) -> UpdateStats:
    """Update ``trainer.model`` on ``records`` (advantages already assigned) for update ``u``."""
    import torch

    from aflowctl.trainer import policy as pol
    from aflowctl.trainer.loss import ppo_loss

    t = trainer.t
    rolls = [r.rollout for r in records]
    pad = trainer.tok.pad_token_id
    order = list(range(len(records)))
    n_resp_tokens = sum(len(x.response_ids) for x in rolls)

    # behaviour (and reference) log-probs, same micro-batches as the first PPO epoch
    trainer.callback("phase", {"update": u, "phase": "policy update"})
    t1 = time.perf_counter()
    old: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for mb in micro_batches(order, t.micro_batch_size):
            ids, att, pos, resp, _ = pol.pack([rolls[i] for i in mb], pad, trainer.device)
            lp, _ = pol.response_logprobs(
                trainer.model, ids, att, pos, resp, temperature=t.temperature, autocast=trainer.autocast
            )
            for k, i in enumerate(mb):
                old[i] = lp[k, : len(rolls[i].response_ids)].detach()
            if t.use_kl:
                if trainer.ref_model is not None:
                    rlp, _ = pol.response_logprobs(
                        trainer.ref_model, ids, att, pos, resp, temperature=t.temperature, autocast=trainer.autocast
                    )
                else:
                    with trainer.model.disable_adapter():
                        rlp, _ = pol.response_logprobs(
                            trainer.model, ids, att, pos, resp, temperature=t.temperature, autocast=trainer.autocast
                        )
                for k, i in enumerate(mb):
                    ref[i] = rlp[k, : len(rolls[i].response_ids)].detach()
    for i, r in enumerate(rolls):
        r.old_logprobs = old[i].tolist()

    # PPO
    lr = trainer.lr(u)
    for g in trainer.optimizer.param_groups:
        g["lr"] = lr
    stats = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
    grad_norm = 0.0
    fb_tokens = 0
    for epoch in range(t.ppo_epochs):
        idx = order if epoch == 0 else random.Random(derive_seed(t.seed, "shuffle", u, epoch)).sample(order, len(order))
        trainer.optimizer.zero_grad(set_to_none=True)
        for mb in micro_batches(idx, t.micro_batch_size):
            ids, att, pos, resp, rmask = pol.pack([rolls[i] for i in mb], pad, trainer.device)
            lp, ent = pol.response_logprobs(
                trainer.model,
                ids,
                att,
                pos,
                resp,
                temperature=t.temperature,
                with_entropy=True,
                autocast=trainer.autocast,
            )
            old_t = torch.zeros_like(lp)
            ref_t = torch.zeros_like(lp) if t.use_kl else None
            for k, i in enumerate(mb):
                n = len(rolls[i].response_ids)
                old_t[k, :n] = old[i]
                if ref_t is not None:
                    ref_t[k, :n] = ref[i]
            a = torch.tensor([records[i].advantage for i in mb], dtype=torch.float32, device=lp.device)
            out = ppo_loss(
                lp,
                old_t,
                a,
                rmask,
                clip_low=t.clip_ratio_low,
                clip_high=t.clip_ratio_high,
                dual_clip_c=t.dual_clip_c,
                ref_logp=ref_t,
                kl_coef=t.kl_coef if t.use_kl else 0.0,
                entropy=ent if t.entropy_coef else ent.detach(),
                entropy_coef=t.entropy_coef,
            )
            w = float(rmask.sum()) / max(1, n_resp_tokens)
            (out.loss * w).backward()
            fb_tokens += int(att.sum())
            if epoch == t.ppo_epochs - 1:
                stats["loss"] += float(out.loss.detach()) * w
                stats["pg_loss"] += out.pg_loss * w
                stats["kl"] += out.kl * w
                stats["entropy"] += out.entropy * w
                stats["clip_frac"] += out.clip_frac * w
                stats["approx_kl"] += out.approx_kl * w
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainer.params, t.grad_clip))
        trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    t_upd = time.perf_counter() - t1
    return UpdateStats(lr, stats, grad_norm, n_resp_tokens, fb_tokens, t_upd)
