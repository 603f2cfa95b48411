"""AFlow's convergence rule over the sequence of evaluated workflows.

After each workflow i (in evaluation order), take the top-k mean validation scores
among workflows 0..i: y_i = mean, σ_i = sqrt(Σ std²)/k. The search has converged
when |y_i − y_{i−1}| <= z·sqrt(σ_i² + σ_{i−1}²) for ``consecutive`` workflows in a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_convergence(
    means: Sequence[float], stds: Sequence[float], *, top_k: int = 3, z: float = 0.0, consecutive: int = 5
) -> tuple[bool, int | None, int | None]:
    """Returns (converged, first index of the flat stretch, last index)."""
    m = np.asarray(means, dtype=np.float64)
    s = np.asarray(stds, dtype=np.float64)
    count = 0
    prev_y: float | None = None
    prev_sigma = 0.0
    for i in range(len(m)):
        idx = np.argsort(-m[: i + 1], kind="stable")[:top_k]
        y = float(np.mean(m[idx]))
        sigma = float(np.sqrt(np.sum(s[idx] ** 2)) / top_k)
        if prev_y is not None:
            if abs(y - prev_y) <= z * np.sqrt(sigma**2 + prev_sigma**2):
                count += 1
                if count >= consecutive:
                    return True, i - consecutive + 1, i
            else:
                count = 0
        prev_y, prev_sigma = y, sigma
    return False, None, None
