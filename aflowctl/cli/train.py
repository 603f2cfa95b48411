"""``aflowctl train`` and ``aflowctl export-policy`` (``inspect training`` is in inspect.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli import _progress
from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, NoPreflightOpt, SeedOpt
from aflowctl.cli._output import console, err_console, print_json


def train_cmd(
    config: ConfigOpt = None,
    db: DbOpt = None,
    resume: Annotated[
        Optional[str], typer.Option("--resume", help="continue this training run from its latest checkpoint")
    ] = None,
    run_id: Annotated[
        Optional[str], typer.Option("--run-id", help="id of a new run (default: train-<time>-<hex>)")
    ] = None,
    from_experiences: Annotated[
        Optional[list[str]],
        typer.Option("--from-experiences", help="warm start: SFT on the experiences of these runs (repeatable)"),
    ] = None,
    sft_only: Annotated[bool, typer.Option("--sft-only", help="only the SFT warm start, no GiGPO")] = False,
    policy_model: Annotated[
        Optional[str], typer.Option("--policy-model", help="HF model directory or GGUF file of the policy")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="override train.epochs")] = None,
    action_format: Annotated[
        Optional[str],
        typer.Option(
            "--action-format", help="what the policy answers: code, edit (one JSON edit, docs/edits.md) or auto"
        ),
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N")] = None,
    seed: SeedOpt = None,
    max_updates: Annotated[
        Optional[int], typer.Option("--max-updates", help="stop after this many updates in total")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="resume even if the checkpoint's model or config differs")
    ] = False,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="if the latest checkpoint is corrupt, use the previous one")
    ] = False,
    no_preflight: NoPreflightOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train the optimizer policy with GiGPO (episodes of workflow edits, PPO updates, checkpoints)."""
    from aflowctl.config import load_config
    from aflowctl.errors import UsageError
    from aflowctl.store import open_store
    from aflowctl.trainer.loop import Trainer

    if resume and run_id and resume != run_id:
        raise UsageError("--resume and --run-id name different runs", "pass only --resume RUN_ID")
    if sft_only and not from_experiences:
        raise UsageError("--sft-only needs --from-experiences RUN_ID", "name the runs whose experiences to learn from")
    if max_updates is not None and max_updates < 1:
        raise UsageError("--max-updates must be >= 1", "pass a positive number")
    store = open_store(db)
    overrides = {
        "train.policy_model": policy_model,
        "train.epochs": epochs,
        "train.action_format": action_format,
        "train.device": device,
        "train.seed": seed,
    }
    if resume and config is None:
        from aflowctl.store import runs

        cfg = runs.stored_config(store, resume, kind="train", overrides=overrides)  # an unknown run stops here
    else:
        cfg = load_config(config, overrides)

    with _progress.Display(active=_progress.enabled(json_out), quiet_lines=json_out) as display:
        shown = _progress.TrainDisplay(display)
        display.step("phase", "loading the policy and starting the environment")
        trainer = Trainer(
            cfg,
            store=store,
            run_id=resume or run_id,
            resume=bool(resume),
            force=force,
            fallback=fallback,
            from_experiences=from_experiences or (),
            sft_only=sft_only,
            max_updates=max_updates,
            callback=shown.event,
            check_providers=not no_preflight,
        )
        try:
            result = trainer.run()
        except KeyboardInterrupt:
            from aflowctl.errors import RunInterrupted

            raise RunInterrupted(
                f"training run {trainer.run_id} was interrupted; its checkpoints are kept",
                f"resume it with 'aflowctl train --resume {trainer.run_id}'",
            ) from None
        finally:
            shown.close()
    from aflowctl.cli._warnings import training_warning

    warning = training_warning(result.metrics)
    last = result.metrics[-1] if result.metrics else {}
    summary = {
        "run_id": result.run_id,
        "status": result.status,
        "updates": result.updates,
        "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "run_dir": str(result.run_dir),
        "last_metrics": last,
        "warnings": [warning] if warning else [],
    }
    if json_out:
        print_json(summary)
        return
    if warning:
        err_console.print(warning, markup=False)
    first = next((m for m in result.metrics if "reward_mean" in m), None)
    console.print(f"run {result.run_id}: {result.updates} updates, status {result.status}", markup=False)
    if first is not None and "reward_mean" in last:
        console.print(f"reward mean {first['reward_mean']:.3f} (first update) -> {last['reward_mean']:.3f} (last)")
    console.print(f"checkpoint: {summary['checkpoint']}")
    console.print(
        f"inspect: aflowctl inspect training {result.run_id}; export: aflowctl export-policy {result.run_id} OUT_DIR"
    )


def export_policy_cmd(
    source: Annotated[str, typer.Argument(help="training run id (its latest checkpoint) or a checkpoint directory")],
    out: Annotated[Path, typer.Argument(help="output directory (a plain Hugging Face model directory)")],
    force: Annotated[bool, typer.Option("--force", help="replace a non-empty output directory")] = False,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="if the latest checkpoint is corrupt, use the previous one")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a trained policy as a plain HF model directory (LoRA adapters merged)."""
    from aflowctl.trainer.export import export_policy

    path = export_policy(source, out, overwrite=force, fallback=fallback)
    if json_out:
        print_json({"path": str(path)})
    else:
        console.print(f"exported the policy to {path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("export-policy")(export_policy_cmd)
