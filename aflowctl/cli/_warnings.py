"""Honest end-of-run summaries: say when a run "completed" without doing what it is for.

- a search whose proposals were mostly invalid (the optimizer model could not write
  valid workflows; the scores then say nothing about the search);
- a training update with no learning signal: every reward equal (GiGPO's advantages are
  all 0) or no valid action at all; the policy did not learn from it.
"""

from __future__ import annotations

from typing import Any, Optional


def search_warning(store: Any, run_id: str) -> Optional[str]:
    """A warning when at least half of a run's proposals were invalid, else None."""
    from aflowctl.store import queries

    c = queries.proposal_counts(store, run_id)
    if c["proposals"] and 2 * c["invalid"] >= c["proposals"]:
        return (
            f"warning: {c['invalid']} of {c['proposals']} proposals were invalid, so the search barely explored; "
            f"see 'aflowctl inspect experiences --run {run_id} --failed' for why"
        )
    return None


def no_signal_reason(metrics: dict) -> Optional[str]:
    """Why one training update had no learning signal, or None when it had one."""
    if "valid_rate" in metrics and metrics["valid_rate"] == 0:
        return "no valid action"
    if metrics.get("reward_std") == 0 and "reward_mean" in metrics:
        return f"all rewards equal ({metrics['reward_mean']:g})"
    return None


def training_warning(metrics: list[dict]) -> Optional[str]:
    """A warning naming how many updates of a run had no learning signal, else None."""
    updates = [m for m in metrics if "reward_mean" in m and m.get("phase") != "sft"]
    empty = [why for why in (no_signal_reason(m) for m in updates) if why]
    if not empty:
        return None
    reasons = sorted(set(empty))
    return (
        f"warning: {len(empty)} of {len(updates)} updates had no learning signal ({'; '.join(reasons)}): "
        "the policy did not learn from them; use a benchmark the executor partly solves (e.g. arith) or more "
        "episodes per group"
    )
