"""PPO loss against a direct, element-by-element computation."""

from __future__ import annotations

import math

import pytest
import torch

from aflowctl.trainer.loss import entropy_from_logits, low_var_kl, ppo_loss
from aflowctl.trainer.schedule import lr_at


def _direct(logp, old, adv, mask, cl, ch, c):
    num, den, clipped = 0.0, 0.0, 0
    for i in range(len(logp)):
        for j in range(len(logp[i])):
            if not mask[i][j]:
                continue
            r = math.exp(logp[i][j] - old[i][j])
            a = adv[i]
            l1 = -a * r
            l2 = -a * min(max(r, 1 - cl), 1 + ch)
            loss = max(l1, l2)
            if l2 > l1:
                clipped += 1
            if a < 0:
                loss = min(loss, -a * c)
            num += loss
            den += 1
    return num / den, clipped / den


CASES = {
    # ratio ~1: no clipping
    "inactive": ([[-1.0, -2.0, -0.5]], [[-1.0, -2.0, -0.5]], [1.0]),
    # ratio e^0.5 > 1.2 with A > 0: clipped
    "clip_high": ([[-0.5, -1.5, -1.0]], [[-1.0, -2.0, -1.0]], [2.0]),
    # ratio e^-0.5 < 0.8 with A < 0: clipped at the low side
    "clip_low": ([[-1.5, -2.5, -1.0]], [[-1.0, -2.0, -1.0]], [-1.0]),
    # ratio e^2 with A < 0: dual clip bounds the loss at -A * 3
    "dual": ([[1.0, -2.0, -1.0]], [[-1.0, -2.0, -1.0]], [-1.5]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ppo_loss_matches_direct(name):
    logp, old, adv = CASES[name]
    mask = [[1, 1, 1]]
    out = ppo_loss(torch.tensor(logp, dtype=torch.float64), torch.tensor(old, dtype=torch.float64),
                   torch.tensor(adv, dtype=torch.float64), torch.tensor(mask),
                   clip_low=0.2, clip_high=0.2, dual_clip_c=3.0)
    want, frac = _direct(logp, old, adv, mask, 0.2, 0.2, 3.0)
    assert float(out.loss) == pytest.approx(want, rel=1e-12)
    assert out.clip_frac == pytest.approx(frac)
    if name == "inactive":
        assert out.clip_frac == 0.0
        assert float(out.loss) == pytest.approx(-1.0)
    elif name == "dual":
        assert out.loss.item() == pytest.approx((1.5 * 3.0 + 1.5 * 1.0 + 1.5 * 1.0) / 3)
    else:
        assert out.clip_frac > 0


def test_padding_is_masked_and_batch_mixed():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, dtype=torch.float64) * 0.3 - 1
    old = logp + torch.randn(3, 5, dtype=torch.float64) * 0.3
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    out = ppo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip_c=3.0)
    want, frac = _direct(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, 3.0)
    assert float(out.loss) == pytest.approx(want, rel=1e-12)
    assert out.clip_frac == pytest.approx(frac)
    # garbage in padded positions changes nothing
    logp2 = logp.clone()
    logp2[mask == 0] = 50.0
    out2 = ppo_loss(logp2, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip_c=3.0)
    assert float(out2.loss) == float(out.loss)


def test_gradient_flows_only_through_unclipped_tokens():
    logp = torch.tensor([[-0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    out = ppo_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2), clip_low=0.2, clip_high=0.2)
    out.loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # ratio e^0.5 clipped: no gradient
    assert logp.grad[0, 1].item() == pytest.approx(-0.5)  # d(-r)/dlogp / 2 tokens


def test_kl_and_entropy_terms():
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    ent = entropy_from_logits(logits)
    p = torch.softmax(logits, -1)
    assert torch.allclose(ent.double(), -(p * p.log()).sum(-1), atol=1e-6)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.1, -30.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0, -2.0], [-0.7, -0.1, -1.0]], dtype=torch.float64)
    kl = low_var_kl(logp, ref)
    d = ref - logp
    want = torch.exp(d) - d - 1
    assert torch.allclose(kl[0], want[0])
    assert kl[1, 2].item() == 10.0  # clamped
    assert kl[0, 0].item() == 0.0
    mask = torch.ones(2, 3)
    adv = torch.zeros(2, dtype=torch.float64)
    base = ppo_loss(logp, logp, adv, mask)
    with_terms = ppo_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.5, entropy=ent, entropy_coef=0.1)
    assert float(base.loss) == 0.0
    assert float(with_terms.loss) == pytest.approx(0.5 * kl.mean().item() - 0.1 * ent.mean().item())


def test_lr_schedule_is_a_pure_function_of_the_step():
    assert lr_at(0, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="constant") == 0.25
    assert lr_at(3, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="constant") == 1.0
    assert lr_at(9, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="constant") == 1.0
    assert lr_at(4, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(10, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="cosine", min_ratio=0.0) == pytest.approx(0.0, abs=1e-12)
    mid = lr_at(7, base_lr=1.0, warmup_steps=4, total_steps=10, schedule="cosine", min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
