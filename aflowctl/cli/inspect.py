"""``aflowctl inspect``: read what the store holds."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape

from aflowctl.cli._options import CsvOpt, DbOpt, JsonOpt
from aflowctl.cli._output import console, echo, emit, fmt_cost, print_csv, print_json
from aflowctl.errors import NotFoundError

inspect_app = typer.Typer(
    help="Read runs, experiences, workflows, LLM calls and training logs from the store.", no_args_is_help=True
)


def _store(db):
    from aflowctl.store import open_store

    return open_store(db)


def require_run(store, run_id: str) -> dict:
    """The run's row, or a one-line NotFoundError naming the latest runs."""
    from aflowctl.reporting.history import require_run as _require

    return _require(store, run_id)


def _pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def _when(ts: Optional[str]) -> str:
    return (ts or "")[:16].replace("T", " ")


@inspect_app.command("runs")
def runs_cmd(
    db: DbOpt = None,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
    kind: Annotated[Optional[str], typer.Option(help="optimize|train|evaluate")] = None,
):
    """List runs: status, rounds (or training updates), best validation score and spend."""
    from aflowctl.store import queries

    rows = queries.list_runs(_store(db), kind=kind)
    cols = [
        "id",
        "kind",
        "status",
        "dataset",
        "rounds",
        "updates",
        "best_score",
        "cost_usd",
        "unpriced_calls",
        "updated_at",
    ]
    table = [
        {
            **r,
            "done": _done(r),
            "best": _pct(r["best_score"]),
            "spend": fmt_cost(r["cost_usd"], r["unpriced_calls"], r["priced_calls"]),
            "updated": _when(r["updated_at"]),
        }
        for r in rows
    ]
    if not (json_out or csv_out):
        cols = ["id", "kind", "status", "dataset", "done", "best", "spend", "updated"]
    emit(
        rows,
        cols,
        json_out=json_out,
        csv_out=csv_out,
        table_rows=table,
        right=("best", "spend"),
        droppable=("kind", "updated"),
    )


def _done(run: dict) -> str:
    """How far a run got, counted as the run counts: rounds, training updates."""
    if run["kind"] == "optimize":
        return f"{run['rounds']} round" + ("s" if run["rounds"] != 1 else "")
    if run["kind"] == "train":
        return f"{run['updates']} update" + ("s" if run["updates"] != 1 else "")
    return ""


@inspect_app.command("experiences")
def experiences_cmd(
    db: DbOpt = None,
    run: Annotated[Optional[str], typer.Option("--run", help="only this run")] = None,
    round: Annotated[Optional[int], typer.Option("--round", help="only this round")] = None,
    succeeded: Annotated[
        Optional[bool],
        typer.Option("--succeeded/--failed", help="only successful (valid, reward > 0) or only failed ones"),
    ] = None,
    min_reward: Annotated[Optional[float], typer.Option("--min-reward", help="only rewards >= this")] = None,
    query: Annotated[
        Optional[str], typer.Option("-q", "--query", help="search the modification and action text")
    ] = None,
    short: Annotated[bool, typer.Option("-s", "--short", help="one line per experience")] = False,
    limit: Annotated[Optional[int], typer.Option("-n", "--limit", help="at most this many")] = None,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
):
    """List experiences (one per proposed modification), as RL training reads them."""
    from aflowctl.store import queries

    store = _store(db)
    if run:
        require_run(store, run)
    rows = queries.list_experiences(
        store, run_id=run, round=round, succeeded=succeeded, min_reward=min_reward, query=query, limit=limit
    )
    for r in rows:
        r["modification"] = r["modification"] or ""
    if json_out:
        print_json(rows)
        return
    cols = [
        "run_id",
        "round",
        "group_id",
        "episode_id",
        "step",
        "anchor",
        "modification",
        "reward",
        "score_before",
        "score_after",
        "valid",
        "policy_version",
    ]
    if csv_out:
        print_csv(rows, cols)
        return
    if short:
        emit(
            [{**r, "anchor": r["anchor"][:8], "reward": f"{r['reward']:+.3f}"} for r in rows],
            ["run_id", "round", "step", "anchor", "modification", "reward", "valid"],
            title="experiences",
        )
        return
    for r in rows:
        status = "success" if r["valid"] and r["reward"] > 0 else ("invalid" if not r["valid"] else "no gain")
        console.print(f"[bold]## {escape(r['run_id'])} round {r['round']}[/bold]  ({status})")
        echo(f"group {r['group_id']}  episode {r['episode_id']}  step {r['step']}  anchor {r['anchor'][:16]}")
        before = "-" if r["score_before"] is None else f"{r['score_before']:.4f}"
        after = "-" if r["score_after"] is None else f"{r['score_after']:.4f}"
        echo(f"score {before} -> {after}  reward {r['reward']:+.4f}  by {r['policy_version']}")
        echo(f"modification: {r['modification']}")
        if r.get("error"):
            echo(f"error: {r['error']}")
        echo("")


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
    csv_out: CsvOpt = False,
):
    """List the workflows (search-tree nodes) of a run, with scores, code and diffs."""
    from aflowctl.store import queries

    store = _store(db)
    require_run(store, run)
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
    cols = ["id", "round", "parent_id", "score", "repeats", "test_score", "status", "modification"]
    if csv_out:
        print_csv(rows, cols)
        return
    table = [{**r, "score": _pct(r["score"]), "test_score": _pct(r["test_score"])} for r in rows]
    emit(
        rows,
        cols,
        title=f"workflows of {run}",
        table_rows=table,
        headers={"parent_id": "parent", "test_score": "test", "repeats": "reps"},
        right=("score", "test_score"),
    )
    for r in rows:
        if show_code:
            console.print(f"[bold]# workflow {r['id']} (round {r['round']}) graph.py[/bold]")
            _print_code(r["graph_code"])
            console.print(f"[bold]# workflow {r['id']} prompt.py[/bold]")
            _print_code(r["prompt_code"])
        if diff:
            console.print(f"[bold]# diff of workflow {r['id']} against its parent[/bold]")
            _print_code(_diff(by_id.get(r["parent_id"]), r))


def _print_code(text: str) -> None:
    """Code and diffs line by line, never wrapped: a folded line would lose its +/- prefix.

    On a terminal narrower than a line, the line is cut with an ellipsis (use --json or
    a pipe for the whole text); off a terminal lines are printed whole.
    """
    for line in (text or "").splitlines():
        console.print(line, markup=False, highlight=False, no_wrap=True, overflow="ellipsis", crop=True)


@inspect_app.command("calls")
def calls_cmd(
    db: DbOpt = None,
    run: Annotated[Optional[str], typer.Option("--run", help="only this run")] = None,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
):
    """LLM calls: count, tokens and spend by run, role and model (each call: 'aflowctl logs')."""
    from aflowctl.store import queries

    store = _store(db)
    if run:
        require_run(store, run)
    rows = queries.call_totals(store, run)
    cols = [
        "run_id",
        "role",
        "provider",
        "model",
        "calls",
        "cached_calls",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "unpriced_calls",
    ]
    table = [
        {
            **r,
            "model": r["model"] if r["model"].startswith(f"{r['provider']}/") else f"{r['provider']}/{r['model']}",
            "tokens": f"{r['prompt_tokens']}+{r['completion_tokens']}",
            "spend": fmt_cost(r["cost_usd"], r["unpriced_calls"], r["priced_calls"]),
            "calls": f"{r['calls']}"
            + (f" ({r['cached_calls']} cached)" if r["cached_calls"] else "")
            + (f" ({r['errors']} failed)" if r["errors"] else ""),
        }
        for r in rows
    ]
    if not (json_out or csv_out):
        cols = ["run_id", "role", "model", "calls", "tokens", "spend"]
    emit(
        rows,
        cols,
        json_out=json_out,
        csv_out=csv_out,
        title="LLM calls",
        table_rows=table,
        right=("spend",),
        droppable=("tokens",),
    )


TRAINING_HEADERS = {
    "reward_mean": "reward",
    "valid_rate": "valid",
    "entropy": "entr",
    "clip_frac": "clip",
    "grad_norm": "grad",
    "singleton_step_group_frac": "1-grp",
    "tokens_per_s": "tok/s",
    "samples_per_s": "smp/s",
}
TRAINING_COLUMNS = [
    "update",
    "reward_mean",
    "valid_rate",
    "loss",
    "kl",
    "entropy",
    "clip_frac",
    "grad_norm",
    "singleton_step_group_frac",
    "tokens_per_s",
    "samples_per_s",
]


@inspect_app.command("training")
def training_cmd(
    run_id: Annotated[str, typer.Argument(help="training run id")],
    db: DbOpt = None,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
    last: Annotated[Optional[int], typer.Option("-n", "--last", help="only the last N updates")] = None,
) -> None:
    """Per-update training metrics and checkpoints of a training run."""
    from aflowctl.store import queries

    store = _store(db)
    run = queries.get_run(store, run_id)
    if run is None or run.get("kind") != "train":
        raise NotFoundError(f"training run '{run_id}' does not exist", "see 'aflowctl inspect runs --kind train'")
    metrics = queries.train_metrics(store, run_id)
    if last:
        metrics = metrics[-last:]
    ckpts = [
        {k: c.get(k) for k in ("step", "path", "sha256", "created_at")} for c in queries.list_checkpoints(store, run_id)
    ]
    if json_out:
        print_json(
            {
                "run": {k: run[k] for k in ("id", "status", "dataset", "seed", "created_at", "updated_at", "message")},
                "state": json.loads(run.get("state_json") or "{}"),
                "metrics": metrics,
                "checkpoints": ckpts,
            }
        )
        return
    if csv_out:
        print_csv(metrics, TRAINING_COLUMNS)
        return
    echo(f"run {run_id}: status {run['status']}" + (f" ({run['message']})" if run.get("message") else ""))
    emit(
        metrics,
        TRAINING_COLUMNS,
        title="training metrics",
        headers=TRAINING_HEADERS,
        right=TRAINING_COLUMNS,
        droppable=("samples_per_s", "tokens_per_s", "singleton_step_group_frac", "clip_frac", "entropy"),
    )
    emit(ckpts, ["step", "path", "created_at"], title="checkpoints")


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")
