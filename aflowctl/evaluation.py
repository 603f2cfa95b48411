"""``evaluate`` as one call: score a workflow on a benchmark split as a run of kind "evaluate".

The same evaluation (same workflow, data, repeats and result-defining config, see
:func:`fingerprint`) interrupted earlier is resumed: its run is reopened and its
finished rollout tasks are reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import BudgetExceeded, NotFoundError, RunInterrupted, UsageError
from aflowctl.store import queries, runs
from aflowctl.store.runs import RunStatus


@dataclass
class EvaluationRun:
    run_id: str
    workflow_id: Optional[int]
    workflow: str  # what was evaluated, in words
    dataset: str
    split: str
    executor_model: str
    result: Any  # rollout.evaluate.EvalResult
    resumed: bool


def resolve_workflow(store: Any, workflow: Optional[str], dataset: str) -> tuple[Any, Optional[int], str]:
    """(WorkflowSource, workflow id in the store or None, description) for the WORKFLOW argument."""
    from aflowctl.workflow.loader import WorkflowSource, load_folder

    if workflow is None:
        from aflowctl.workflow.seeds import seed_workflow

        return seed_workflow(dataset), None, f"seed workflow of {dataset}"
    path = Path(workflow).expanduser()
    if path.exists():
        if not path.is_dir():
            path = path.parent  # graph.py given: its folder
        return load_folder(path), None, str(path)
    if workflow.isdigit():
        row = queries.get_workflow(store, int(workflow))
        if row is None:
            raise NotFoundError(
                f"workflow {workflow} does not exist in {store.path}",
                "see 'aflowctl inspect workflows --run RUN_ID' for stored workflow ids",
            )
        return (
            WorkflowSource(graph=row["graph_code"], prompt=row["prompt_code"] or ""),
            row["id"],
            f"workflow {row['id']}",
        )
    raise NotFoundError(
        f"workflow '{workflow}' is neither a folder nor a workflow id",
        "pass a folder holding graph.py and prompt.py, an AFlow round folder, or a number from the store",
    )


def fingerprint(cfg_json: dict, workflow_hash: str, dataset: str, split: str, repeats: int, indices: list) -> str:
    """What makes two evaluate commands the same evaluation (for resuming): the config keys
    evaluate uses whose role defines a result (resource-only keys and limits may change)."""
    from aflowctl.config import defining_values

    config = defining_values(cfg_json, ("llm.", "rollout.", "optimize.executor.", "optimize.seed"))
    blob = json.dumps(
        {
            "config": config,
            "workflow": workflow_hash,
            "dataset": dataset,
            "split": split,
            "repeats": repeats,
            "indices": indices,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def run_evaluation(
    *,
    db: Optional[str],
    config: Optional[Path],
    overrides: dict,
    workflow: Optional[str],
    split: str = "validate",
    repeats: int = 1,
    limit: Optional[int] = None,
    index: Optional[list[int]] = None,
    check_providers: bool = True,
    progress: Optional[Callable[[Any], None]] = None,
    notify: Callable[[str], None] = lambda line: None,
) -> EvaluationRun:
    from aflowctl import benchmarks
    from aflowctl.config import load_config
    from aflowctl.rollout.evaluate import evaluate_workflow, resolve_indices
    from aflowctl.store import Workflow, open_store, utcnow
    from aflowctl.workflow.loader import canonical_hash, check_source

    if split not in ("validate", "test"):
        raise UsageError(f"--split must be validate or test (got {split!r})", "pass --split validate or --split test")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})", "pass --repeats 1 or more")
    cfg = load_config(config, overrides)
    bench = benchmarks.get(cfg.optimize.dataset)  # unknown name: lists the ones that exist
    ds = bench.name
    problems = bench.load(split)  # missing split: says how to fetch it
    idx = resolve_indices(len(problems), dataset=ds, split=split, limit=limit, indices=index)
    store = open_store(db)
    src, wid, what = resolve_workflow(store, workflow, ds)
    check_source(src)
    if check_providers:
        from aflowctl.preflight import check_models

        check_models(cfg, "evaluate")
    exec_cfg = cfg.optimize.executor
    cfg_json = cfg.model_dump(mode="json", by_alias=True)
    fp = fingerprint(cfg_json, canonical_hash(src), ds, split, repeats, idx)
    rid = queries.unfinished_evaluate_run(store, fp)
    if rid is not None:  # the same evaluation was interrupted: resume it, reusing its finished tasks
        opened = runs.reopen_run(store, rid, kind="evaluate", cfg=cfg, force=True, budget_usd=cfg.llm.budget_usd)
        wid = wid if wid is not None else queries.first_workflow_id(store, rid)
        notify(f"resuming the interrupted run {rid} (same workflow, data and options)")
    else:
        state = {
            "workflow": what,
            "split": split,
            "repeats": repeats,
            "indices": idx if index else None,
            "limit": limit,
            "fingerprint": fp,
        }
        opened = runs.create_run(
            store,
            kind="evaluate",
            cfg=cfg,
            dataset=ds,
            seed=cfg.optimize.seed,
            budget_usd=cfg.llm.budget_usd,
            state=state,
        )
        rid = opened.id
    try:
        if wid is None:

            def add(s: Any) -> int:
                row = Workflow(
                    run_id=rid,
                    round=0,
                    dataset=ds,
                    graph_code=src.graph,
                    prompt_code=src.prompt or "",
                    hash=canonical_hash(src),
                    modification=f"evaluated: {what}",
                    created_at=utcnow(),
                )
                s.add(row)
                s.flush()
                assert row.id is not None  # assigned by the flush
                return row.id

            wid = store.transact(add)
        notify(f"run {rid}: {what} on {ds}/{split} ({len(idx)} problems x {repeats}), executor {exec_cfg.model}")
        try:
            res = evaluate_workflow(
                store,
                src,
                dataset=ds,
                split=split,
                executor=exec_cfg,
                llm_cfg=cfg.llm,
                rollout_cfg=cfg.rollout,
                repeats=repeats,
                indices=idx,
                run_id=rid,
                workflow_id=wid,
                seed=cfg.optimize.seed,
                progress=progress if progress else None,
            )
        except BudgetExceeded as exc:
            runs.set_status(store, rid, RunStatus.BUDGET_EXCEEDED, str(exc))
            raise
        except KeyboardInterrupt:
            runs.set_status(
                store,
                rid,
                RunStatus.INTERRUPTED,
                "interrupted; finished rollout tasks are stored and reused by the same command",
            )
            raise RunInterrupted(
                f"run {rid} was interrupted; finished rollout tasks are stored",
                "run the same command again to resume it",
            ) from None
        except Exception as exc:  # noqa: BLE001 - recorded, then reported by the CLI
            runs.set_status(store, rid, RunStatus.FAILED, str(exc)[:500])
            raise
        summary = f"mean {100 * res.mean_score:.2f}% over {repeats} repeat(s) of {res.n} problems" + (
            f", {res.errors} problem errors" if res.errors else ""
        )
        runs.set_status(store, rid, RunStatus.COMPLETED, summary)
    finally:
        opened.lease.release()
    return EvaluationRun(rid, wid, what, ds, split, exec_cfg.model, res, not opened.created)
