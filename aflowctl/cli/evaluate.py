"""``aflowctl evaluate``: score a workflow on a benchmark split with an executor model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt, SeedOpt
from aflowctl.cli._output import console, err_console, print_json


def resolve_workflow(store: Any, workflow: Optional[str], dataset: str) -> tuple[Any, Optional[int], str]:
    """(WorkflowSource, workflow id in the store or None, description) for the WORKFLOW argument."""
    from aflowctl.errors import NotFoundError
    from aflowctl.workflow.loader import load_folder

    if workflow is None:
        from aflowctl.workflow.seeds import seed_workflow

        return seed_workflow(dataset), None, f"seed workflow of {dataset}"
    path = Path(workflow).expanduser()
    if path.exists():
        if not path.is_dir():
            path = path.parent  # graph.py given: its folder
        return load_folder(path), None, str(path)
    if workflow.isdigit():
        from aflowctl.store import Workflow
        from aflowctl.workflow.loader import WorkflowSource

        with store.read() as s:
            row = s.get(Workflow, int(workflow))
        if row is None:
            raise NotFoundError(f"workflow {workflow} does not exist in {store.path}",
                                "see 'aflowctl inspect workflows --run RUN_ID' for stored workflow ids")
        return WorkflowSource(graph=row.graph_code, prompt=row.prompt_code or ""), row.id, f"workflow {row.id}"
    raise NotFoundError(f"workflow '{workflow}' is neither a folder nor a workflow id",
                        "pass a folder holding graph.py and prompt.py, an AFlow round folder, or a number from the store")


def _fingerprint(cfg_json: dict, workflow_hash: str, dataset: str, split: str, repeats: int, indices: list) -> str:
    """What makes two evaluate commands the same evaluation (for resuming): the config keys
    evaluate uses whose role defines a result (resource-only keys and limits may change)."""
    import hashlib

    from aflowctl.config import defining_values

    config = defining_values(cfg_json, ("llm.", "rollout.", "optimize.executor.", "optimize.seed"))
    blob = json.dumps({"config": config, "workflow": workflow_hash, "dataset": dataset, "split": split,
                       "repeats": repeats, "indices": indices}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _unfinished_run(store: Any, fingerprint: str) -> Optional[str]:
    """The latest evaluate run with this fingerprint that did not complete, if any."""
    from sqlmodel import select

    from aflowctl.store import Run

    with store.read() as s:
        rows = s.exec(select(Run).where(Run.kind == "evaluate", Run.status.in_(("running", "interrupted", "failed")))
                      .order_by(Run.created_at.desc())).all()
    for row in rows:
        try:
            if json.loads(row.state_json or "{}").get("fingerprint") == fingerprint:
                return row.id
        except ValueError:
            continue
    return None


def _run_workflow_id(session: Any, run_id: str) -> Optional[int]:
    from sqlmodel import select

    from aflowctl.store import Workflow

    row = session.exec(select(Workflow).where(Workflow.run_id == run_id).order_by(Workflow.id)).first()
    return row.id if row is not None else None


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
    config: ConfigOpt = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate a workflow on a benchmark split: mean score, per-repeat scores, std, cost, tokens.

    Results are stored in the `evaluations` table of a run of kind "evaluate".
    Finished rollout tasks are stored as they complete: after an interruption, the
    same command again resumes that run and reuses them. Change --seed for fresh samples.
    """
    from aflowctl import __version__, benchmarks
    from aflowctl.config import load_config
    from aflowctl.errors import BudgetExceeded, UsageError
    from aflowctl.rollout.evaluate import evaluate_workflow, resolve_indices
    from aflowctl.store import Run, Workflow, new_run_id, open_store, utcnow
    from aflowctl.workflow.loader import canonical_hash, check_source

    if split not in ("validate", "test"):
        raise UsageError(f"--split must be validate or test (got {split!r})", "pass --split validate or --split test")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})", "pass --repeats 1 or more")
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
    cfg = load_config(config, overrides)
    bench = benchmarks.get(cfg.optimize.dataset)  # unknown name: lists the ones that exist
    ds = bench.name
    problems = bench.load(split)  # missing split: says how to fetch it
    idx = resolve_indices(len(problems), dataset=ds, split=split, limit=limit, indices=index)
    store = open_store(db)
    src, wid, what = resolve_workflow(store, workflow, ds)
    check_source(src)
    exec_cfg = cfg.optimize.executor

    now = utcnow()
    cfg_json = cfg.model_dump(mode="json", by_alias=True)
    fingerprint = _fingerprint(cfg_json, canonical_hash(src), ds, split, repeats, idx)
    state = {"workflow": what, "split": split, "repeats": repeats, "indices": idx if index else None, "limit": limit,
             "fingerprint": fingerprint}
    rid = _unfinished_run(store, fingerprint)
    if rid is not None:  # the same evaluation was interrupted: resume it, reusing its finished tasks
        with store.write() as s:
            run = s.get(Run, rid)
            run.status, run.message, run.updated_at = "running", None, now
            s.add(run)
            wid = wid if wid is not None else _run_workflow_id(s, rid)
        if not json_out:
            err_console.print(f"resuming the interrupted run {rid} (same workflow, data and options)", markup=False)
    else:
        rid = new_run_id("eval")
        with store.write() as s:
            s.add(Run(id=rid, kind="evaluate", dataset=ds, config_json=json.dumps(cfg_json, sort_keys=True),
                      config_hash=cfg.hash(), status="running", created_at=now, updated_at=now, seed=cfg.optimize.seed,
                      version=__version__, budget_usd=cfg.llm.budget_usd, state_json=json.dumps(state)))
    if wid is None:
        with store.write() as s:
            row = Workflow(run_id=rid, round=0, dataset=ds, graph_code=src.graph, prompt_code=src.prompt or "",
                           hash=canonical_hash(src), modification=f"evaluated: {what}", created_at=utcnow())
            s.add(row)
            s.flush()
            wid = row.id

    def finish(status: str, message: Optional[str]) -> None:
        with store.write() as s:
            run = s.get(Run, rid)
            run.status, run.message, run.updated_at = status, message, utcnow()
            s.add(run)

    if not json_out:
        err_console.print(f"run {rid}: {what} on {ds}/{split} ({len(idx)} problems x {repeats}), executor {exec_cfg.model}",
                          markup=False)
    show_bar = not json_out and sys.stderr.isatty()
    try:
        kwargs = dict(dataset=ds, split=split, executor=exec_cfg, llm_cfg=cfg.llm, rollout_cfg=cfg.rollout, repeats=repeats,
                      indices=idx, run_id=rid, workflow_id=wid, seed=cfg.optimize.seed)
        if show_bar:
            with _Bar(f"{ds}/{split}") as bar:
                res = evaluate_workflow(store, src, progress=bar, **kwargs)
        else:
            res = evaluate_workflow(store, src, **kwargs)
    except BudgetExceeded as exc:
        finish("budget_exceeded", str(exc))
        raise
    except KeyboardInterrupt:
        finish("interrupted", "interrupted; finished rollout tasks are stored and reused by the same command")
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, then reported by the CLI
        finish("failed", str(exc)[:500])
        raise
    summary = (f"mean {100 * res.mean_score:.2f}% over {repeats} repeat(s) of {res.n} problems"
               + (f", {res.errors} problem errors" if res.errors else ""))
    finish("completed", summary)
    out = {
        "run_id": rid, "workflow_id": wid, "workflow": what, "dataset": ds, "split": split, "executor_model": exec_cfg.model,
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
