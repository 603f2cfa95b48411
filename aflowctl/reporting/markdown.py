"""The markdown summary of ``aflowctl report --format md``: run, rounds table (or
training table), best workflow and spend by role, from :func:`aflowctl.reporting.history.gather`'s data."""

from __future__ import annotations

import math
from typing import Any, Optional


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
    lines.append(
        f"- kind: {meta['kind']}; dataset: {meta['dataset'] or '—'}; status: {meta['status']}; seed: {meta['seed']}"
    )
    if data["kind"] != "train":
        lines.append(f"- optimizer: {data['optimizer'] or '—'}; executor: {data['executor'] or '—'}")
        lines.append(
            f"- rounds: {len(data['rounds'])}; proposals: {data['proposals']}; valid modifications: "
            f"{data['valid_modifications']}; improvements: {data['improvements']}"
        )
        best = data["best"]
        lines.append(
            f"- best validation score: {_f(best['score'] if best else None)}"
            + (f" (workflow {best['id']}, round {best['round']})" if best else "")
        )
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
    lines = [
        "## Rounds",
        "",
        "| round | parent | proposals | valid | best score | running best | spend (USD, cumulative) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rounds"]:
        parents = ", ".join(str(p) for p in r["parents"]) or "—"
        lines.append(
            f"| {r['round']} | {parents} | {r['proposals']} | {r['valid']} | {_f(r['best_score'])} | "
            f"{_f(r['running_best'])} | {_f(r['cumulative_cost_usd'])} |"
        )
    lines.append("")
    best = data["best"]
    lines += ["## Best workflow", ""]
    if best is None:
        lines += ["No workflow has been evaluated yet.", ""]
        return lines
    lines.append(
        f"- workflow {best['id']} (round {best['round']}): validation {_f(best['score'])} ± {_f(best['std'])} "
        f"over {best['repeats']} repeats; test {_f(best['test_score'])}"
    )
    lines.append(
        "- lineage: "
        + " → ".join(
            f"{n['id']}" + (f" ({_md_cell(n['modification'], 60)})" if n["modification"] else " (initial)")
            for n in data["lineage"]
        )
    )
    lines += ["", "```python", best["graph_code"].rstrip(), "```", ""]
    return lines


def _md_train(data: dict[str, Any]) -> list[str]:
    metrics = data["metrics"]
    cols = [k for k in ("reward_mean", "reward_std", "loss", "kl", "entropy", "valid_rate") if k in data["metric_keys"]]
    lines = [
        f"## Training ({len(metrics)} updates, {data['experiences']} experiences, {data['valid_experiences']} valid)",
        "",
    ]
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
