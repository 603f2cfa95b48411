"""``aflowctl optimize``: AFlow-style workflow search, resumable, seeded and accounted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli import _progress
from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, NoPreflightOpt
from aflowctl.cli._output import console, err_console, fmt_cost, print_json


def optimize(
    config: ConfigOpt = None,
    dataset: Annotated[
        Optional[str], typer.Option("--dataset", help="benchmark name (see 'aflowctl data list')")
    ] = None,
    optimizer_model: Annotated[
        Optional[str], typer.Option("--optimizer-model", help="provider/model, or 'mutate' (LLM-free)")
    ] = None,
    executor_model: Annotated[
        Optional[str], typer.Option("--executor-model", help="provider/model that runs the workflows")
    ] = None,
    max_rounds: Annotated[
        Optional[int], typer.Option("--max-rounds", help="highest round number (round 1 = initial workflow)")
    ] = None,
    sample: Annotated[
        Optional[int], typer.Option("--sample", help="parents considered: the initial workflow plus the best others")
    ] = None,
    validation_rounds: Annotated[
        Optional[int], typer.Option("--validation-rounds", help="validation repeats per workflow")
    ] = None,
    validation_limit: Annotated[
        Optional[int], typer.Option("--validation-limit", help="use only the first N validation problems")
    ] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="rollout worker processes")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="random seed of the run")] = None,
    budget_usd: Annotated[
        Optional[float], typer.Option("--budget-usd", help="stop cleanly (resumably) at this spend")
    ] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="name of a new run")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="continue this run from where it stopped")] = None,
    force: Annotated[bool, typer.Option("--force", help="resume even if the config differs")] = False,
    candidates: Annotated[
        Optional[int], typer.Option("--candidates", help="K modifications sampled and evaluated per round")
    ] = None,
    policy: Annotated[
        Optional[str], typer.Option("--policy", help="trained policy checkpoint or exported directory as optimizer")
    ] = None,
    action_format: Annotated[
        Optional[str],
        typer.Option(
            "--action-format", help="what the optimizer answers: code, edit (one JSON edit, docs/edits.md) or auto"
        ),
    ] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="rollout backend: process or ray")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address")] = None,
    test: Annotated[
        bool, typer.Option("--test", help="after the search, evaluate the best workflow on the test split")
    ] = False,
    round_: Annotated[
        Optional[int], typer.Option("--round", help="with --test: evaluate this round's workflow instead")
    ] = None,
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

    def prepare() -> None:
        _progress.prepare_local_models(_local_models(db, config, overrides, resume), json_out=json_out)

    with _progress.Display(db=db, active=_progress.enabled(json_out), quiet_lines=json_out) as display:
        outcome = run_optimize(
            db=str(db) if db is not None else None,
            config=config,
            overrides=overrides,
            run_id=run_id,
            resume=resume,
            force=force,
            test=test,
            test_round=round_,
            serve_policy=serve_policy,
            check_providers=not no_preflight,
            progress=_progress.optimize_callback(display, prepare),
            notify=lambda line: _progress.notice(line),
        )
    warning, spend = _summary_extras(db, outcome)
    if json_out:
        print_json({**dataclasses.asdict(outcome), "warnings": [warning] if warning else []})
    else:
        best = (
            "none"
            if outcome.best_score is None
            else f"{100 * outcome.best_score:.1f}% (workflow {outcome.best_workflow_id}, round {outcome.best_round})"
        )
        console.print(
            f"run {outcome.run_id}: {outcome.status} after {outcome.rounds} rounds; best {best}; spent {spend}",
            markup=False,
        )
        if warning:
            err_console.print(warning, markup=False)
        if outcome.message:
            console.print(outcome.message, markup=False)
        if outcome.test:
            console.print(
                f"test split: {100 * outcome.test['mean_score']:.1f}% on {outcome.test['n']} problems "
                f"(workflow {outcome.test['workflow_id']})"
            )
        console.print(
            f"inspect: aflowctl inspect workflows --run {outcome.run_id}; report: aflowctl report {outcome.run_id}"
        )
    if outcome.status == "budget_exceeded":
        raise typer.Exit(3)


def _local_models(db, config, overrides: dict, resume: Optional[str]) -> list[Optional[str]]:
    """The models of the run (to prepare a local one before the work starts); none when
    the config does not load (run_optimize then says why)."""
    from aflowctl.optimizer.run import optimize_config
    from aflowctl.store import open_store

    try:
        cfg = optimize_config(open_store(db), config=config, overrides=overrides, resume=resume)
    except Exception:  # noqa: BLE001 - reported by run_optimize with its own message
        return []
    return [cfg.optimize.executor.model, cfg.optimize.optimizer.model]


def _summary_extras(db, outcome) -> tuple[Optional[str], str]:
    """The end-of-run warning (also written to the run's log) and the spend as text."""
    from aflowctl import paths
    from aflowctl.cli._warnings import search_warning
    from aflowctl.logging import add_run_log
    from aflowctl.store import open_store, queries

    store = open_store(db)
    warning = search_warning(store, outcome.run_id)
    if warning:
        from loguru import logger

        sink = add_run_log(paths.run_dir(outcome.run_id) / "log.jsonl")
        try:
            _progress.log_event("warning", warning, {})
        finally:
            logger.remove(sink)
    row = next((r for r in queries.list_runs(store, kind="optimize") if r["id"] == outcome.run_id), None)
    spend = fmt_cost(row["cost_usd"], row["unpriced_calls"], row["priced_calls"]) if row else f"${outcome.cost_usd:.4f}"
    return warning, spend


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
