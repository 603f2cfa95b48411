"""GiGPO advantages (Group-in-Group Policy Optimization, Feng et al. 2025).

One function per equation of the paper, computed on flat numpy arrays (float64 so
that a group of identical values gives exactly 0):

* :func:`discounted_returns` - G_t = r_t + gamma * G_{t+1} inside each episode,
  before any grouping;
* :func:`episode_advantages` - Eq. 3: each step row carries its episode's
  undiscounted total R; R is normalised over **all step rows of the group** (a long
  episode counts once per step);
* :func:`anchor_state_groups` - Eq. 6: inside one group, rows whose anchor state keys
  are exactly equal form a step group (revisits inside one episode included);
* :func:`step_advantages` - Eq. 7: G_t normalised over its step group; a singleton
  step group gets 0;
* :func:`combine` - Eq. 8: A = A_E + omega * A_S.

The invalid-action penalty ``c`` is subtracted, for an invalid step only, from that
row's episode score and from that row's discounted return (never propagated to the
other steps of the episode).

:func:`gigpo_advantages` is the plain entry point (a list of dicts in, a list of
dicts out); :func:`gigpo_advantages_arrays` is the array form it uses inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("mean_norm", "mean_std_norm")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        from aflowctl.errors import ConfigError

        raise ConfigError(f"unknown advantage mode {mode!r}", f"use one of {', '.join(MODES)}")


def factorize(keys: Iterable[Any]) -> np.ndarray:
    """Map hashable keys to dense int64 codes (first occurrence order)."""
    codes: dict[Any, int] = {}
    setdefault = codes.setdefault
    return np.fromiter((setdefault(k, len(codes)) for k in keys), dtype=np.int64)


def _segment_stats(x: np.ndarray, seg: np.ndarray, n_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment (count, mean) such that a segment of identical values has mean == value exactly.

    The mean is computed as ``min + mean(x - min)``: for identical values ``x - min``
    is exactly 0, so the mean is the value itself and ``x - mean`` is exactly 0.
    """
    counts = np.bincount(seg, minlength=n_seg).astype(np.float64)
    mins = np.full(n_seg, np.inf)
    np.minimum.at(mins, seg, x)
    shifted = x - mins[seg]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = mins + np.bincount(seg, weights=shifted, minlength=n_seg) / counts
    return counts, means


def _normalise(
    x: np.ndarray, seg: np.ndarray, n_seg: int, mode: str, epsilon: float, singleton: str
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``x`` inside its segment; returns (advantage, segment size per row).

    ``singleton`` says what a one-row segment gives: ``"identity"`` (mean 0, std 1:
    the value itself, as for episode groups) or ``"zero"`` (as for step groups).
    """
    counts, means = _segment_stats(x, seg, n_seg)
    d = x - means[seg]
    if mode == "mean_std_norm":
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.bincount(seg, weights=d * d, minlength=n_seg) / (counts - 1.0)
        std = np.sqrt(var)
        adv = d / (std[seg] + epsilon)
    else:
        adv = d
    size = counts[seg]
    single = size == 1.0
    if single.any():
        adv[single] = x[single] if singleton == "identity" else 0.0
    return adv, size


def discounted_returns(episode: np.ndarray, t: np.ndarray, reward: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} within each episode (rows ordered by ``t``).

    Vectorised over episodes: one numpy pass per step position, so the cost is
    O(n) work in O(max episode length) numpy calls.
    """
    n = reward.shape[0]
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out
    order = np.lexsort((np.arange(n), t, episode))  # by episode, then t, then batch order
    ep_sorted = episode[order]
    starts = np.r_[True, ep_sorted[1:] != ep_sorted[:-1]]
    start_pos = np.flatnonzero(starts)
    seg_id = np.cumsum(starts) - 1
    rank = np.arange(n) - start_pos[seg_id]  # position of the row inside its episode
    r_sorted = reward[order].astype(np.float64)
    g_sorted = np.zeros(n, dtype=np.float64)
    # next row of the same episode (in sorted order), or -1 at an episode's end
    has_next = np.r_[~starts[1:], False]
    by_rank = np.argsort(rank, kind="stable")
    rank_sorted = rank[by_rank]
    bounds = np.flatnonzero(np.r_[True, rank_sorted[1:] != rank_sorted[:-1], True])
    for b in range(len(bounds) - 2, -1, -1):  # deepest position first
        idx = by_rank[bounds[b] : bounds[b + 1]]
        g = r_sorted[idx].copy()
        nxt = has_next[idx]
        g[nxt] += gamma * g_sorted[idx[nxt] + 1]
        g_sorted[idx] = g
    out[order] = g_sorted
    return out


def episode_totals(episode: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """Each row's episode undiscounted total R = sum_t r_t."""
    n_ep = int(episode.max()) + 1 if episode.size else 0
    totals = np.bincount(episode, weights=reward.astype(np.float64), minlength=n_ep)
    return totals[episode]


def episode_advantages(group: np.ndarray, episode_score: np.ndarray, *, mode: str, epsilon: float) -> np.ndarray:
    """Eq. 3: the episode score of each step row normalised over all step rows of its group.

    A group of exactly one row has mean 0 and std 1 (its advantage is its score).
    """
    n_groups = int(group.max()) + 1 if group.size else 0
    adv, _ = _normalise(episode_score, group, n_groups, mode, epsilon, singleton="identity")
    return adv


def anchor_state_groups(group: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Eq. 6: dense ids of step groups = rows of one group with exactly equal anchor keys."""
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(anchor.max()) + 1
    _, step_group = np.unique(group * width + anchor, return_inverse=True)
    return step_group.reshape(-1).astype(np.int64)


def step_advantages(
    step_group: np.ndarray, step_return: np.ndarray, *, mode: str, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7: discounted returns normalised over their step group; singleton groups get 0.

    Returns (advantages, step-group size of each row).
    """
    n = int(step_group.max()) + 1 if step_group.size else 0
    return _normalise(step_return, step_group, n, mode, epsilon, singleton="zero")


def combine(episode_adv: np.ndarray, step_adv: np.ndarray, step_advantage_w: float) -> np.ndarray:
    """Eq. 8: A = A_E + omega * A_S."""
    return episode_adv + step_advantage_w * step_adv


def gigpo_advantages_arrays(
    group: np.ndarray,
    episode: np.ndarray,
    t: np.ndarray,
    anchor: np.ndarray,
    reward: np.ndarray,
    valid: np.ndarray,
    *,
    gamma: float,
    mode: str,
    step_advantage_w: float,
    epsilon: float = 1e-6,
    invalid_penalty: float = 0.0,
) -> dict[str, np.ndarray]:
    """The array form of :func:`gigpo_advantages`.

    ``group``, ``episode`` and ``anchor`` are int64 codes (see :func:`factorize`;
    ``episode`` codes must be unique across groups, ``anchor`` codes are compared
    inside a group only), ``t`` int64, ``reward`` float, ``valid`` bool. Returns
    float64 arrays ``discounted_return`` (before any penalty), ``episode_advantage``,
    ``step_advantage``, ``advantage`` and the int64 ``step_group_size``.
    """
    _check_mode(mode)
    reward = np.asarray(reward, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    g_ret = discounted_returns(episode, t, reward, gamma)
    ep_score = episode_totals(episode, reward)
    penalty = np.where(valid, 0.0, float(invalid_penalty))
    a_e = episode_advantages(group, ep_score - penalty, mode=mode, epsilon=epsilon)
    sg = anchor_state_groups(group, anchor)
    a_s, size = step_advantages(sg, g_ret - penalty, mode=mode, epsilon=epsilon)
    return {
        "discounted_return": g_ret,
        "episode_advantage": a_e,
        "step_advantage": a_s,
        "advantage": combine(a_e, a_s, step_advantage_w),
        "step_group_size": size.astype(np.int64),
    }


def gigpo_advantages(
    steps: Sequence[Mapping[str, Any]],
    *,
    gamma: float,
    mode: str,
    step_advantage_w: float,
    epsilon: float = 1e-6,
    invalid_penalty: float = 0.0,
) -> list[dict[str, float]]:
    """GiGPO advantages of step rows given in batch order.

    Each step is a mapping with keys ``group_id``, ``episode_id``, ``t``, ``anchor``,
    ``reward`` and ``valid``. Returns, in the same order, dicts with keys
    ``discounted_return`` (before any penalty), ``episode_advantage``,
    ``step_advantage`` and ``advantage``.
    """
    _check_mode(mode)
    n = len(steps)
    if n == 0:
        return []
    group = factorize(s["group_id"] for s in steps)
    episode = factorize((s["group_id"], s["episode_id"]) for s in steps)
    anchor = factorize(s["anchor"] for s in steps)
    t = np.fromiter((s["t"] for s in steps), dtype=np.int64, count=n)
    reward = np.fromiter((s["reward"] for s in steps), dtype=np.float64, count=n)
    valid = np.fromiter((bool(s["valid"]) for s in steps), dtype=bool, count=n)
    out = gigpo_advantages_arrays(
        group,
        episode,
        t,
        anchor,
        reward,
        valid,
        gamma=gamma,
        mode=mode,
        step_advantage_w=step_advantage_w,
        epsilon=epsilon,
        invalid_penalty=invalid_penalty,
    )
    cols = [
        out["discounted_return"].tolist(),
        out["episode_advantage"].tolist(),
        out["step_advantage"].tolist(),
        out["advantage"].tolist(),
    ]
    return [
        {"discounted_return": d, "episode_advantage": e, "step_advantage": s, "advantage": a}
        for d, e, s, a in zip(*cols)
    ]
