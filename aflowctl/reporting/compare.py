"""`aflowctl compare RUN_A RUN_B ...`: optimize runs on one benchmark, side by side.

For each run: the best validation score reached after each round and after each
dollar spent (the running best against cumulative spend, attributed to rounds by time
as in :mod:`aflowctl.reporting.history`), the best score within the smallest total
spend among the runs (equal-budget comparison), the test score of the run's best
workflow when it was evaluated on the test split, proposals and valid modifications,
and spend by role.

Statistical note: runs are grouped by their config with the seed (and the resource
settings that do not change the search: workers, concurrency, timeouts, retries)
left out. For each group: mean and standard deviation (ddof=1) across its runs of
the final best validation score (and of the test score when every run has one). Each
later group is compared with the first run's group (the baseline): the difference of
the means (of the final best validation score, and of the test score when every run of
both groups has one) with a percentile bootstrap 95% confidence interval (both groups resampled
with replacement, numpy generator seeded, so the interval is reproducible). A group
needs at least two runs for a standard deviation or an interval.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from aflowctl.config import Role, keys_with_role, role_of
from aflowctl.errors import UsageError
from aflowctl.reporting.history import gather_optimize, require_run
from aflowctl.store.db import Store

#: config keys that do not define the experiment (left out when grouping runs): the seed and
#: resource-only keys, from the roles the fields declare in aflowctl.config
IGNORED_KEYS = keys_with_role(Role.SEED, Role.RESOURCE)
#: config subtrees left out: train settings do not change an optimize run
IGNORED_PREFIXES = ("train.",)

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def experiment_key(config: dict) -> dict[str, Any]:
    """The flattened config that defines the experiment (seed and resource keys removed)."""
    flat = _flatten(config)
    return {
        k: v
        for k, v in sorted(flat.items())
        if role_of(k) not in (Role.SEED, Role.RESOURCE) and not k.startswith(IGNORED_PREFIXES)
    }


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """mean(b) - mean(a) and its percentile bootstrap confidence interval (lo, hi)."""
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.size == 0 or b_arr.size == 0:
        raise ValueError("both groups need at least one value")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a_arr.size, size=(n_boot, a_arr.size))
    ib = rng.integers(0, b_arr.size, size=(n_boot, b_arr.size))
    diffs = b_arr[ib].mean(axis=1) - a_arr[ia].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return float(b_arr.mean() - a_arr.mean()), float(lo), float(hi)


def _best_within(curve: list[dict], budget: float) -> Optional[float]:
    """Running best reached by the last round whose cumulative spend is within ``budget``."""
    best = None
    for p in curve:
        if (
            p["cumulative_cost_usd"] is not None
            and p["cumulative_cost_usd"] <= budget + 1e-12
            and p["best_score"] is not None
        ):
            best = p["best_score"]
    return best


def _run_summary(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["id"]
    data = gather_optimize(store, run)
    config = json.loads(run["config_json"] or "{}")
    best = data["best"]
    curve = [
        {
            "round": r["round"],
            "best_score": r["running_best"],
            "cumulative_cost_usd": r["cumulative_cost_usd"],
            "cumulative_tokens": r["cumulative_tokens"],
            "cumulative_calls": r["cumulative_calls"],
        }
        for r in data["rounds"]
        if r["complete"]
    ]
    tested = [
        {"workflow_id": w["id"], "round": w["round"], "test_score": w["test_score"]}
        for w in data["workflows"]
        if w["test_score"] is not None
    ]
    return {
        "run_id": run_id,
        "dataset": run["dataset"],
        "status": run["status"],
        "seed": run["seed"],
        "optimizer": data["optimizer"],
        "executor": data["executor"],
        "rounds": len(curve),
        "best_score": best["score"] if best else None,
        "best_workflow_id": best["id"] if best else None,
        "best_round": best["round"] if best else None,
        "test_score": best["test_score"] if best else None,
        "tested_workflows": tested,
        "proposals": data["proposals"],
        "valid_modifications": data["valid_modifications"],
        "improvements": data["improvements"],
        "cost_usd": data["total_cost_usd"],
        "tokens": data["total_tokens"],
        "calls": data["total_calls"],
        "spend_by_role": {role: r["cost_usd"] for role, r in data["spend_by_role"].items()},
        "unpriced_calls": sum(r["unpriced_calls"] for r in data["spend_by_role"].values()),
        "unpriced_by_role": {role: r["unpriced_calls"] for role, r in data["spend_by_role"].items()},
        "calls_by_role": {role: r["calls"] for role, r in data["spend_by_role"].items()},
        "curve": curve,
        "_key": experiment_key(config),
    }


def _group_label(key: dict, differing: list[str]) -> str:
    if not differing:
        return "all runs"
    parts = []
    for k in differing:
        v = key.get(k)
        s = json.dumps(v) if not isinstance(v, str) else v
        parts.append(f"{k}={s if len(s) <= 40 else s[:37] + '...'}")
    return ", ".join(parts)


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    return {
        "n": n,
        "mean": float(np.mean(values)) if n else None,
        "std": float(np.std(values, ddof=1)) if n >= 2 else None,
    }


def compare_runs(
    store: Store, run_ids: Sequence[str], *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """Compare optimize runs on one benchmark (see the module docstring)."""
    ids = list(run_ids)
    if len(ids) < 2:
        raise UsageError("compare needs at least two run ids", "pass two or more: aflowctl compare RUN_A RUN_B")
    dup = sorted({r for r in ids if ids.count(r) > 1})
    if dup:
        raise UsageError(f"run id given twice: {', '.join(dup)}", "pass each run once")
    runs = []
    for rid in ids:
        row = require_run(store, rid, kind="optimize")
        if row["kind"] == "train":
            raise UsageError(
                f"run '{rid}' is a train run", "compare optimize runs; see 'aflowctl report' for a train run"
            )
        runs.append(row)
    datasets = {r["dataset"] for r in runs}
    if len(datasets) > 1:
        named = ", ".join(f"{r['id']} ({r['dataset']})" for r in runs)
        raise UsageError(f"runs are on different benchmarks: {named}", "compare runs of one benchmark at a time")

    summaries = [_run_summary(store, row) for row in runs]

    # groups: same experiment apart from the seed; the first run's group is the baseline
    groups: list[dict[str, Any]] = []
    for s in summaries:
        g = next((g for g in groups if g["_key"] == s["_key"]), None)
        if g is None:
            g = {"_key": s["_key"], "runs": []}
            groups.append(g)
        g["runs"].append(s)
    all_keys = sorted(set().union(*(g["_key"].keys() for g in groups)))
    differing = [k for k in all_keys if len({json.dumps(g["_key"].get(k), sort_keys=True) for g in groups}) > 1]
    notes: list[str] = []
    out_groups = []
    for i, g in enumerate(groups):
        finals = [s["best_score"] for s in g["runs"] if s["best_score"] is not None]
        tests = [s["test_score"] for s in g["runs"]]
        entry = {
            "group": i,
            "label": _group_label(g["_key"], differing),
            "config": {k: g["_key"].get(k) for k in differing},
            "runs": [s["run_id"] for s in g["runs"]],
            "seeds": [s["seed"] for s in g["runs"]],
            "final_best": _stats(finals),
            "test": _stats(tests) if tests and all(t is not None for t in tests) else None,
        }
        out_groups.append(entry)
        for s in g["runs"]:
            s["group"] = i
    differences = []
    base = groups[0]
    for metric, field in (("final_best_score", "best_score"), ("test_score", "test_score")):
        base_vals = [s[field] for s in base["runs"] if s[field] is not None]
        for i, g in enumerate(groups[1:], start=1):
            vals = [s[field] for s in g["runs"] if s[field] is not None]
            if len(base_vals) < 2 or len(vals) < 2:
                if metric == "final_best_score":
                    notes.append(
                        f"group {i} vs group 0: no confidence interval (needs at least two runs, i.e. seeds, "
                        f"per group; have {len(base_vals)} and {len(vals)})"
                    )
                continue
            if metric == "test_score" and (len(base_vals) < len(base["runs"]) or len(vals) < len(g["runs"])):
                notes.append(
                    f"group {i} vs group 0: test scores are missing for some runs (run optimize with --test); "
                    "no test-score interval"
                )
                continue
            diff, lo, hi = bootstrap_diff_ci(base_vals, vals, n_boot=n_boot, seed=seed)
            differences.append(
                {
                    "baseline_group": 0,
                    "group": i,
                    "metric": metric,
                    "difference": diff,
                    "ci_low": lo,
                    "ci_high": hi,
                    "level": 0.95,
                    "n_boot": n_boot,
                    "bootstrap_seed": seed,
                    "excludes_zero": bool(lo > 0 or hi < 0),
                }
            )
    if len(groups) == 1:
        notes.append("all runs share one config apart from the seed: one group, no difference to test")
    if any(len(g["runs"]) == 1 for g in groups) and len(groups) > 1:
        notes.append("groups with a single run have no standard deviation: run more seeds per config")

    # common budget: the smallest total spend among runs whose spend is known (a run with
    # unpriced calls only has a lower bound on its spend, so no common budget is claimed)
    unpriced = [s["run_id"] for s in summaries if s["unpriced_calls"]]
    if unpriced:
        notes.append(
            f"{len(unpriced)} run(s) made calls whose price is unknown ({', '.join(unpriced[:3])}"
            f"{', ...' if len(unpriced) > 3 else ''}): their spend is shown as unknown and no common budget"
            " is computed; price the model with [llm.prices] to compare at equal spend"
        )
    spends = [
        s["curve"][-1]["cumulative_cost_usd"]
        for s in summaries
        if s["curve"] and s["curve"][-1]["cumulative_cost_usd"] is not None and not s["unpriced_calls"]
    ]
    common = min(spends) if spends and len(spends) == len(summaries) else None
    for s in summaries:
        s["best_at_common_budget"] = _best_within(s["curve"], common) if common is not None else None
    max_round = max((p["round"] for s in summaries for p in s["curve"]), default=0)
    per_round = []
    for r in range(1, max_round + 1):
        at_round: dict[str, Any] = {"round": r}
        for s in summaries:
            p = next((p for p in s["curve"] if p["round"] == r), None)
            at_round[s["run_id"]] = p["best_score"] if p else None
        per_round.append(at_round)
    for s in summaries:
        s.pop("_key")
    for g in groups:
        g.pop("_key")
    return {
        "dataset": runs[0]["dataset"],
        "runs": summaries,
        "per_round": per_round,
        "common_budget_usd": common,
        "groups": out_groups,
        "differences": differences,
        "notes": notes,
    }


def default_plot_path(run_ids: Sequence[str]) -> Path:
    """``$AFLOWCTL_HOME/runs/compare/<A>__<B>.png`` (a hash of the ids for more than three runs)."""
    from aflowctl import paths

    ids = list(run_ids)
    if len(ids) <= 3:
        name = "__".join(ids)
    else:
        name = f"{ids[0]}__and-{len(ids) - 1}-more-{hashlib.sha256(' '.join(ids).encode()).hexdigest()[:8]}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return paths.home() / "runs" / "compare" / f"{safe}.png"


def format_ci(d: dict[str, Any]) -> str:
    what = "final best validation score" if d["metric"] == "final_best_score" else "test score of the best workflow"
    return (
        f"{what}, group {d['group']} − group {d['baseline_group']}: {d['difference']:+.4f} "
        f"(95% bootstrap CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], {d['n_boot']} resamples"
        f"{'; excludes 0' if d['excludes_zero'] else '; includes 0'})"
    )
