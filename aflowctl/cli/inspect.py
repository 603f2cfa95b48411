"""``aflowctl inspect``: read what the store holds."""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Optional

import typer

from aflowctl.cli._options import DbOpt, JsonOpt
from aflowctl.cli._output import console, print_json, print_table

inspect_app = typer.Typer(help="Read runs, experiences, workflows, LLM calls and training logs from the store.", no_args_is_help=True)


def _store(db):
    from aflowctl.store import open_store

    return open_store(db)


def _require_run(store, run_id: str) -> dict:
    from aflowctl.reporting.history import require_run

    return require_run(store, run_id)


@inspect_app.command("runs")
def runs_cmd(db: DbOpt = None, json_out: JsonOpt = False, kind: Annotated[Optional[str], typer.Option(help="optimize|train|evaluate")] = None):
    """List runs: status, rounds, best validation score and spend."""
    from aflowctl.store import queries

    rows = queries.list_runs(_store(db), kind=kind)
    if json_out:
        print_json(rows)
        return
    print_table(rows, ["id", "kind", "status", "dataset", "rounds", "best_score", "cost_usd", "updated_at"], title="runs")


@inspect_app.command("experiences")
def experiences_cmd(
    db: DbOpt = None,
    run: Annotated[Optional[str], typer.Option("--run", help="only this run")] = None,
    round: Annotated[Optional[int], typer.Option("--round", help="only this round")] = None,
    succeeded: Annotated[
        Optional[bool], typer.Option("--succeeded/--failed", help="only successful (valid, reward > 0) or only failed ones")
    ] = None,
    min_reward: Annotated[Optional[float], typer.Option("--min-reward", help="only rewards >= this")] = None,
    query: Annotated[Optional[str], typer.Option("-q", "--query", help="search the modification and action text")] = None,
    short: Annotated[bool, typer.Option("-s", "--short", help="one line per experience")] = False,
    limit: Annotated[Optional[int], typer.Option("-n", "--limit", help="at most this many")] = None,
    json_out: JsonOpt = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="print CSV")] = False,
):
    """List experiences (one per proposed modification), as RL training reads them."""
    from aflowctl.store import queries

    store = _store(db)
    if run:
        _require_run(store, run)
    rows = queries.list_experiences(
        store, run_id=run, round=round, succeeded=succeeded, min_reward=min_reward, query=query, limit=limit
    )
    for r in rows:
        r["modification"] = r["modification"] or ""
    if json_out:
        print_json(rows)
        return
    cols = ["run_id", "round", "group_id", "episode_id", "step", "anchor", "modification", "reward",
            "score_before", "score_after", "valid", "policy_version"]
    if csv_out:
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return
    if short:
        print_table(
            [{**r, "anchor": r["anchor"][:10], "modification": r["modification"][:70]} for r in rows],
            ["run_id", "round", "step", "anchor", "modification", "reward", "valid"],
            title="experiences",
        )
        return
    for r in rows:
        status = "success" if r["valid"] and r["reward"] > 0 else ("invalid" if not r["valid"] else "no gain")
        console.print(f"[bold]## {r['run_id']} round {r['round']}[/bold]  ({status})")
        console.print(f"group {r['group_id']}  episode {r['episode_id']}  step {r['step']}  anchor {r['anchor'][:16]}")
        before = "-" if r["score_before"] is None else f"{r['score_before']:.4f}"
        after = "-" if r["score_after"] is None else f"{r['score_after']:.4f}"
        console.print(f"score {before} -> {after}  reward {r['reward']:+.4f}  by {r['policy_version']}")
        console.print(f"modification: {r['modification']}", markup=False)
        if r.get("error"):
            console.print(f"error: {r['error']}", markup=False)
        console.print("")


def _diff(parent: dict | None, child: dict) -> str:
    from aflowctl.reporting.history import workflow_diff

    if parent is None:
        return "(no parent)"
    return workflow_diff(parent, child) or "(identical)"


@inspect_app.command("workflows")
def workflows_cmd(
    run: Annotated[str, typer.Option("--run", help="run id")],
    db: DbOpt = None,
    round: Annotated[Optional[int], typer.Option("--round", help="only this round")] = None,
    show_code: Annotated[bool, typer.Option("--show-code", help="print graph.py and prompt.py")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="print the diff of each workflow against its parent")] = False,
    json_out: JsonOpt = False,
):
    """List the workflows (search-tree nodes) of a run, with scores, code and diffs."""
    from aflowctl.store import queries

    store = _store(db)
    _require_run(store, run)
    rows = queries.list_workflows(store, run_id=run, round=round)
    by_id = {r["id"]: r for r in queries.list_workflows(store, run_id=run)}
    if json_out:
        out = []
        for r in rows:
            item = dict(r)
            if not show_code:
                item.pop("graph_code")
                item.pop("prompt_code")
            if diff:
                item["diff"] = _diff(by_id.get(r["parent_id"]), r)
            out.append(item)
        print_json(out)
        return
    print_table(rows, ["id", "round", "parent_id", "score", "repeats", "test_score", "status", "modification"], title=f"workflows of {run}")
    for r in rows:
        if show_code:
            console.print(f"[bold]# workflow {r['id']} (round {r['round']}) graph.py[/bold]")
            console.print(r["graph_code"], markup=False, highlight=False)
            console.print(f"[bold]# workflow {r['id']} prompt.py[/bold]")
            console.print(r["prompt_code"], markup=False, highlight=False)
        if diff:
            console.print(f"[bold]# diff of workflow {r['id']} against its parent[/bold]")
            console.print(_diff(by_id.get(r["parent_id"]), r), markup=False, highlight=False)


@inspect_app.command("calls")
def calls_cmd(db: DbOpt = None, run: Annotated[Optional[str], typer.Option("--run", help="only this run")] = None, json_out: JsonOpt = False):
    """LLM calls: count, tokens and spend by run, role and model."""
    from aflowctl.store import queries

    store = _store(db)
    if run:
        _require_run(store, run)
    rows = queries.call_totals(store, run)
    if json_out:
        print_json(rows)
        return
    print_table(
        rows,
        ["run_id", "role", "model", "calls", "cached_calls", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls"],
        title="LLM calls",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")
