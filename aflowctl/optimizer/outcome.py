"""How an optimize run ends: its best workflow, the outcome returned to the caller, and the
evaluation of a chosen workflow on the test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from aflowctl.errors import NotFoundError
from aflowctl.store import queries
from aflowctl.store.db import Store


@dataclass
class OptimizeOutcome:
    run_id: str
    status: str
    rounds: int
    best_workflow_id: Optional[int]
    best_round: Optional[int]
    best_score: Optional[float]
    cost_usd: float
    message: str = ""
    test: Optional[dict] = None


def best_workflow(store: Store, run_id: str) -> Optional[dict]:
    """The run's best valid workflow (highest score, earliest round on a tie), or None."""
    rows = [
        r for r in queries.list_workflows(store, run_id=run_id) if r["status"] == "valid" and r["score"] is not None
    ]
    if not rows:
        return None
    return max(rows, key=lambda r: (r["score"], -r["round"]))


def outcome(store: Store, run_id: str, status: str, message: str = "", test: Optional[dict] = None) -> OptimizeOutcome:
    best = best_workflow(store, run_id)
    cost = queries.run_costs(store, run_id).get(run_id, 0.0)
    return OptimizeOutcome(
        run_id=run_id,
        status=status,
        rounds=queries.run_state(store, run_id).get("completed_round", 0),
        best_workflow_id=best["id"] if best else None,
        best_round=best["round"] if best else None,
        best_score=float(best["score"]) if best else None,
        cost_usd=cost,
        message=message,
        test=test,
    )


def evaluate_test(opt, round_no: Optional[int] = None) -> dict:
    """Evaluate the best workflow (or the one of ``round_no``) on the test split."""
    rows = [r for r in opt._workflow_rows() if r["status"] == "valid"]
    target: Optional[dict]
    if round_no is not None:
        pick = [r for r in rows if r["round"] == round_no]
        if not pick:
            raise NotFoundError(
                f"run {opt.run_id} has no valid workflow in round {round_no}",
                f"see 'aflowctl inspect workflows --run {opt.run_id}'",
            )
        target = max(pick, key=lambda r: r["score"] or 0.0)
    else:
        target = best_workflow(opt.store, opt.run_id)
        if target is None:
            raise NotFoundError(f"run {opt.run_id} has no evaluated workflow", "run the search first")
    res = opt._evaluate(
        target["graph_code"],
        target["prompt_code"],
        workflow_id=target["id"],
        repeats=1,
        split="test",
        limit=opt.oc.test_limit,
    )
    return {
        "workflow_id": target["id"],
        "round": target["round"],
        "mean_score": res.mean_score,
        "n": res.n,
        "cost_usd": res.cost_usd,
    }
