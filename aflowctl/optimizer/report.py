"""`aflowctl report`: what a run did, as data, a PNG plot, a self-contained HTML page
and a markdown summary.

:func:`gather` reads one run from the store into plain data (dicts and lists, JSON-able);
the renderers only format that data. Optimize runs (and any run with workflows) get
the search tree, scores per round and spend; train runs get their reward and loss
curves from ``train_metrics``.

Spend per round: the store has no round column on ``llm_calls``, so a round's spend is
attributed by time. Each completed round has an end time
(:func:`aflowctl.store.queries.round_end_times`: round 1 ends with the last validation
evaluation of the initial workflow, a later round when its experiences are committed,
which happens in the transaction that completes it). The cumulative spend at round r
is the sum of the costs of paid (non-cached) calls logged up to round r's end. Calls
after the last completed round (a ``--test`` evaluation, a round in progress) count in
the total only. Calls paid for a round that was interrupted and redone on resume fall
before the redone round's end, so they are counted in that round.

matplotlib is imported lazily (inside the plotting functions) with the Agg backend.
"""

from __future__ import annotations

import base64
import bisect
import difflib
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import AflowctlError, NotFoundError
from aflowctl.store import queries
from aflowctl.store.db import Store

#: train metrics drawn in the report, in this order, when present
TRAIN_PANELS = ("reward_mean", "loss", "kl", "entropy", "valid_rate", "grad_norm")


class ReportError(AflowctlError):
    """A report cannot be written (bad output folder, unknown format)."""


@dataclass
class ReportFiles:
    png: Path
    html: Path


# --------------------------------------------------------------------------- data


def require_run(store: Store, run_id: str) -> dict[str, Any]:
    """The run row, or :class:`NotFoundError` naming the run and the latest ones."""
    run = queries.get_run(store, run_id)
    if run is None:
        known = [r["id"] for r in queries.list_runs(store)][-5:]
        raise NotFoundError(
            f"run '{run_id}' does not exist",
            f"see 'aflowctl inspect runs' (latest: {', '.join(known) or 'none'})",
        )
    return run


def gather(store: Store, run_id: str) -> dict[str, Any]:
    """Everything the report shows about one run, as JSON-able data."""
    run = require_run(store, run_id)
    if run["kind"] == "train":
        return gather_train(store, run)
    return gather_optimize(store, run)


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


def unified_diff(parent: Optional[dict], child: dict) -> str:
    """Unified diff of graph.py and prompt.py of ``child`` against ``parent`` ('' when identical)."""
    if parent is None:
        return ""
    out: list[str] = []
    for field, name in (("graph_code", "graph.py"), ("prompt_code", "prompt.py")):
        a = (parent.get(field) or "").splitlines(keepends=True)
        b = (child.get(field) or "").splitlines(keepends=True)
        for line in difflib.unified_diff(a, b, fromfile=f"workflow {parent['id']}/{name}", tofile=f"workflow {child['id']}/{name}"):
            out.append(line if line.endswith("\n") else line + "\n")
    return "".join(out)


def _spend_curve(store: Store, run_id: str, ends: dict[int, str]) -> tuple[dict[int, float], float]:
    """Cumulative paid spend at each round's end, and the run's total paid spend."""
    timeline = queries.call_cost_timeline(store, run_id)
    times = [c["created_at"] for c in timeline]
    cum = [0.0]
    for c in timeline:
        cum.append(cum[-1] + float(c["cost_usd"]))
    at_end = {r: cum[bisect.bisect_right(times, t)] for r, t in ends.items()}
    return at_end, cum[-1]


def spend_by_role(store: Store, run_id: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Spend and calls aggregated by role, and the per role-and-model rows."""
    rows = queries.call_totals(store, run_id)
    by_role: dict[str, dict[str, Any]] = {}
    models = []
    for r in rows:
        role = r["role"] or "unknown"
        agg = by_role.setdefault(role, {"cost_usd": 0.0, "calls": 0, "cached_calls": 0, "tokens": 0, "unpriced_calls": 0})
        agg["cost_usd"] += float(r["cost_usd"] or 0.0)
        agg["calls"] += int(r["calls"] or 0)
        agg["cached_calls"] += int(r["cached_calls"] or 0)
        agg["tokens"] += int(r["prompt_tokens"] or 0) + int(r["completion_tokens"] or 0)
        agg["unpriced_calls"] += int(r["unpriced_calls"] or 0)
        models.append({
            "role": role, "model": r["model"], "calls": int(r["calls"] or 0), "cached_calls": int(r["cached_calls"] or 0),
            "tokens": int(r["prompt_tokens"] or 0) + int(r["completion_tokens"] or 0), "cost_usd": float(r["cost_usd"] or 0.0),
        })
    return dict(sorted(by_role.items())), models


def gather_optimize(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["id"]
    config = _json(run["config_json"])
    state = _json(run["state_json"])
    wf_rows = queries.list_workflows(store, run_id=run_id)
    by_id = {w["id"]: w for w in wf_rows}
    scores: dict[tuple[int, str], list[float]] = {}
    for e in queries.list_evaluations(store, run_id):
        if e["workflow_id"] is not None:
            scores.setdefault((e["workflow_id"], e["split"]), []).append(float(e["score"]))
    exps = queries.list_experiences(store, run_id=run_id)
    exp_by_child = {e["child_workflow_id"]: e for e in exps if e["child_workflow_id"] is not None}

    workflows = []
    for w in wf_rows:
        val = scores.get((w["id"], "validate"), [])
        test = scores.get((w["id"], "test"), [])
        e = exp_by_child.get(w["id"])
        workflows.append({
            "id": w["id"], "round": w["round"], "parent_id": w["parent_id"], "hash": w["hash"],
            "status": w["status"], "error": w["error"], "modification": w["modification"],
            "score": _mean(val), "std": _std(val), "repeats": len(val), "scores": val,
            "test_score": _mean(test), "test_repeats": len(test),
            "reward": e["reward"] if e else None,
            "diff": unified_diff(by_id.get(w["parent_id"]), w),
            "graph_code": w["graph_code"], "prompt_code": w["prompt_code"],
        })
    # proposals that never produced code (malformed responses): shown under their parent
    failed = [
        {"round": e["round"], "parent_id": e["parent_workflow_id"], "modification": e["modification"], "error": e["error"]}
        for e in exps if e["child_workflow_id"] is None
    ]

    ends = queries.round_end_times(store, run_id)
    spend_at, total = _spend_curve(store, run_id, ends)
    evaluated = [w for w in workflows if w["status"] == "valid" and w["score"] is not None]
    round_numbers = sorted({w["round"] for w in workflows} | {e["round"] for e in exps})
    rounds = []
    best_so_far: Optional[dict] = None
    prev_spend = 0.0
    for r in round_numbers:
        in_round = [w for w in workflows if w["round"] == r]
        ev = [w for w in in_round if w in evaluated]
        round_best = max(ev, key=lambda w: w["score"]) if ev else None
        if round_best is not None and (best_so_far is None or round_best["score"] > best_so_far["score"]):
            best_so_far = round_best
        r_exps = [e for e in exps if e["round"] == r]
        parents = sorted({w["parent_id"] for w in in_round if w["parent_id"] is not None}
                         | {e["parent_workflow_id"] for e in r_exps if e["parent_workflow_id"] is not None})
        spend = spend_at.get(r)
        rounds.append({
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
            "complete": r in ends,
        })
        if spend is not None:
            prev_spend = spend

    best = max(evaluated, key=lambda w: (w["score"], -w["round"])) if evaluated else None
    lineage = []
    node = best
    while node is not None:
        lineage.append({"id": node["id"], "round": node["round"], "modification": node["modification"], "score": node["score"]})
        node = next((w for w in workflows if w["id"] == node["parent_id"]), None)
    lineage.reverse()
    roles, models = spend_by_role(store, run_id)
    opt = config.get("optimize", {}) if isinstance(config.get("optimize"), dict) else {}
    optimizer = f"policy:{opt['policy']}" if opt.get("policy") else (opt.get("optimizer") or {}).get("model")
    return {
        "kind": run["kind"],
        "run": _run_meta(run, state),
        "optimizer": optimizer,
        "executor": (opt.get("executor") or {}).get("model"),
        "workflows": workflows,
        "failed_proposals": failed,
        "rounds": rounds,
        "best": None if best is None else {k: best[k] for k in (
            "id", "round", "score", "std", "repeats", "test_score", "modification", "graph_code", "prompt_code")},
        "lineage": lineage,
        "proposals": len(exps),
        "valid_modifications": sum(1 for e in exps if e["valid"]),
        "improvements": sum(1 for e in exps if e["valid"] and e["reward"] > 0),
        "total_cost_usd": total,
        "cost_after_last_round_usd": total - (spend_at[max(spend_at)] if spend_at else 0.0),
        "spend_by_role": roles,
        "spend_by_model": models,
    }


def _run_meta(run: dict[str, Any], state: dict) -> dict[str, Any]:
    return {
        "id": run["id"], "kind": run["kind"], "dataset": run["dataset"], "status": run["status"], "seed": run["seed"],
        "created_at": run["created_at"], "updated_at": run["updated_at"], "budget_usd": run["budget_usd"],
        "message": run["message"], "completed_round": state.get("completed_round"),
    }


def gather_train(store: Store, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["id"]
    metrics = queries.train_metrics(store, run_id)
    keys: list[str] = []
    for m in metrics:
        for k, v in m.items():
            if k not in ("update", "created_at") and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
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


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot(data: dict[str, Any], path: str | Path) -> Path:
    """Write the run's plot as a PNG at ``path``."""
    return plot_train(data, path) if data["kind"] == "train" else plot_optimize(data, path)


def plot_optimize(data: dict[str, Any], path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 5.8), dpi=110)
    try:
        wfs = [w for w in data["workflows"] if w["status"] == "valid" and w["score"] is not None]
        if wfs:
            ax.errorbar(
                [w["round"] for w in wfs], [w["score"] for w in wfs], yerr=[w["std"] or 0.0 for w in wfs],
                fmt="o", color="tab:blue", ecolor="tab:blue", alpha=0.75, capsize=3, markersize=5,
                label="workflow (mean ± std over validation repeats)",
            )
        tested = [w for w in data["workflows"] if w["test_score"] is not None]
        if tested:
            ax.scatter([w["round"] for w in tested], [w["test_score"] for w in tested], marker="*", s=140,
                       color="tab:green", zorder=5, label="test score")
        rb = [r for r in data["rounds"] if r["running_best"] is not None]
        if rb:
            ax.step([r["round"] for r in rb], [r["running_best"] for r in rb], where="post", color="tab:orange",
                    linewidth=2, label="running best")
        invalid = [r for r in data["rounds"] if r["round"] > 1 and r["proposals"] > r["valid"]]
        if invalid:
            ax.scatter([r["round"] for r in invalid], [0.0] * len(invalid), marker="x", color="tab:red", zorder=4,
                       label="round with invalid proposals", clip_on=False)
        ax.set_xlabel("round")
        ax.set_ylabel("validation score")
        ax.set_ylim(-0.02, 1.02)
        rounds = [r["round"] for r in data["rounds"]]
        if rounds:
            ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
            ax.set_xticks(rounds if len(rounds) <= 30 else rounds[:: max(1, len(rounds) // 15)])
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        cost = [r for r in data["rounds"] if r["cumulative_cost_usd"] is not None]
        if cost:
            ax2 = ax.twinx()
            (line,) = ax2.plot([r["round"] for r in cost], [r["cumulative_cost_usd"] for r in cost], color="tab:gray",
                               linestyle="--", marker=".", label="cumulative spend (USD)")
            ax2.set_ylabel("cumulative spend (USD)")
            ax2.set_ylim(bottom=0)
            handles.append(line)
            labels.append(line.get_label())
        if handles:
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
        meta = data["run"]
        ax.set_title(f"{meta['id']} — {meta['dataset'] or '?'} ({meta['status']})", fontsize=11)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_train(data: dict[str, Any], path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    keys = [k for k in TRAIN_PANELS if k in data["metric_keys"]]
    keys += [k for k in data["metric_keys"] if k not in keys and k not in ("epoch", "lr", "steps")][: max(0, 4 - len(keys))]
    keys = keys[:6] or ["reward_mean"]
    ncols = 2 if len(keys) > 1 else 1
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(9, 2.8 * nrows + 0.6), dpi=110, squeeze=False)
    try:
        metrics = data["metrics"]
        for ax, key in zip(axes.flat, keys):
            pts = [(m["update"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3, color="tab:blue")
                if key == "reward_mean":
                    sd = [m.get("reward_std") for m in metrics if isinstance(m.get(key), (int, float))]
                    if all(isinstance(s, (int, float)) for s in sd):
                        ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                                        color="tab:blue", alpha=0.15, label="± reward_std")
                        ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        meta = data["run"]
        fig.suptitle(f"{meta['id']} — training ({meta['status']})", fontsize=11)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


# --------------------------------------------------------------------------- formatting


def _f(x: Optional[float], digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _usd(x: Optional[float]) -> str:
    return "—" if x is None else f"${x:.4f}"


def _md_cell(text: Optional[str], limit: int = 80) -> str:
    t = " ".join((text or "").split())
    if len(t) > limit:
        t = t[: limit - 1] + "…"
    return t.replace("|", "\\|")


def render_markdown(data: dict[str, Any]) -> str:
    """A markdown summary: run, rounds table (or training table), best workflow, spend by role."""
    meta = data["run"]
    lines = [f"# Run {meta['id']}", ""]
    lines.append(f"- kind: {meta['kind']}; dataset: {meta['dataset'] or '—'}; status: {meta['status']}; seed: {meta['seed']}")
    if data["kind"] != "train":
        lines.append(f"- optimizer: {data['optimizer'] or '—'}; executor: {data['executor'] or '—'}")
        lines.append(f"- rounds: {len(data['rounds'])}; proposals: {data['proposals']}; valid modifications: "
                     f"{data['valid_modifications']}; improvements: {data['improvements']}")
        best = data["best"]
        lines.append(f"- best validation score: {_f(best['score'] if best else None)}"
                     + (f" (workflow {best['id']}, round {best['round']})" if best else ""))
    lines.append(f"- total spend: {_usd(data['total_cost_usd'])}")
    lines.append("")
    if data["kind"] == "train":
        lines += _md_train(data)
    else:
        lines += _md_optimize(data)
    lines += ["## Spend by role", "", "| role | calls | cached | tokens | cost (USD) |", "|---|---:|---:|---:|---:|"]
    for role, r in data["spend_by_role"].items():
        lines.append(f"| {role} | {r['calls']} | {r['cached_calls']} | {r['tokens']} | {r['cost_usd']:.4f} |")
    if not data["spend_by_role"]:
        lines.append("| (no LLM calls) | 0 | 0 | 0 | 0.0000 |")
    unpriced = sum(r["unpriced_calls"] for r in data["spend_by_role"].values())
    if unpriced:
        lines += ["", f"{unpriced} calls had no known price: they are not in the spend."]
    lines.append("")
    return "\n".join(lines)


def _md_optimize(data: dict[str, Any]) -> list[str]:
    lines = ["## Rounds", "", "| round | parent | proposals | valid | best score | running best | spend (USD, cumulative) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in data["rounds"]:
        parents = ", ".join(str(p) for p in r["parents"]) or "—"
        lines.append(f"| {r['round']} | {parents} | {r['proposals']} | {r['valid']} | {_f(r['best_score'])} | "
                     f"{_f(r['running_best'])} | {_f(r['cumulative_cost_usd'])} |")
    lines.append("")
    best = data["best"]
    lines += ["## Best workflow", ""]
    if best is None:
        lines += ["No workflow has been evaluated yet.", ""]
        return lines
    lines.append(f"- workflow {best['id']} (round {best['round']}): validation {_f(best['score'])} ± {_f(best['std'])} "
                 f"over {best['repeats']} repeats; test {_f(best['test_score'])}")
    lines.append("- lineage: " + " → ".join(
        f"{n['id']}" + (f" ({_md_cell(n['modification'], 60)})" if n["modification"] else " (initial)") for n in data["lineage"]))
    lines += ["", "```python", best["graph_code"].rstrip(), "```", ""]
    return lines


def _md_train(data: dict[str, Any]) -> list[str]:
    metrics = data["metrics"]
    cols = [k for k in ("reward_mean", "reward_std", "loss", "kl", "entropy", "valid_rate") if k in data["metric_keys"]]
    lines = [f"## Training ({len(metrics)} updates, {data['experiences']} experiences, {data['valid_experiences']} valid)", ""]
    if metrics:
        lines += ["| update | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
        shown = metrics if len(metrics) <= 40 else metrics[:: math.ceil(len(metrics) / 40)] + [metrics[-1]]
        for m in shown:
            lines.append(f"| {m['update']} | " + " | ".join(_f(m.get(c)) for c in cols) + " |")
    else:
        lines.append("No training updates recorded yet.")
    lines.append("")
    if data["checkpoints"]:
        lines += ["## Checkpoints", ""] + [f"- step {c['step']}: `{c['path']}`" for c in data["checkpoints"]] + [""]
    return lines


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;overflow-x:auto;font-size:12px;line-height:1.35}
.add{color:#116611;background:#eaffea}.del{color:#992222;background:#ffecec}
.hunk{color:#555;background:#eef}
details{margin:4px 0 4px 18px;border-left:2px solid #ddd;padding-left:8px}
summary{cursor:pointer;font-size:14px}.score{font-weight:bold}.bad{color:#a22}.good{color:#161}.muted{color:#777}
.best{background:#fff5d6}img{max-width:100%;border:1px solid #ddd}
"""


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _diff_html(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        cls = ""
        if line.startswith("+++") or line.startswith("---"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        elif line.startswith("@@"):
            cls = "hunk"
        out.append(f'<span class="{cls}">{_esc(line)}</span>' if cls else _esc(line))
    return "<pre>" + "\n".join(out) + "</pre>"


def _table(headers: list[str], rows: list[list[Any]], left: tuple[int, ...] = ()) -> str:
    th = "".join(f'<th class="{"l" if i in left else ""}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i in left else ""}">{_esc(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _tree_html(data: dict[str, Any]) -> str:
    wfs = data["workflows"]
    children: dict[Optional[int], list[dict]] = {}
    for w in wfs:
        children.setdefault(w["parent_id"], []).append(w)
    failed: dict[Optional[int], list[dict]] = {}
    for f in data["failed_proposals"]:
        failed.setdefault(f["parent_id"], []).append(f)
    best_id = data["best"]["id"] if data["best"] else None
    ids = {w["id"] for w in wfs}

    def node(w: dict, depth: int) -> str:
        score = "not evaluated" if w["score"] is None else f"{w['score']:.4f} ± {w['std']:.4f} (n={w['repeats']})"
        reward = "" if w["reward"] is None else (
            f' <span class="{"good" if w["reward"] > 0 else "bad"}">reward {w["reward"]:+.4f}</span>')
        test = "" if w["test_score"] is None else f" · test {w['test_score']:.4f}"
        status = "" if w["status"] == "valid" else f' <span class="bad">[{_esc(w["status"])}]</span>'
        label = _esc(w["modification"]) if w["modification"] else "<i>initial workflow</i>"
        cls = ' class="best"' if w["id"] == best_id else ""
        parts = [f'<details{" open" if depth < 2 else ""}{cls} id="wf-{w["id"]}"><summary>'
                 f'#{w["id"]} · round {w["round"]} · <span class="score">{_esc(score)}</span>{test}{reward}{status}'
                 f' — {label}</summary>']
        if w["error"]:
            parts.append(f'<div class="bad">error: {_esc(w["error"])}</div>')
        if w["parent_id"] is not None:
            parts.append(f'<details><summary>diff against #{w["parent_id"]}</summary>'
                         f'{_diff_html(w["diff"]) if w["diff"] else "<p class=muted>(identical code)</p>"}</details>')
        else:
            parts.append(f'<details><summary>code</summary><pre>{_esc(w["graph_code"])}</pre>'
                         f'<pre>{_esc(w["prompt_code"])}</pre></details>')
        for f in failed.get(w["id"], []):
            parts.append(f'<details><summary class="bad">round {f["round"]}: proposal without usable code — '
                         f'{_esc(f["modification"] or "(no modification parsed)")}</summary>'
                         f'<div class="bad">{_esc(f["error"])}</div></details>')
        for c in sorted(children.get(w["id"], []), key=lambda x: (x["round"], x["id"])):
            parts.append(node(c, depth + 1))
        parts.append("</details>")
        return "".join(parts)

    roots = [w for w in wfs if w["parent_id"] is None or w["parent_id"] not in ids]
    return "".join(node(r, 0) for r in sorted(roots, key=lambda x: x["id"])) or "<p>No workflows yet.</p>"


def render_html(data: dict[str, Any], png: bytes) -> str:
    """A self-contained page: inline CSS, the PNG as base64, no scripts, no external resources."""
    meta = data["run"]
    img = base64.b64encode(png).decode("ascii")
    head = [
        ["run", meta["id"]], ["kind", meta["kind"]], ["dataset", meta["dataset"] or "—"], ["status", meta["status"]],
        ["seed", meta["seed"]], ["created", meta["created_at"]], ["updated", meta["updated_at"]],
        ["total spend (USD)", f"{data['total_cost_usd']:.4f}"],
    ]
    if meta.get("message"):
        head.append(["message", meta["message"]])
    body = [f"<h1>aflowctl report — {_esc(meta['id'])}</h1>", _table(["", ""], head, left=(0, 1))]
    body.append(f'<h2>Plot</h2><img alt="plot of run {_esc(meta["id"])}" src="data:image/png;base64,{img}">')
    if data["kind"] == "train":
        body += _html_train(data)
    else:
        body += _html_optimize(data)
    roles = [[role, r["calls"], r["cached_calls"], r["tokens"], f"{r['cost_usd']:.4f}"] for role, r in data["spend_by_role"].items()]
    body.append("<h2>Spend by role</h2>" + _table(["role", "calls", "cached", "tokens", "cost (USD)"], roles, left=(0,)))
    models = [[m["role"], m["model"], m["calls"], m["cached_calls"], m["tokens"], f"{m['cost_usd']:.4f}"] for m in data["spend_by_model"]]
    body.append(_table(["role", "model", "calls", "cached", "tokens", "cost (USD)"], models, left=(0, 1)))
    unpriced = sum(r["unpriced_calls"] for r in data["spend_by_role"].values())
    if unpriced:
        body.append(f"<p class=muted>{unpriced} calls had no known price: they are not in the spend.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>aflowctl report {_esc(meta['id'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _html_optimize(data: dict[str, Any]) -> list[str]:
    out = []
    s = (f"optimizer <b>{_esc(data['optimizer'])}</b>, executor <b>{_esc(data['executor'])}</b>; "
         f"{data['proposals']} proposals, {data['valid_modifications']} valid, {data['improvements']} improved on their parent.")
    out.append(f"<p>{s}</p>")
    rows = [[r["round"], ", ".join(map(str, r["parents"])) or "—", r["proposals"], r["valid"], _f(r["best_score"]),
             _f(r["running_best"]), _f(r["round_cost_usd"]), _f(r["cumulative_cost_usd"])] for r in data["rounds"]]
    out.append("<h2>Rounds</h2>" + _table(
        ["round", "parent", "proposals", "valid", "best score", "running best", "spend (USD)", "cumulative (USD)"], rows))
    if data["cost_after_last_round_usd"] > 1e-12:
        out.append(f"<p class=muted>Spend after the last completed round (test evaluation, round in progress): "
                   f"{data['cost_after_last_round_usd']:.4f} USD.</p>")
    best = data["best"]
    out.append("<h2>Best workflow</h2>")
    if best is None:
        out.append("<p>No workflow has been evaluated yet.</p>")
    else:
        out.append(f"<p>Workflow <a href=\"#wf-{best['id']}\">#{best['id']}</a> (round {best['round']}): validation "
                   f"{_f(best['score'])} ± {_f(best['std'])} over {best['repeats']} repeats; test {_f(best['test_score'])}.</p>")
        out.append("<p>Lineage: " + " → ".join(
            f"#{n['id']} ({_esc(n['modification']) if n['modification'] else 'initial'}, {_f(n['score'])})"
            for n in data["lineage"]) + "</p>")
        out.append(f"<details><summary>graph.py</summary><pre>{_esc(best['graph_code'])}</pre></details>"
                   f"<details><summary>prompt.py</summary><pre>{_esc(best['prompt_code'])}</pre></details>")
    out.append("<h2>Search tree</h2><p class=muted>Each node: workflow id, round, mean validation score ± std over "
               "repeats, reward against its parent, modification. Open a node for its diff against the parent.</p>")
    out.append(_tree_html(data))
    return out


def _html_train(data: dict[str, Any]) -> list[str]:
    metrics = data["metrics"]
    cols = [k for k in ("reward_mean", "reward_std", "loss", "kl", "entropy", "valid_rate", "grad_norm", "lr")
            if k in data["metric_keys"]]
    out = [f"<h2>Training</h2><p>{len(metrics)} updates; {data['experiences']} experiences "
           f"({data['valid_experiences']} valid).</p>"]
    rows = [[m["update"], *[("—" if not isinstance(m.get(c), (int, float)) else f"{m[c]:.4g}") for c in cols]] for m in metrics]
    out.append(_table(["update", *cols], rows))
    if data["checkpoints"]:
        out.append("<h2>Checkpoints</h2>" + _table(
            ["step", "path", "created"], [[c["step"], c["path"], c["created_at"]] for c in data["checkpoints"]], left=(1,)))
    return out


# --------------------------------------------------------------------------- entry points


def write_report(store: Store, run_id: str, out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``report.png`` and ``report.html`` for a run into ``out_dir`` (default: the run's folder)."""
    from aflowctl import paths

    data = gather(store, run_id)
    out = Path(out_dir).expanduser() if out_dir is not None else paths.run_dir(run_id)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} is a file, not a folder", "pass a folder to --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report folder {out}: {exc.strerror}", "pass a writable folder to --out") from None
    png = plot(data, out / "report.png")
    page = render_html(data, png.read_bytes())
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return ReportFiles(png=png, html=html_path)


def markdown_report(store: Store, run_id: str) -> str:
    return render_markdown(gather(store, run_id))
