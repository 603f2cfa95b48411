"""GiGPO advantages: hand-checked cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aflowctl.errors import ConfigError
from aflowctl.trainer.advantages import discounted_returns, gigpo_advantages


def _steps(rows, group="g"):
    return [
        {"group_id": group, "episode_id": e, "t": t, "anchor": a, "reward": r, "valid": v}
        for (e, t, a, r, v) in rows
    ]


def test_hand_checked_mean_norm():
    # two episodes of 2 steps; both start in s0, then diverge
    steps = _steps([(0, 0, "s0", 1.0, True), (0, 1, "s1", 0.5, True), (1, 0, "s0", 0.0, True), (1, 1, "s2", 0.0, True)])
    out = gigpo_advantages(steps, gamma=0.5, mode="mean_norm", step_advantage_w=1.0)
    # returns: ep0 t1 = 0.5, t0 = 1 + 0.5 * 0.5 = 1.25; ep1 all 0
    assert [o["discounted_return"] for o in out] == [1.25, 0.5, 0.0, 0.0]
    # episode totals per row: 1.5, 1.5, 0, 0 -> mean 0.75
    assert [o["episode_advantage"] for o in out] == [0.75, 0.75, -0.75, -0.75]
    # step group s0 = rows 0 and 2 (returns 1.25 and 0); s1, s2 singletons -> 0
    assert [o["step_advantage"] for o in out] == [0.625, 0.0, -0.625, 0.0]
    assert [o["advantage"] for o in out] == [1.375, 0.75, -1.375, -0.75]


def test_hand_checked_mean_std_norm_with_penalty_and_revisit():
    # episode 0 revisits s0 (invalid action keeps the state); episode 1 has one step in s0.
    steps = _steps([(0, 0, "s0", 0.0, False), (0, 1, "s0", 1.0, True), (1, 0, "s0", 0.0, True)])
    out = gigpo_advantages(steps, gamma=1.0, mode="mean_std_norm", step_advantage_w=0.5, invalid_penalty=0.1)
    # discounted returns before the penalty: ep0 t0 = 0 + 1 = 1, t1 = 1; ep1 = 0
    assert [o["discounted_return"] for o in out] == [1.0, 1.0, 0.0]
    # episode scores: row0 1 - 0.1 = 0.9, row1 1, row2 0
    x = np.array([0.9, 1.0, 0.0])
    ae = (x - x.mean()) / (x.std(ddof=1) + 1e-6)
    # step returns after the penalty: 0.9, 1.0, 0.0 in one step group (all s0)
    for o, e in zip(out, ae):
        assert o["episode_advantage"] == pytest.approx(e, abs=1e-12)
        assert o["step_advantage"] == pytest.approx(e, abs=1e-12)
        assert o["advantage"] == pytest.approx(1.5 * e, abs=1e-12)


def test_group_of_one_row_keeps_its_score_and_groups_are_separate():
    steps = _steps([(0, 0, "a", 0.3, True)], group="g1") + _steps([(0, 0, "a", 0.7, True), (1, 0, "a", 0.1, True)], group="g2")
    out = gigpo_advantages(steps, gamma=0.95, mode="mean_std_norm", step_advantage_w=1.0)
    assert out[0]["episode_advantage"] == 0.3  # mean 0, std 1
    assert out[0]["step_advantage"] == 0.0  # singleton step group (same anchor in another group does not count)
    assert out[1]["episode_advantage"] == pytest.approx(0.3 / (math.sqrt(0.18) + 1e-6))


def test_discounted_returns_unsorted_input():
    ep = np.array([1, 0, 1, 0, 1])
    t = np.array([2, 1, 0, 0, 1])
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    g = discounted_returns(ep, t, r, 0.5)
    # ep1: t0=3, t1=5, t2=1 -> G2 = 1, G1 = 5.5, G0 = 5.75; ep0: t0=4, t1=2 -> G1 = 2, G0 = 5
    assert g.tolist() == [1.0, 2.0, 5.75, 5.0, 5.5]


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="mean_norm"):
        gigpo_advantages(_steps([(0, 0, "a", 0.0, True)]), gamma=1.0, mode="z", step_advantage_w=1.0)


def test_empty():
    assert gigpo_advantages([], gamma=1.0, mode="mean_norm", step_advantage_w=1.0) == []


# --- properties -------------------------------------------------------------------------------

rewards = st.floats(min_value=-5, max_value=5, allow_nan=False, width=64)


@st.composite
def batches(draw):
    n_groups = draw(st.integers(1, 3))
    rows = []
    for g in range(n_groups):
        for e in range(draw(st.integers(1, 4))):
            for t in range(draw(st.integers(1, 4))):
                rows.append({
                    "group_id": f"g{g}", "episode_id": f"e{e}", "t": t,
                    "anchor": draw(st.sampled_from(["s0", "s1", "s2"])),
                    "reward": draw(rewards), "valid": draw(st.booleans()),
                })
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in order]


@settings(max_examples=150, deadline=None)
@given(batches(), st.floats(0.1, 5.0), st.sampled_from(["mean_norm", "mean_std_norm"]), st.floats(0, 1))
def test_identical_rewards_give_exactly_zero(batch, value, mode, gamma):
    # every step of every episode has the same reward and the same length within a group -> 0
    for s in batch:
        s["reward"] = value
        s["valid"] = True
        s["t"] = 0
        s["episode_id"] = f"{s['episode_id']}-{id(s)}"  # one-step episodes
    # groups of >= 2 rows only (a group of one row keeps its score by definition)
    counts = {}
    for s in batch:
        counts[s["group_id"]] = counts.get(s["group_id"], 0) + 1
    batch = [s for s in batch if counts[s["group_id"]] >= 2]
    out = gigpo_advantages(batch, gamma=gamma, mode=mode, step_advantage_w=1.0, invalid_penalty=0.1)
    assert all(o["episode_advantage"] == 0.0 and o["step_advantage"] == 0.0 and o["advantage"] == 0.0 for o in out)


@settings(max_examples=150, deadline=None)
@given(batches(), st.sampled_from(["mean_norm", "mean_std_norm"]), st.floats(0, 1), st.floats(0, 0.5))
def test_omega_zero_is_episode_advantage_alone(batch, mode, gamma, c):
    out = gigpo_advantages(batch, gamma=gamma, mode=mode, step_advantage_w=0.0, invalid_penalty=c)
    assert all(o["advantage"] == o["episode_advantage"] for o in out)


@settings(max_examples=150, deadline=None)
@given(batches(), st.floats(-10, 10), st.floats(0, 1))
def test_translation_invariance_mean_norm(batch, shift, gamma):
    # shifting every reward of a one-step episode by b shifts R and G by b: mean_norm advantages do not move
    for s in batch:
        s["t"] = 0
        s["episode_id"] = f"{s['episode_id']}-{id(s)}"
    counts = {}
    for s in batch:
        counts[s["group_id"]] = counts.get(s["group_id"], 0) + 1
    batch = [s for s in batch if counts[s["group_id"]] >= 2]
    shifted = [dict(s, reward=s["reward"] + shift) for s in batch]
    a = gigpo_advantages(batch, gamma=gamma, mode="mean_norm", step_advantage_w=1.0, invalid_penalty=0.1)
    b = gigpo_advantages(shifted, gamma=gamma, mode="mean_norm", step_advantage_w=1.0, invalid_penalty=0.1)
    for x, y in zip(a, b):
        assert x["advantage"] == pytest.approx(y["advantage"], abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(batches(), st.sampled_from(["mean_norm", "mean_std_norm"]), st.floats(0, 1))
def test_singleton_step_group_gives_zero(batch, mode, gamma):
    out = gigpo_advantages(batch, gamma=gamma, mode=mode, step_advantage_w=1.0)
    counts = {}
    for s in batch:
        counts[(s["group_id"], s["anchor"])] = counts.get((s["group_id"], s["anchor"]), 0) + 1
    for s, o in zip(batch, out):
        if counts[(s["group_id"], s["anchor"])] == 1:
            assert o["step_advantage"] == 0.0


@settings(max_examples=100, deadline=None)
@given(batches(), st.floats(0, 1))
def test_matches_a_direct_python_computation(batch, gamma):
    out = gigpo_advantages(batch, gamma=gamma, mode="mean_std_norm", step_advantage_w=0.7, invalid_penalty=0.2)
    eps = {}
    for i, s in enumerate(batch):
        eps.setdefault((s["group_id"], s["episode_id"]), []).append(i)
    G = [0.0] * len(batch)
    R = [0.0] * len(batch)
    for idx in eps.values():
        idx = sorted(idx, key=lambda i: batch[i]["t"])
        acc = 0.0
        for i in reversed(idx):
            acc = batch[i]["reward"] + gamma * acc
            G[i] = acc
        tot = sum(batch[i]["reward"] for i in idx)
        for i in idx:
            R[i] = tot

    def norm(vals):
        n = len(vals)
        m = sum(vals) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
        return [(v - m) / (sd + 1e-6) for v in vals]

    pen = [0.0 if s["valid"] else 0.2 for s in batch]
    groups, sgroups = {}, {}
    for i, s in enumerate(batch):
        groups.setdefault(s["group_id"], []).append(i)
        sgroups.setdefault((s["group_id"], s["anchor"]), []).append(i)
    AE, AS = [0.0] * len(batch), [0.0] * len(batch)
    for idx in groups.values():
        vals = [R[i] - pen[i] for i in idx]
        res = vals if len(idx) == 1 else norm(vals)
        for i, v in zip(idx, res):
            AE[i] = v
    for idx in sgroups.values():
        if len(idx) > 1:
            for i, v in zip(idx, norm([G[i] - pen[i] for i in idx])):
                AS[i] = v
    for i, o in enumerate(out):
        assert o["discounted_return"] == pytest.approx(G[i], abs=1e-9)
        assert o["episode_advantage"] == pytest.approx(AE[i], rel=1e-6, abs=1e-6)
        assert o["step_advantage"] == pytest.approx(AS[i], rel=1e-6, abs=1e-6)
        assert o["advantage"] == pytest.approx(AE[i] + 0.7 * AS[i], rel=1e-6, abs=1e-6)
