"""``aflowctl optimize``: AFlow-style workflow search, resumable, seeded and accounted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, NoPreflightOpt
from aflowctl.cli._output import console, err_console, print_json


def _progress_printer(quiet: bool):
    def progress(event: str, **data):
        if quiet:
            return
        if event == "round_start":
            parent = f" from workflow {data['parent']} ({100 * data['parent_score']:.1f}%)" if data.get("parent") else ""
            err_console.print(f"[bold]round {data['round']}[/bold]{parent}")
        elif event == "round_done":
            kids = ", ".join(
                f"workflow {wid}: {'invalid' if sc is None else f'{100 * sc:.1f}%'}" for wid, sc in data.get("children", [])
            )
            err_console.print(f"  round {data['round']} done: {kids or 'no valid child'}")
        elif event == "proposal_failed":
            err_console.print(f"  candidate {data['k']} attempt {data['attempt']} rejected: {data['error'][:160]}", markup=False)

    return progress


def optimize(
    config: ConfigOpt = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="benchmark name (see 'aflowctl data list')")] = None,
    optimizer_model: Annotated[Optional[str], typer.Option("--optimizer-model", help="provider/model, or 'mutate' (LLM-free)")] = None,
    executor_model: Annotated[Optional[str], typer.Option("--executor-model", help="provider/model that runs the workflows")] = None,
    max_rounds: Annotated[Optional[int], typer.Option("--max-rounds", help="highest round number (round 1 = initial workflow)")] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", help="parents considered: the initial workflow plus the best others")] = None,
    validation_rounds: Annotated[Optional[int], typer.Option("--validation-rounds", help="validation repeats per workflow")] = None,
    validation_limit: Annotated[Optional[int], typer.Option("--validation-limit", help="use only the first N validation problems")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="rollout worker processes")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed of the run")] = None,
    budget_usd: Annotated[Optional[float], typer.Option("--budget-usd", help="stop cleanly (resumably) at this spend")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="name of a new run")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="continue this run from where it stopped")] = None,
    force: Annotated[bool, typer.Option("--force", help="resume even if the config differs")] = False,
    candidates: Annotated[Optional[int], typer.Option("--candidates", help="K modifications sampled and evaluated per round")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="trained policy checkpoint or exported directory as optimizer")] = None,
    action_format: Annotated[Optional[str], typer.Option("--action-format", help="what the optimizer answers: code, edit (one JSON edit, docs/edits.md) or auto")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="rollout backend: process or ray")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address")] = None,
    test: Annotated[bool, typer.Option("--test", help="after the search, evaluate the best workflow on the test split")] = False,
    round_: Annotated[Optional[int], typer.Option("--round", help="with --test: evaluate this round's workflow instead")] = None,
    no_preflight: NoPreflightOpt = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search for a better workflow (AFlow): select, propose, evaluate, record, converge."""
    from aflowctl.errors import UsageError
    from aflowctl.optimizer.run import run_optimize
    from aflowctl.trainer.serve import serve_policy

    if candidates is not None and candidates < 1:
        raise UsageError("--candidates must be at least 1", "pass --candidates 1 for AFlow's behaviour")
    overrides = {
        "optimize.dataset": dataset,
        "optimize.optimizer.model": optimizer_model,
        "optimize.executor.model": executor_model,
        "optimize.max_rounds": max_rounds,
        "optimize.sample": sample,
        "optimize.validation_rounds": validation_rounds,
        "optimize.validation_limit": validation_limit,
        "optimize.seed": seed,
        "optimize.budget_usd": budget_usd,
        "optimize.candidates": candidates,
        "optimize.action_format": action_format,
        # a path is stored absolute (resume from anywhere); a training run id as it is
        "optimize.policy": (str(Path(policy).resolve()) if Path(policy).exists() else policy) if policy else None,
        "rollout.workers": workers,
        "rollout.executor": executor,
        "rollout.ray_address": ray_address,
    }
    outcome = run_optimize(db=db, config=config, overrides=overrides, run_id=run_id, resume=resume, force=force,
                           test=test, test_round=round_, serve_policy=serve_policy, check_providers=not no_preflight,
                           progress=_progress_printer(json_out), notify=lambda line: err_console.print(line, markup=False))
    if json_out:
        print_json(dataclasses.asdict(outcome))
    else:
        best = "none" if outcome.best_score is None else f"{100 * outcome.best_score:.1f}% (workflow {outcome.best_workflow_id}, round {outcome.best_round})"
        console.print(f"run {outcome.run_id}: {outcome.status} after {outcome.rounds} rounds; best {best}; spent ${outcome.cost_usd:.4f}")
        if outcome.message:
            console.print(outcome.message, markup=False)
        if outcome.test:
            console.print(f"test split: {100 * outcome.test['mean_score']:.1f}% on {outcome.test['n']} problems (workflow {outcome.test['workflow_id']})")
        console.print(f"inspect: aflowctl inspect workflows --run {outcome.run_id}; report: aflowctl report {outcome.run_id}")
    if outcome.status == "budget_exceeded":
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
