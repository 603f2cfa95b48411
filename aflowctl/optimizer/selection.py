"""Parent selection (AFlow's, made explicit).

Candidates: the initial workflow first, then the others by mean validation score
until ``sample`` are chosen. Probabilities over scores in percent:
``P_i = λ/n + (1−λ)·softmax(α·(s_i − s_max))``. Optional policy guidance blends in a
second distribution with weight ``w``: ``P = (1−w)·P_aflow + w·softmax(β·v_i)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    workflow_id: int
    score: float  # mean validation score in [0, 1]
    round: int
    is_initial: bool = False


def top_candidates(items: Sequence[Candidate], sample: int) -> list[Candidate]:
    """The initial workflow plus the best others, ``sample`` in total, best first after it."""
    initial = [c for c in items if c.is_initial][:1]
    others = sorted((c for c in items if not c.is_initial), key=lambda c: (-c.score, c.round, c.workflow_id))
    return (initial + others)[: max(sample, 1)] if initial else others[: max(sample, 1)]


def selection_probabilities(scores: Sequence[float], *, alpha: float = 0.2, lambda_: float = 0.3) -> np.ndarray:
    """AFlow's mixed uniform/softmax probabilities; ``scores`` in [0, 1] (converted to percent)."""
    s = np.asarray(scores, dtype=np.float64) * 100.0
    n = len(s)
    if n == 0:
        raise ValueError("no candidates to select from")
    uniform = np.full(n, 1.0 / n)
    w = np.exp(alpha * (s - s.max()))
    p = lambda_ * uniform + (1.0 - lambda_) * (w / w.sum())
    return p / p.sum()


def blend_with_policy(p: np.ndarray, values: Sequence[float] | None, weight: float, beta: float = 10.0) -> np.ndarray:
    """Blend AFlow's probabilities with a softmax over the policy's value estimates."""
    if not weight or values is None:
        return p
    v = np.asarray(values, dtype=np.float64)
    q = np.exp(beta * (v - v.max()))
    q = q / q.sum()
    out = (1.0 - weight) * p + weight * q
    return out / out.sum()


def round_rng(seed: int, round_no: int, stream: int = 0) -> np.random.Generator:
    """The run's random generator for one round: a pure function of (seed, round, stream),
    so a resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round_no), int(stream)])


def select_parent(
    candidates: Sequence[Candidate],
    rng: np.random.Generator,
    *,
    alpha: float = 0.2,
    lambda_: float = 0.3,
    policy_values: Sequence[float] | None = None,
    policy_weight: float = 0.0,
) -> tuple[Candidate, np.ndarray]:
    """Draw a parent; returns it and the probabilities used (in candidate order)."""
    ordered = sorted(candidates, key=lambda c: (-c.score, c.round, c.workflow_id))
    p = selection_probabilities([c.score for c in ordered], alpha=alpha, lambda_=lambda_)
    if policy_values is not None:
        by_id = dict(zip([c.workflow_id for c in candidates], policy_values))
        p = blend_with_policy(p, [by_id[c.workflow_id] for c in ordered], policy_weight)
    i = int(rng.choice(len(ordered), p=p))
    return ordered[i], p
