"""History gathering: one run read from the store into plain data (dicts and lists,
JSON-able), shared by ``report``, ``compare`` and ``export``.

:func:`load_history` is the raw part (the run row, its config and state, its workflows
with their evaluation rows per split, its experiences); :func:`gather` builds what the
report shows from it: the search tree, scores per round, usage, the best workflow and
its lineage for an optimize run; reward and loss curves for a train run.

Usage per round: the store has no round column on ``llm_calls``, so a round's usage is
attributed by time. Each completed round has an end time
(:func:`aflowctl.store.queries.round_end_times`: round 1 ends with the last validation
evaluation of the initial workflow, a later round when its experiences are committed,
which happens in the transaction that completes it). The cumulative spend (calls,
tokens) at round r sums the non-cached calls logged up to round r's end; spend counts
priced calls only. Calls after the last completed round (a ``--test`` evaluation, a
round in progress) count in the totals only. Calls paid for a round that was
interrupted and redone on resume fall before the redone round's end, so they are
counted in that round.

Reads go through :mod:`aflowctl.store.queries` only.
"""

from __future__ import annotations

import bisect
import difflib
import json
import math
from typing import Any, Optional

from aflowctl.errors import NotFoundError
from aflowctl.store import queries
from aflowctl.store.db import Store

#: usage measures of a round, in the order a plot prefers them when nothing is priced
USAGE_KEYS = ("cost_usd", "tokens", "calls")


def require_run(store: Store, run_id: str, *, kind: Optional[str] = None) -> dict[str, Any]:
    """The run row, or :class:`NotFoundError` naming the run and the latest ones (of ``kind``)."""
    run = queries.get_run(store, run_id)
    if run is None:
        known = [r["id"] for r in queries.list_runs(store, kind=kind)][-5:]
        latest = f"latest {kind} runs" if kind else "latest"
        raise NotFoundError(
            f"run '{run_id}' does not exist",
            f"see 'aflowctl inspect runs' ({latest}: {', '.join(known) or 'none'})",
        )
    return run


def workflow_diff(parent: Optional[dict], child: dict) -> str:
    """Unified diff of graph.py and prompt.py of ``child`` against ``parent`` ('' when
    there is no parent or the code is identical). Each line ends with a newline."""
    if parent is None:
        return ""
    out: list[str] = []
    for field, name in (("graph_code", "graph.py"), ("prompt_code", "prompt.py")):
        a = (parent.get(field) or "").splitlines(keepends=True)
        b = (child.get(field) or "").splitlines(keepends=True)
        for line in difflib.unified_diff(
            a, b, fromfile=f"workflow {parent['id']}/{name}", tofile=f"workflow {child['id']}/{name}"
        ):
            out.append(line if line.endswith("\n") else line + "\n")
    return "".join(out)


def _json(text: Optional[str]) -> dict:
    try:
        out = json.loads(text or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _mean(xs: list[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> Optional[float]:
    """Population standard deviation (ddof=0), as the convergence rule uses."""
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def load_history(store: Store, run_id: str, *, details: bool = False) -> dict[str, Any]:
    """The run (``run``, ``config``, ``state``), its workflows, each with its evaluation
    rows per split (``evaluations``: split -> rows, oldest first; ``details_json`` only
    when ``details``), and its experiences."""
    run = require_run(store, run_id)
    wf_rows = queries.list_workflows(store, run_id=run_id)
    evals: dict[int, dict[str, list[dict]]] = {}
    for e in queries.list_evaluations(store, run_id, details=details):
        if e["workflow_id"] is not None:
            evals.setdefault(e["workflow_id"], {}).setdefault(e["split"], []).append(e)
    workflows = [{**w, "evaluations": evals.get(w["id"], {})} for w in wf_rows]
    return {
        "run": run,
        "config": _json(run["config_json"]),
        "state": _json(run["state_json"]),
        "workflows": workflows,
        "experiences": queries.list_experiences(store, run_id=run_id),
    }


def gather(store: Store, run_id: str) -> dict[str, Any]:
    """Everything the report shows about one run, as JSON-able data."""
    run = require_run(store, run_id)
    if run["kind"] == "train":
        return gather_train(store, run)
    return gather_optimize(store, run)


def _usage_curve(
    store: Store, run_id: str, ends: dict[int, str]
) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """Cumulative usage (spend, tokens, calls) at each round's end, and the run's totals."""
    timeline = queries.call_timeline(store, run_id)
    times = [c["created_at"] for c in timeline]
    cum = [{"cost_usd": 0.0, "tokens": 0, "calls": 0}]
    for c in timeline:
        last = cum[-1]
        cum.append(
            {
                "cost_usd": last["cost_usd"] + float(c["cost_usd"] or 0.0),
                "tokens": last["tokens"] + int(c["tokens"] or 0),
                "calls": last["calls"] + 1,
            }
        )
    at_end = {r: cum[bisect.bisect_right(times, t)] for r, t in ends.items()}
    return at_end, cum[-1]


def spend_by_role(store: Store, run_id: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Spend and calls aggregated by role, and the per role-and-model rows."""
    by_role: dict[str, dict[str, Any]] = {}
    models = []
    for r in queries.call_totals(store, run_id):
        role = r["role"] or "unknown"
        tokens = int(r["prompt_tokens"] or 0) + int(r["completion_tokens"] or 0)
        agg = by_role.setdefault(
            role, {"cost_usd": 0.0, "calls": 0, "cached_calls": 0, "tokens": 0, "unpriced_calls": 0}
        )
        agg["cost_usd"] += float(r["cost_usd"] or 0.0)
        agg["calls"] += int(r["calls"] or 0)
        agg["cached_calls"] += int(r["cached_calls"] or 0)
        agg["tokens"] += tokens
        agg["unpriced_calls"] += int(r["unpriced_calls"] or 0)
        models.append(
            {
                "role": role,
                "model": r["model"],
                "calls": int(r["calls"] or 0),
                "cached_calls": int(r["cached_calls"] or 0),
                "tokens": tokens,
                "cost_usd": float(r["cost_usd"] or 0.0),
            }
        )
    return dict(sorted(by_role.items())), models


def _workflow_entries(hist: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {w["id"]: w for w in hist["workflows"]}
    exp_by_child = {e["child_workflow_id"]: e for e in hist["experiences"] if e["child_workflow_id"] is not None}
    out = []
    for w in hist["workflows"]:
        val = [float(e["score"]) for e in w["evaluations"].get("validate", [])]
        test = [float(e["score"]) for e in w["evaluations"].get("test", [])]
        e = exp_by_child.get(w["id"])
        out.append(
            {
                "id": w["id"],
                "round": w["round"],
                "parent_id": w["parent_id"],
                "hash": w["hash"],
                "status": w["status"],
                "error": w["error"],
                "modification": w["modification"],
                "score": _mean(val),
                "std": _std(val),
                "repeats": len(val),
                "scores": val,
                "test_score": _mean(test),
                "test_repeats": len(test),
                "reward": e["reward"] if e else None,
                "diff": workflow_diff(by_id.get(w["parent_id"]), w),
                "graph_code": w["graph_code"],
                "prompt_code": w["prompt_code"],
            }
        )
    return out


def _rounds(workflows: list[dict], exps: list[dict], usage_at: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    evaluated = {w["id"] for w in workflows if w["status"] == "valid" and w["score"] is not None}
    round_numbers = sorted({w["round"] for w in workflows} | {e["round"] for e in exps})
    rounds = []
    best_so_far: Optional[dict] = None
    prev_spend = 0.0
    for r in round_numbers:
        in_round = [w for w in workflows if w["round"] == r]
        ev = [w for w in in_round if w["id"] in evaluated]
        round_best = max(ev, key=lambda w: w["score"]) if ev else None
        if round_best is not None and (best_so_far is None or round_best["score"] > best_so_far["score"]):
            best_so_far = round_best
        r_exps = [e for e in exps if e["round"] == r]
        parents = sorted(
            {w["parent_id"] for w in in_round if w["parent_id"] is not None}
            | {e["parent_workflow_id"] for e in r_exps if e["parent_workflow_id"] is not None}
        )
        usage = usage_at.get(r)
        spend = usage["cost_usd"] if usage else None
        rounds.append(
            {
                "round": r,
                "parents": parents,
                "proposals": len(r_exps) if r > 1 else len(in_round),
                "valid": sum(1 for e in r_exps if e["valid"]) if r > 1 else len(ev),
                "workflow_ids": [w["id"] for w in in_round],
                "best_score": round_best["score"] if round_best else None,
                "best_workflow_id": round_best["id"] if round_best else None,
                "running_best": best_so_far["score"] if best_so_far else None,
                "running_best_workflow_id": best_so_far["id"] if best_so_far else None,
                "cumulative_cost_usd": spend,
                "round_cost_usd": (spend - prev_spend) if spend is not None else None,
                "cumulative_tokens": usage["tokens"] if usage else None,
                "cumulative_calls": usage["calls"] if usage else None,
                "complete": usage is not None,
            }
        )
        if spend is not None:
            prev_spend = spend
    return rounds


def gather_optimize(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["id"]
    hist = load_history(store, run_id)
    workflows = _workflow_entries(hist)
    exps = hist["experiences"]
    # proposals that never produced code (malformed responses): shown under their parent
    failed = [
        {
            "round": e["round"],
            "parent_id": e["parent_workflow_id"],
            "modification": e["modification"],
            "error": e["error"],
        }
        for e in exps
        if e["child_workflow_id"] is None
    ]
    usage_at, totals = _usage_curve(store, run_id, queries.round_end_times(store, run_id))
    rounds = _rounds(workflows, exps, usage_at)
    evaluated = [w for w in workflows if w["status"] == "valid" and w["score"] is not None]
    best = max(evaluated, key=lambda w: (w["score"], -w["round"])) if evaluated else None
    lineage = []
    node = best
    while node is not None:
        lineage.append(
            {"id": node["id"], "round": node["round"], "modification": node["modification"], "score": node["score"]}
        )
        node = next((w for w in workflows if w["id"] == node["parent_id"]), None)
    lineage.reverse()
    roles, models = spend_by_role(store, run_id)
    config = hist["config"]
    opt = config.get("optimize", {}) if isinstance(config.get("optimize"), dict) else {}
    optimizer = f"policy:{opt['policy']}" if opt.get("policy") else (opt.get("optimizer") or {}).get("model")
    last_spend = usage_at[max(usage_at)]["cost_usd"] if usage_at else 0.0
    return {
        "kind": run["kind"],
        "run": _run_meta(run, hist["state"]),
        "optimizer": optimizer,
        "executor": (opt.get("executor") or {}).get("model"),
        "workflows": workflows,
        "failed_proposals": failed,
        "rounds": rounds,
        "best": None
        if best is None
        else {
            k: best[k]
            for k in (
                "id",
                "round",
                "score",
                "std",
                "repeats",
                "test_score",
                "modification",
                "graph_code",
                "prompt_code",
            )
        },
        "lineage": lineage,
        "proposals": len(exps),
        "valid_modifications": sum(1 for e in exps if e["valid"]),
        "improvements": sum(1 for e in exps if e["valid"] and e["reward"] > 0),
        "total_cost_usd": totals["cost_usd"],
        "total_tokens": totals["tokens"],
        "total_calls": totals["calls"],
        "cost_after_last_round_usd": totals["cost_usd"] - last_spend,
        "spend_by_role": roles,
        "spend_by_model": models,
    }


def _run_meta(run: dict[str, Any], state: dict) -> dict[str, Any]:
    return {
        "id": run["id"],
        "kind": run["kind"],
        "dataset": run["dataset"],
        "status": run["status"],
        "seed": run["seed"],
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "budget_usd": run["budget_usd"],
        "message": run["message"],
        "completed_round": state.get("completed_round"),
    }


def gather_train(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["id"]
    metrics = queries.train_metrics(store, run_id)
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if (
                k not in ("update", "created_at")
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and k not in keys
            ):
                keys.append(k)
    roles, models = spend_by_role(store, run_id)
    exps = queries.list_experiences(store, run_id=run_id)
    return {
        "kind": "train",
        "run": _run_meta(run, _json(run["state_json"])),
        "metrics": metrics,
        "metric_keys": keys,
        "checkpoints": queries.list_checkpoints(store, run_id),
        "experiences": len(exps),
        "valid_experiences": sum(1 for e in exps if e["valid"]),
        "total_cost_usd": sum(r["cost_usd"] for r in roles.values()),
        "spend_by_role": roles,
        "spend_by_model": models,
    }
