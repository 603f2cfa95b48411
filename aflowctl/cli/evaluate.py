"""``aflowctl evaluate``: score a workflow on a benchmark split with an executor model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from aflowctl.cli import _progress
from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, NoPreflightOpt, SeedOpt
from aflowctl.cli._output import console, err_console, print_json


def evaluate(
    workflow: Annotated[
        Optional[str],
        typer.Argument(
            help="folder with graph.py and prompt.py (AFlow round folders too) or a workflow id of the store; "
            "default: the dataset's seed workflow"
        ),
    ] = None,
    dataset: Annotated[
        Optional[str], typer.Option("--dataset", "-d", help="benchmark name (see 'aflowctl data list')")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="validate or test")] = "validate",
    executor_model: Annotated[
        Optional[str], typer.Option("--executor-model", "-m", help="provider/model that runs the workflow")
    ] = None,
    api_base: Annotated[
        Optional[str], typer.Option("--api-base", help="base URL of an OpenAI-compatible server for the executor")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", "-k", help="evaluate this many times (different seeds)")] = 1,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="only the first N problems")] = None,
    index: Annotated[
        Optional[list[int]], typer.Option("--index", "-i", help="only this problem index (repeatable)")
    ] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="rollout worker processes")] = None,
    concurrency: Annotated[
        Optional[int], typer.Option("--concurrency", help="problems at once inside each worker")
    ] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="rollout backend: process or ray")] = None,
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="Ray cluster address (with --executor ray)")
    ] = None,
    seed: SeedOpt = None,
    no_preflight: NoPreflightOpt = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a workflow on a benchmark split: mean score, per-repeat scores, std, cost, tokens.

    Results are stored in the `evaluations` table of a run of kind "evaluate".
    Finished rollout tasks are stored as they complete: after an interruption, the
    same command again resumes that run and reuses them. Change --seed for fresh samples.
    """
    from aflowctl.evaluation import run_evaluation

    overrides = {
        "optimize.dataset": dataset,
        "optimize.executor.model": executor_model,
        "optimize.executor.api_base": api_base,
        "optimize.seed": seed,
        "rollout.workers": workers,
        "rollout.concurrency": concurrency,
        "rollout.executor": executor,
        "rollout.ray_address": ray_address,
    }
    # run_evaluation notifies once the inputs are checked and the run exists: then convert a local model
    prepare = _progress.once(
        lambda: _progress.prepare_local_models([_executor_model(config, overrides)], json_out=json_out)
    )

    def notify(line: str) -> None:
        if not json_out:
            err_console.print(line, markup=False)
        prepare()

    label = f"{dataset or 'evaluation'}/{split}"
    with _progress.Display(db=db, active=_progress.enabled(json_out)) as display:
        ev = run_evaluation(
            db=str(db) if db is not None else None,
            config=config,
            overrides=overrides,
            workflow=workflow,
            split=split,
            repeats=repeats,
            limit=limit,
            index=index,
            check_providers=not no_preflight,
            notify=notify,
            progress=lambda p: display.evaluation(
                "eval", label, p.done, p.total, _progress.eval_info_of({"mean": p.mean_so_far, "failed": p.failed})
            ),
        )
    res, rid, wid, what, ds, exec_model = (
        ev.result,
        ev.run_id,
        ev.workflow_id,
        ev.workflow,
        ev.dataset,
        ev.executor_model,
    )
    out = {
        "run_id": rid,
        "workflow_id": wid,
        "workflow": what,
        "dataset": ds,
        "split": split,
        "executor_model": exec_model,
        "mean_score": res.mean_score,
        "scores": res.scores,
        "std": res.std,
        "n": res.n,
        "repeats": res.repeats,
        "cost_usd": res.cost_usd,
        "tokens": res.tokens,
        "errors": res.errors,
        "evaluation_ids": res.evaluation_ids,
        "tasks": res.tasks,
        "tasks_reused": res.tasks_reused,
        "wall_s": round(res.wall_s, 3),
        "pool_startup_s": None if res.pool_startup_s is None else round(res.pool_startup_s, 3),
    }
    if json_out:
        print_json(out)
        return
    scores = ", ".join(f"{100 * s:.1f}%" for s in res.scores)
    cost = "unknown" if res.cost_usd is None else f"${res.cost_usd:.4f}"
    console.print(
        f"{ds}/{split}: mean {100 * res.mean_score:.2f}% (std {100 * res.std:.2f}) over {res.repeats} repeat(s) "
        f"of {res.n} problems; per repeat: {scores}",
        markup=False,
    )
    console.print(
        f"cost {cost}, {res.tokens} tokens, {res.wall_s:.1f} s"
        + (f" ({res.tasks_reused} of {res.tasks} tasks reused from an earlier run)" if res.tasks_reused else ""),
        markup=False,
    )
    if res.errors:
        first = next(d for d in res.details if d.get("error"))
        console.print(
            f"{res.errors} problem(s) raised an error (scored 0); "
            f"first, problem {first['index']}: {first['error'][:200]}",
            markup=False,
        )
    console.print(f"stored as run {rid}; see 'aflowctl inspect runs'", markup=False)


def _executor_model(config, overrides: dict) -> Optional[str]:
    """The executor model the evaluation will use (None when the config does not load:
    the evaluation itself then reports why)."""
    from aflowctl.config import load_config

    try:
        return load_config(config, overrides).optimize.executor.model
    except Exception:  # noqa: BLE001 - reported by run_evaluation with its own message
        return None


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
