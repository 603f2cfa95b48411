"""The self-contained HTML page of ``aflowctl report``, rendered from the Jinja2
template ``templates/report.html.j2`` (package data) with autoescape on.

This module only shapes :func:`aflowctl.reporting.history.gather`'s data into the rows
the template shows; the markup lives in the template.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any, Optional

#: train metrics shown in the page's table, in this order, when present
TRAIN_COLUMNS = ("reward_mean", "reward_std", "loss", "kl", "entropy", "valid_rate", "grad_norm", "lr")


def _num(x: Optional[float], digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _diff_lines(diff: str) -> list[tuple[str, str]]:
    """(css class, line) for each line of a unified diff."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "@@")):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = ""
        out.append((cls, line))
    return out


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aflowctl.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["diff_lines"] = _diff_lines
    return env


def _tree(data: dict[str, Any]) -> dict[str, Any]:
    wfs = data["workflows"]
    children: dict[Optional[int], list[dict]] = {}
    for w in sorted(wfs, key=lambda x: (x["round"], x["id"])):
        children.setdefault(w["parent_id"], []).append(w)
    failed: dict[Optional[int], list[dict]] = {}
    for f in data["failed_proposals"]:
        failed.setdefault(f["parent_id"], []).append(f)
    ids = {w["id"] for w in wfs}
    roots = sorted((w for w in wfs if w["parent_id"] is None or w["parent_id"] not in ids), key=lambda x: x["id"])
    return {
        "roots": roots,
        "children": children,
        "failed": failed,
        "best_id": data["best"]["id"] if data["best"] else None,
    }


def render_html(data: dict[str, Any], png: bytes) -> str:
    """A self-contained page: inline CSS, the PNG as base64, no scripts, no external resources."""
    meta = data["run"]
    head = [
        ["run", meta["id"]],
        ["kind", meta["kind"]],
        ["dataset", meta["dataset"] or "—"],
        ["status", meta["status"]],
        ["seed", meta["seed"]],
        ["created", meta["created_at"]],
        ["updated", meta["updated_at"]],
        ["total spend (USD)", f"{data['total_cost_usd']:.4f}"],
    ]
    if meta.get("message"):
        head.append(["message", meta["message"]])
    context: dict[str, Any] = {
        "data": data,
        "head": head,
        "png_base64": base64.b64encode(png).decode("ascii"),
        "role_rows": [
            [role, r["calls"], r["cached_calls"], r["tokens"], f"{r['cost_usd']:.4f}"]
            for role, r in data["spend_by_role"].items()
        ],
        "model_rows": [
            [m["role"], m["model"], m["calls"], m["cached_calls"], m["tokens"], f"{m['cost_usd']:.4f}"]
            for m in data["spend_by_model"]
        ],
        "unpriced": sum(r["unpriced_calls"] for r in data["spend_by_role"].values()),
    }
    if data["kind"] == "train":
        cols = [k for k in TRAIN_COLUMNS if k in data["metric_keys"]]
        context["train_cols"] = cols
        context["train_rows"] = [
            [m["update"], *[("—" if not isinstance(m.get(c), (int, float)) else f"{m[c]:.4g}") for c in cols]]
            for m in data["metrics"]
        ]
        context["checkpoint_rows"] = [[c["step"], c["path"], c["created_at"]] for c in data["checkpoints"]]
    else:
        context["round_rows"] = [
            [
                r["round"],
                ", ".join(map(str, r["parents"])) or "—",
                r["proposals"],
                r["valid"],
                _num(r["best_score"]),
                _num(r["running_best"]),
                _num(r["round_cost_usd"]),
                _num(r["cumulative_cost_usd"]),
            ]
            for r in data["rounds"]
        ]
        context.update(_tree(data))
    return _environment().get_template("report.html.j2").render(**context)
