"""``aflowctl compare``: optimize runs on one benchmark side by side (table, JSON, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli._options import DbOpt, JsonOpt


def compare(
    run_ids: Annotated[
        list[str],
        typer.Argument(help="two or more optimize runs on the same benchmark; the first one's group is the baseline"),
    ],
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="PNG to write (default: $AFLOWCTL_HOME/runs/compare/<A>__<B>.png)"),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="do not write the PNG")] = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare runs: best score per round and per dollar, test score, valid modifications, spend by role, and a
    statistical note across seeds (mean, std, bootstrap CI of the difference)."""
    from aflowctl.reporting import compare as cmp
    from aflowctl.reporting.plots import plot_comparison
    from aflowctl.store import open_store

    result = cmp.compare_runs(open_store(db), run_ids)
    path = None
    if not no_plot:
        path = plot_comparison(result, plot if plot is not None else cmp.default_plot_path(run_ids))
    result["plot"] = str(path) if path else None
    if json_out:
        from aflowctl.cli._output import print_json

        print_json(result)
        return
    _print_tables(result)


def _print_tables(result: dict) -> None:
    from aflowctl.cli._output import console, fmt_cost, print_table
    from aflowctl.reporting.compare import format_ci

    rows, spend_rows = [], []
    for s in result["runs"]:
        rows.append(
            {
                "run": s["run_id"],
                "group": s["group"],
                "seed": s["seed"],
                "rounds": s["rounds"],
                "best val": s["best_score"],
                "test": s["test_score"],
                "valid/prop": f"{s['valid_modifications']}/{s['proposals']}",
                "spend": fmt_cost(s["cost_usd"], s["unpriced_calls"], s["calls"] - s["unpriced_calls"]),
                "best@budget": s["best_at_common_budget"],
            }
        )
        spend_rows.append(
            {
                "run": s["run_id"],
                "status": s["status"],
                "best wf (round)": f"{s['best_workflow_id']} ({s['best_round']})" if s["best_workflow_id"] else None,
                **{
                    role: fmt_cost(
                        v, s["unpriced_by_role"][role], s["calls_by_role"][role] - s["unpriced_by_role"][role]
                    )
                    for role, v in s["spend_by_role"].items()
                },
                "total": fmt_cost(s["cost_usd"], s["unpriced_calls"], s["calls"] - s["unpriced_calls"]),
            }
        )
    print_table(
        rows,
        ["run", "group", "seed", "rounds", "best val", "test", "valid/prop", "spend", "best@budget"],
        title=f"compare — {result['dataset']}",
    )
    roles = sorted({role for s in result["runs"] for role in s["spend_by_role"]})
    print_table(
        spend_rows,
        ["run", "status", "best wf (round)", *roles, "total"],
        title="best workflow and spend by role",
    )
    ids = [s["run_id"] for s in result["runs"]]
    print_table(result["per_round"], ["round", *ids], title="best score by round")
    for g in result["groups"]:
        fb = g["final_best"]
        std = "n/a" if fb["std"] is None else f"{fb['std']:.4f}"
        mean = "n/a" if fb["mean"] is None else f"{fb['mean']:.4f}"
        line = (
            f"group {g['group']} [{g['label']}]: {fb['n']} run(s), final best {mean} ± {std} (mean ± std across seeds)"
        )
        if g["test"] is not None and g["test"]["mean"] is not None:
            tstd = "n/a" if g["test"]["std"] is None else f"{g['test']['std']:.4f}"
            line += f"; test {g['test']['mean']:.4f} ± {tstd}"
        console.print(line, markup=False, highlight=False)
    for d in result["differences"]:
        console.print(format_ci(d), markup=False, highlight=False)
    for n in result["notes"]:
        console.print(f"note: {n}", markup=False, highlight=False)
    if result["common_budget_usd"] is not None:
        console.print(
            f"common budget (smallest total spend): ${result['common_budget_usd']:.4f}", markup=False, highlight=False
        )
    if result.get("plot"):
        console.print(f"plot: {result['plot']}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
