"""``aflowctl evaluate``: score a workflow on a benchmark split with an executor model."""

from __future__ import annotations

import sys
from typing import Annotated, Any, List, Optional

import typer

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, NoPreflightOpt, SeedOpt
from aflowctl.cli._output import console, err_console, print_json


class _Bar:
    """A rich progress bar on stderr, fed by evaluate_workflow's progress callback."""

    def __init__(self, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
        )
        self.task = self.progress.add_task(description, total=None, info="starting workers")

    def __enter__(self) -> "_Bar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, p: Any) -> None:
        mean = p.mean_so_far
        info = f"tasks {p.tasks_done}/{p.tasks_total} ({p.tasks_running} running)"
        if mean is not None:
            info += f"  mean {100 * mean:.1f}%"
        self.progress.update(self.task, total=p.total, completed=p.done, info=info)


def evaluate(
    workflow: Annotated[Optional[str], typer.Argument(
        help="folder with graph.py and prompt.py (AFlow round folders too) or a workflow id of the store; "
             "default: the dataset's seed workflow")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="benchmark name (see 'aflowctl data list')")] = None,
    split: Annotated[str, typer.Option("--split", help="validate or test")] = "validate",
    executor_model: Annotated[Optional[str], typer.Option("--executor-model", "-m", help="provider/model that runs the workflow")] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="base URL of an OpenAI-compatible server for the executor")] = None,
    repeats: Annotated[int, typer.Option("--repeats", "-k", help="evaluate this many times (different seeds)")] = 1,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", help="only the first N problems")] = None,
    index: Annotated[Optional[List[int]], typer.Option("--index", "-i", help="only this problem index (repeatable)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="rollout worker processes")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", help="problems at once inside each worker")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="rollout backend: process or ray")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (with --executor ray)")] = None,
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
    show_bar = not json_out and sys.stderr.isatty()
    notify = (lambda line: None) if json_out else (lambda line: err_console.print(line, markup=False))
    kwargs = dict(db=db, config=config, overrides=overrides, workflow=workflow, split=split, repeats=repeats,
                  limit=limit, index=index, check_providers=not no_preflight, notify=notify)
    if show_bar:
        with _Bar(f"{dataset or 'evaluation'}/{split}") as bar:
            ev = run_evaluation(progress=bar, **kwargs)
    else:
        ev = run_evaluation(**kwargs)
    res, rid, wid, what, ds, exec_model = ev.result, ev.run_id, ev.workflow_id, ev.workflow, ev.dataset, ev.executor_model
    out = {
        "run_id": rid, "workflow_id": wid, "workflow": what, "dataset": ds, "split": split, "executor_model": exec_model,
        "mean_score": res.mean_score, "scores": res.scores, "std": res.std, "n": res.n, "repeats": res.repeats,
        "cost_usd": res.cost_usd, "tokens": res.tokens, "errors": res.errors, "evaluation_ids": res.evaluation_ids,
        "tasks": res.tasks, "tasks_reused": res.tasks_reused, "wall_s": round(res.wall_s, 3),
        "pool_startup_s": None if res.pool_startup_s is None else round(res.pool_startup_s, 3),
    }
    if json_out:
        print_json(out)
        return
    scores = ", ".join(f"{100 * s:.1f}%" for s in res.scores)
    cost = "unknown" if res.cost_usd is None else f"${res.cost_usd:.4f}"
    console.print(f"{ds}/{split}: mean {100 * res.mean_score:.2f}% (std {100 * res.std:.2f}) over {res.repeats} repeat(s) "
                  f"of {res.n} problems; per repeat: {scores}", markup=False)
    console.print(f"cost {cost}, {res.tokens} tokens, {res.wall_s:.1f} s"
                  + (f" ({res.tasks_reused} of {res.tasks} tasks reused from an earlier run)" if res.tasks_reused else ""),
                  markup=False)
    if res.errors:
        first = next(d for d in res.details if d.get("error"))
        console.print(f"{res.errors} problem(s) raised an error (scored 0); first, problem {first['index']}: {first['error'][:200]}",
                      markup=False)
    console.print(f"stored as run {rid}; see 'aflowctl inspect runs'", markup=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
