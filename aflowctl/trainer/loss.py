"""The policy loss: PPO clipped surrogate with dual clip, k3 KL penalty, entropy bonus.

All terms are aggregated as a **token mean** over the response tokens of the batch
(``mask`` = 1 on response tokens, 0 on padding). Tensors are ``[batch, tokens]``.

* ratio = exp(logp - old_logp) (the log-ratio clamped to +-20 for stability);
* clipped surrogate: max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high));
* dual clip (Ye et al. 2020), for A < 0 only: min(that, -A * c), c = ``dual_clip_c`` > 1;
* KL to a frozen reference, k3 "low_var_kl": exp(ref - logp) - (ref - logp) - 1,
  clamped to [-10, 10];
* entropy of the policy's token distribution (a bonus: subtracted from the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the tokens where ``mask`` is 1 (0 if there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref), clamped to [-10, 10]."""
    kl = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(kl) - kl - 1.0).clamp(-KL_CLAMP, KL_CLAMP)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits) over the last dimension."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return logz - (probs * logits).sum(-1)


def ppo_token_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip_c: Optional[float] = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped-surrogate losses and a per-token "clipped" indicator (float)."""
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).float()
    if dual_clip_c is not None:
        lower = -advantages * dual_clip_c
        dual = torch.minimum(loss, lower)
        loss = torch.where(advantages < 0, dual, loss)
    return loss, was_clipped


@dataclass
class LossOutput:
    loss: torch.Tensor
    pg_loss: float
    clip_frac: float
    kl: float
    entropy: float
    approx_kl: float  # k1 between behaviour and current policy, for monitoring


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: Optional[float] = 3.0,
    ref_logp: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    entropy: Optional[torch.Tensor] = None,
    entropy_coef: float = 0.0,
) -> LossOutput:
    """The total loss (token mean) and its parts.

    ``advantages`` may be ``[batch]`` (one value per sequence, broadcast to its
    tokens) or ``[batch, tokens]``. ``entropy`` is the per-token entropy (see
    :func:`entropy_from_logits`); ``ref_logp`` the reference policy's log-probs.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    advantages = advantages.to(logp.dtype)
    mask = mask.to(logp.dtype)
    pg, was_clipped = ppo_token_losses(
        logp, old_logp, advantages, clip_low=clip_low, clip_high=clip_high, dual_clip_c=dual_clip_c
    )
    pg_loss = token_mean(pg, mask)
    total = pg_loss
    kl_val = 0.0
    if ref_logp is not None and kl_coef > 0:
        kl = token_mean(low_var_kl(logp, ref_logp), mask)
        total = total + kl_coef * kl
        kl_val = float(kl.detach())
    ent_val = 0.0
    if entropy is not None:
        ent = token_mean(entropy, mask)
        if entropy_coef:
            total = total - entropy_coef * ent
        ent_val = float(ent.detach())
    with torch.no_grad():
        clip_frac = float(token_mean(was_clipped, mask))
        approx_kl = float(token_mean(old_logp - logp, mask))
    return LossOutput(total, float(pg_loss.detach()), clip_frac, kl_val, ent_val, approx_kl)
