"""Planning an evaluation's tasks: which problems (indices, limit) and how the (repeat,
problem) items are cut into tasks so that every worker is busy and no task holds more than
``MAX_WAVES`` waves of ``concurrency`` problems."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from aflowctl.errors import BenchmarkError

MAX_WAVES = 8


def plan_items(
    indices: Sequence[int], repeats: int, workers: int, concurrency: int, chunk_size: Optional[int] = None
) -> list[list[tuple[int, int]]]:
    """Split the (repeat, index) items into task chunks.

    Problems run ``concurrency`` at a time inside a task, so a task of S problems
    takes ceil(S / concurrency) "waves"; a task whose size is not a multiple of the
    concurrency wastes part of its last wave. The items are split evenly over the
    workers, and each worker's share into tasks of ``q * concurrency`` items
    (q <= MAX_WAVES waves; the last one of a share may be smaller). Submitted largest
    first, equal tasks keep every worker busy until the end.
    """
    items = [(r, i) for r in range(repeats) for i in indices]
    total = len(items)
    if total == 0:
        return []
    if chunk_size is not None:
        size = max(1, int(chunk_size))
        return [items[k : k + size] for k in range(0, total, size)]
    c = max(1, concurrency)
    w = max(1, min(workers, total))
    share = math.ceil(total / w)
    waves = math.ceil(share / c)
    per_worker = math.ceil(waves / MAX_WAVES)
    size = math.ceil(waves / per_worker) * c
    chunks: list[list[tuple[int, int]]] = []
    bounds = [round(k * total / w) for k in range(w + 1)]  # w even shares, contiguous
    for a, b in zip(bounds, bounds[1:]):
        part = items[a:b]
        chunks.extend(part[k : k + size] for k in range(0, len(part), size))
    return chunks


def resolve_indices(
    n_available: int, *, dataset: str, split: str, limit: Optional[int] = None, indices: Optional[Sequence[int]] = None
) -> list[int]:
    if n_available == 0:
        raise BenchmarkError(
            f"the {split} split of {dataset} is empty", f"fetch it again: aflowctl data fetch {dataset}"
        )
    if indices is not None:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n_available]
        if bad:
            raise BenchmarkError(
                f"problem index {bad[0]} is out of range for {dataset}/{split} "
                f"({n_available} problems: 0 to {n_available - 1})",
                "pick indices in that range, or use --limit",
            )
        if not idx:
            raise BenchmarkError("no problem indices given", "give at least one index, or none for the whole split")
        return list(dict.fromkeys(idx))
    if limit is not None:
        if limit < 1:
            raise BenchmarkError(f"--limit must be at least 1 (got {limit})", "pass a positive number of problems")
        return list(range(min(limit, n_available)))
    return list(range(n_available))
