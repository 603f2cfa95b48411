"""The learning rate as a pure function of the update step (no scheduler state to save)."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "constant",
    min_ratio: float = 0.1,
) -> float:
    """Learning rate of update ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` updates (update 0 gets base/warmup), then
    constant, or cosine decay from ``base_lr`` to ``min_ratio * base_lr`` at
    ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        from aflowctl.errors import ConfigError

        raise ConfigError(f"unknown lr schedule {schedule!r}", "use constant or cosine")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    floor = base_lr * min_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
