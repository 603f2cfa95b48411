"""The PNG plots of ``report`` (optimize and train runs) and ``compare``.

They take the plain data of :mod:`aflowctl.reporting.history` and
:mod:`aflowctl.reporting.compare` and draw it; nothing here reads the store.
Degenerate runs draw without warnings: a run nothing was priced for shows tokens (or
calls) instead of a spend line at $0, a run with one training update shows its
points with their values on axes that include 0, and legends with many entries go
below the axes instead of over the lines.

matplotlib is imported lazily (inside the functions) with the Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

#: train metrics drawn in the report, in this order, when present
TRAIN_PANELS = ("reward_mean", "loss", "kl", "entropy", "valid_rate", "grad_norm")
#: train metrics that live in [0, 1]
UNIT_METRICS = ("valid_rate", "singleton_step_group_frac")
#: narrowest y range of a train panel with one update or constant values
MIN_SPAN = 0.2
#: usage measures, in order of preference: (key suffix, axis label)
USAGE_AXES = (
    ("cost_usd", "cumulative spend (USD)"),
    ("tokens", "cumulative tokens (nothing priced)"),
    ("calls", "cumulative LLM calls (nothing priced)"),
)
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@contextmanager
def _closed_on_error(fig: Any) -> Iterator[Any]:
    """Close ``fig`` when building it fails (a figure being returned stays open)."""
    try:
        yield fig
    except BaseException:
        _pyplot().close(fig)
        raise


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def usage_axis(points: Sequence[dict[str, Any]]) -> Optional[tuple[str, str]]:
    """The usage measure to draw for points with ``cumulative_<measure>`` keys: spend
    when any call was priced, else tokens, else calls; ``None`` when there is no usage.
    Returns (key, axis label)."""
    for measure, label in USAGE_AXES:
        key = f"cumulative_{measure}"
        values = [float(p[key]) for p in points if p.get(key) is not None]
        if values and max(values) > 0:
            return key, label
    return None


def _save(builder: Any, data: dict[str, Any], path: str | Path) -> Path:
    """Build a figure with ``builder(data)``, write it as a PNG at ``path``, close it."""
    plt = _pyplot()
    fig = builder(data)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
        return path
    finally:
        plt.close(fig)


def plot(data: dict[str, Any], path: str | Path) -> Path:
    """Write the run's plot as a PNG at ``path``."""
    return plot_train(data, path) if data["kind"] == "train" else plot_optimize(data, path)


def plot_optimize(data: dict[str, Any], path: str | Path) -> Path:
    return _save(optimize_figure, data, path)


def plot_train(data: dict[str, Any], path: str | Path) -> Path:
    return _save(train_figure, data, path)


def plot_comparison(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels, one line per run: best validation score against round and against
    usage (spend; tokens or calls when nothing was priced). The legend sits below the
    panels, so it never hides a line however many runs there are."""
    return _save(comparison_figure, result, path)


def optimize_figure(data: dict[str, Any]) -> Any:
    """Scores per round, running best, test scores, and cumulative usage on a second axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.8), dpi=110)
    with _closed_on_error(fig):
        wfs = [w for w in data["workflows"] if w["status"] == "valid" and w["score"] is not None]
        if wfs:
            ax.errorbar(
                [w["round"] for w in wfs],
                [w["score"] for w in wfs],
                yerr=[w["std"] or 0.0 for w in wfs],
                fmt="o",
                color="tab:blue",
                ecolor="tab:blue",
                alpha=0.75,
                capsize=3,
                markersize=5,
                label="workflow (mean ± std over validation repeats)",
            )
        tested = [w for w in data["workflows"] if w["test_score"] is not None]
        if tested:
            ax.scatter(
                [w["round"] for w in tested],
                [w["test_score"] for w in tested],
                marker="*",
                s=140,
                color="tab:green",
                zorder=5,
                label="test score",
            )
        rb = [r for r in data["rounds"] if r["running_best"] is not None]
        if rb:
            ax.step(
                [r["round"] for r in rb],
                [r["running_best"] for r in rb],
                where="post",
                color="tab:orange",
                linewidth=2,
                marker="o" if len(rb) == 1 else None,
                label="running best",
            )
        invalid = [r for r in data["rounds"] if r["round"] > 1 and r["proposals"] > r["valid"]]
        if invalid:
            ax.scatter(
                [r["round"] for r in invalid],
                [0.0] * len(invalid),
                marker="x",
                color="tab:red",
                zorder=4,
                label="round with invalid proposals",
                clip_on=False,
            )
        ax.set_xlabel("round")
        ax.set_ylabel("validation score")
        ax.set_ylim(-0.02, 1.02)
        rounds = [r["round"] for r in data["rounds"]]
        if rounds:
            ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
            ax.set_xticks(rounds if len(rounds) <= 30 else rounds[:: max(1, len(rounds) // 15)])
        else:
            ax.text(0.5, 0.5, "no round completed yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        done = [r for r in data["rounds"] if r["complete"]]
        axis = usage_axis(done)
        if axis is not None:
            key, label = axis
            ax2 = ax.twinx()
            (line,) = ax2.plot(
                [r["round"] for r in done],
                [r[key] for r in done],
                color="tab:gray",
                linestyle="--",
                marker=".",
                label=label,
            )
            ax2.set_ylabel(label)
            ax2.set_ylim(bottom=0)
            handles.append(line)
            labels.append(label)
        if handles:
            ax.legend(
                handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False
            )
        meta = data["run"]
        ax.set_title(f"{meta['id']} — {meta['dataset'] or '?'} ({meta['status']})", fontsize=11)
        fig.tight_layout()
    return fig


def _train_ylim(key: str, ys: Sequence[float], single: bool) -> Optional[tuple[float, float]]:
    """Y limits for a panel with one update or constant values (``None``: matplotlib's
    are fine): [0, 1] for metrics that live there, else a range that holds 0 and the
    values, at least ``MIN_SPAN`` wide."""
    lo, hi = min(ys), max(ys)
    if key in UNIT_METRICS and lo >= 0.0 and hi <= 1.0:
        return -0.05, 1.05
    if not single and hi - lo > 1e-9 * max(1.0, abs(hi)):
        return None
    lo, hi = min(0.0, lo), max(0.0, hi)
    if hi - lo < MIN_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
    pad = 0.1 * (hi - lo)
    return lo - pad, hi + pad


def train_figure(data: dict[str, Any]) -> Any:
    """One panel per train metric against the update."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = [k for k in TRAIN_PANELS if k in data["metric_keys"]]
    keys += [k for k in data["metric_keys"] if k not in keys and k not in ("epoch", "lr", "steps")][
        : max(0, 4 - len(keys))
    ]
    keys = keys[:6] or ["reward_mean"]
    ncols = 2 if len(keys) > 1 else 1
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(9, 2.8 * nrows + 0.6), dpi=110, squeeze=False)
    with _closed_on_error(fig):
        metrics = data["metrics"]
        updates = sorted({m["update"] for m in metrics})
        for ax, key in zip(axes.flat, keys):
            rows = [m for m in metrics if isinstance(m.get(key), (int, float))]
            if rows:
                xs = [m["update"] for m in rows]
                ys = [float(m[key]) for m in rows]
                ax.plot(
                    xs, ys, marker="o" if len(xs) < 40 else None, markersize=6 if len(xs) < 4 else 3, color="tab:blue"
                )
                sd = [m.get("reward_std") for m in rows]
                if key == "reward_mean" and all(isinstance(s, (int, float)) for s in sd):
                    if len(xs) > 1:
                        ax.fill_between(
                            xs,
                            [y - s for y, s in zip(ys, sd)],
                            [y + s for y, s in zip(ys, sd)],
                            color="tab:blue",
                            alpha=0.15,
                            label="± reward_std",
                        )
                    else:
                        ax.errorbar(xs, ys, yerr=sd, fmt="none", ecolor="tab:blue", capsize=4, label="± reward_std")
                    ax.legend(fontsize=8)
                    ys = ys + [y - s for y, s in zip(ys, sd)] + [y + s for y, s in zip(ys, sd)]
                lim = _train_ylim(key, ys, single=len(xs) == 1)
                if lim is not None:
                    ax.set_ylim(*lim)
                if len(xs) <= 3:  # few points: write their values
                    for x, m in zip(xs, rows):
                        ax.annotate(f"{m[key]:.4g}", (x, m[key]), textcoords="offset points", xytext=(6, 6), fontsize=8)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            if len(updates) == 1:
                ax.set_xlim(updates[0] - 1, updates[0] + 1)
                ax.set_xticks([updates[0]])
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        meta = data["run"]
        n = len(updates)
        fig.suptitle(f"{meta['id']} — training, {n} update{'s' if n != 1 else ''} ({meta['status']})", fontsize=11)
        fig.tight_layout()
    return fig


def comparison_figure(result: dict[str, Any]) -> Any:
    """Best score against round and against usage, one line per run, legend below."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    runs = result["runs"]
    ncol = min(3, max(1, len(runs) + 1))
    legend_rows = math.ceil((len(runs) + 1) / ncol)
    legend_h = 0.2 * legend_rows + 0.25  # inches below the panels
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8 + legend_h), dpi=110)
    with _closed_on_error(fig):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        axis = usage_axis([p for s in runs for p in s["curve"]])
        within: dict[int, int] = {}
        for s in runs:
            g = s.get("group", 0)
            k = within.get(g, 0)
            within[g] = k + 1
            style = {
                "color": colors[g % len(colors)],
                "marker": _MARKERS[k % len(_MARKERS)],
                "markersize": 4,
                "label": f"{s['run_id']} (group {g}, seed {s['seed']})",
            }
            pts = [p for p in s["curve"] if p["best_score"] is not None]
            if not pts:
                continue
            ax1.step([p["round"] for p in pts], [p["best_score"] for p in pts], where="post", **style)
            if axis is not None:
                used = [p for p in pts if p.get(axis[0]) is not None]
                if used:
                    ax2.step([p[axis[0]] for p in used], [p["best_score"] for p in used], where="post", **style)
        if axis is not None and axis[0] == "cumulative_cost_usd" and result.get("common_budget_usd"):
            ax2.axvline(result["common_budget_usd"], color="gray", linestyle=":", linewidth=1, label="common budget")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.set_xlabel("round")
        ax2.set_xlabel(axis[1] if axis else "usage (no LLM calls recorded)")
        if axis is None:
            ax2.text(0.5, 0.5, "no LLM calls recorded", ha="center", va="center", transform=ax2.transAxes)
        ys = [p["best_score"] for s in runs for p in s["curve"] if p["best_score"] is not None]
        for ax in (ax1, ax2):
            ax.set_ylabel("best validation score")
            ax.grid(alpha=0.3)
            if ys:  # scores live in [0, 1]: pad the data range, never far outside it
                pad = max(0.02, 0.1 * (max(ys) - min(ys)))
                ax.set_ylim(max(-0.02, min(ys) - pad), min(1.02, max(ys) + pad))
        ax1.set_title("best score vs round", fontsize=10)
        ax2.set_title(
            "best score vs "
            + (
                "spend"
                if axis and axis[0] == "cumulative_cost_usd"
                else (axis[0].split("_", 1)[1] if axis else "usage")
            ),
            fontsize=10,
        )
        handles, labels = ax1.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        handles += [h for h, lab in zip(h2, l2) if lab == "common budget"]
        labels += [lab for lab in l2 if lab == "common budget"]
        height = fig.get_figheight()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.suptitle(f"aflowctl compare — {result['dataset']}", fontsize=11)
        fig.tight_layout(rect=(0.0, legend_h / height, 1.0, 1.0))
    return fig
