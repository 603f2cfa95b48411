"""Evaluate a workflow on a benchmark split: repeats x problems through the rollout pool.

:func:`evaluate_workflow` checks the inputs in this process (benchmark, split,
problem indices, the workflow's source: AST only, nothing of it runs here), splits
the (repeat, problem) items into tasks so that every worker is busy and repeats run
in parallel, runs them through a :class:`~aflowctl.rollout.pool.RolloutPool`
(durable: re-running the same evaluation after a kill reuses the finished tasks),
and stores one ``evaluations`` row per repeat with per-problem details.

A task is a contiguous slice of the items in repeat-major order (see
:func:`plan_items`): the items are shared evenly between the workers, and no task
holds more than ``MAX_WAVES`` waves of ``concurrency`` problems (a killed run loses
at most the tasks that were running). Tasks depend on ``workers`` and
``concurrency``: resume with the same values to reuse every finished task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
from aflowctl.errors import BenchmarkError
from aflowctl.rollout.eval_plan import MAX_WAVES as MAX_WAVES  # planning, re-exported
from aflowctl.rollout.eval_plan import plan_items, resolve_indices
from aflowctl.rollout.eval_results import Scorer, mean_of, store_evaluations, task_failure
from aflowctl.rollout.pool import PoolProgress, RolloutPool, TaskSpec

WORKER = "aflowctl.rollout.worker:evaluate"


@dataclass
class EvalProgress:
    """What a progress callback receives (problems, not tasks)."""

    total: int  # (repeat, problem) items
    done: int
    failed: int
    tasks_total: int
    tasks_done: int
    tasks_running: int
    tasks_reused: int
    score_sum: float = 0.0

    @property
    def mean_so_far(self) -> Optional[float]:
        return self.score_sum / self.done if self.done else None


@dataclass
class EvalResult:
    """The result of one evaluation.

    ``scores``: the mean score of each repeat; ``mean_score`` their mean; ``std``
    their population standard deviation (as AFlow's ``np.std``); ``n`` problems per
    repeat; ``cost_usd`` ``None`` only when no call had a known price; ``details``
    one dict per (repeat, problem): repeat, index, id, score, prediction, cost_usd,
    tokens, calls, error, duration_s.
    """

    dataset: str
    split: str
    mean_score: float
    scores: list[float]
    std: float
    n: int
    repeats: int
    cost_usd: Optional[float]
    tokens: int
    details: list[dict] = field(default_factory=list)
    evaluation_ids: list[int] = field(default_factory=list)
    errors: int = 0  # problems whose workflow raised
    tasks: int = 0
    tasks_reused: int = 0
    wall_s: float = 0.0
    pool_startup_s: Optional[float] = None
    run_id: Optional[str] = None
    workflow_id: Optional[int] = None

    def to_dict(self, details: bool = False) -> dict:
        d = asdict(self)
        if not details:
            d.pop("details")
        return d


def _dump(model: Any) -> dict:
    return model.model_dump(mode="json") if hasattr(model, "model_dump") else dict(model)


def evaluate_workflow(
    store: Any,
    src: Any,
    *,
    dataset: str,
    split: str = "validate",
    executor: ModelConfig | str,
    llm_cfg: Optional[LLMConfig] = None,
    rollout_cfg: Optional[RolloutConfig] = None,
    repeats: int = 1,
    limit: Optional[int] = None,
    indices: Optional[Sequence[int]] = None,
    run_id: Optional[str] = None,
    workflow_id: Optional[int] = None,
    seed: int = 0,
    pool: Optional[RolloutPool] = None,
    progress: Optional[Callable[[EvalProgress], None]] = None,
    store_rows: bool = True,
    scope: Optional[str] = "run",
    chunk_size: Optional[int] = None,
    name: Optional[str] = None,
) -> EvalResult:
    """Evaluate ``src`` (a WorkflowSource) on ``dataset``/``split``, ``repeats`` times.

    ``pool``: a started pool to reuse (the optimizer's); without one, a pool is
    started for this call and closed after it. ``run_id`` (an existing ``runs``
    row) tags the tasks, the evaluations and the executor's logged calls.
    ``store_rows=False`` skips the ``evaluations`` rows (smoke runs). ``scope``
    decides which finished tasks are reused: ``"run"`` (default) those of the same
    run (a resumed run; two runs never share work, so each pays for and logs its own
    calls), ``None`` those of any run, another string that scope. Raises :class:`BenchmarkError` (unknown benchmark,
    missing split, index out of range), :class:`WorkflowError` (bad code),
    :class:`BudgetExceeded`, or :class:`RolloutError` when tasks failed for good
    (what finished is stored; run the same evaluation again to retry the rest).
    """
    from aflowctl import benchmarks
    from aflowctl.workflow.loader import check_source
    from aflowctl.workflow.problem import worker_view

    t0 = time.perf_counter()
    if repeats < 1:
        raise BenchmarkError(f"repeats must be at least 1 (got {repeats})", "pass --repeats 1 or more")
    if isinstance(executor, str):
        executor = ModelConfig(model=executor)
    llm_cfg = llm_cfg or LLMConfig()
    rollout_cfg = rollout_cfg or (pool.cfg if pool is not None else RolloutConfig())
    bench = benchmarks.get(dataset)
    problems = bench.load(split)
    idx = resolve_indices(len(problems), dataset=dataset, split=split, limit=limit, indices=indices)
    check_source(src)

    chunks = plan_items(idx, repeats, rollout_cfg.workers, rollout_cfg.concurrency, chunk_size)
    exec_dump = _dump(executor)
    exec_dump.pop("timeout_s", None)  # does not change answers: not part of the task key
    exec_dump.pop("api_key_env", None)
    base = {
        "graph": src.graph,
        "prompt": src.prompt or "",
        "name": name or dataset,
        "dataset": dataset,
        "split": split,
        "executor": exec_dump,
        "seed": int(seed),
        "code_timeout_s": rollout_cfg.code_timeout_s,
        "code_memory_mb": rollout_cfg.code_memory_mb,
    }
    own = pool is None
    if pool is None:
        pool = RolloutPool(store, rollout_cfg)
    try:
        pool.start()
    except BaseException:
        if own:
            pool.close(kill=True)
        raise
    if pool.gateway is not None:  # workers call through the parent's gateway: no key, no store path
        context = {
            "gateway_client": pool.gateway.register(executor, role="executor", run_id=run_id, llm_cfg=llm_cfg),
            "concurrency": rollout_cfg.concurrency,
            "problem_timeout_s": rollout_cfg.problem_timeout_s,
        }
    else:
        context = {
            "run_id": run_id,
            "db_path": str(store.path),
            "concurrency": rollout_cfg.concurrency,
            "llm": _dump(llm_cfg),
            "executor": _dump(executor),
            "problem_timeout_s": rollout_cfg.problem_timeout_s,
        }
    # executor in the context carries timeout_s/api_key_env to the worker (context wins).
    views = {i: worker_view(bench, problems[i], i) for i in idx}  # the worker gets inputs, never answers
    specs = [
        TaskSpec(
            {**base, "items": [list(it) for it in chunk]},
            context=context,
            worker=WORKER,
            label=f"{dataset}/{split} items {k}",
            attached={"problems": [views[i] for i in dict.fromkeys(i for _, i in chunk)]},
        )
        for k, chunk in enumerate(chunks)
    ]
    # Largest first (stable): the short remainders fill the gaps at the end.
    order = sorted(range(len(chunks)), key=lambda k: -len(chunks[k]))
    specs, chunks = [specs[k] for k in order], [chunks[k] for k in order]
    sizes = {task_label: len(c) for task_label, c in zip((s.label for s in specs), chunks)}
    total_items = sum(sizes.values())

    problem_by_index = {i: problems[i] for i in idx}
    scorer = Scorer(bench, problem_by_index, threads=max(1, min(8, rollout_cfg.concurrency)))

    last_report: list = []

    def adapter(p: PoolProgress) -> None:
        last_report[:] = [p]
        last = p.last
        if last is not None and last.status == "done" and last.result:
            scorer.add(last.key, last.result.get("items", []))  # scored here, in the parent, as tasks finish
        if progress is not None:
            failed_items = sizes.get(last.label, 0) if last is not None and last.status == "failed" else 0
            done, score_sum = scorer.progress()
            progress(
                EvalProgress(
                    total=total_items,
                    done=done,
                    failed=failed_items,
                    tasks_total=p.total,
                    tasks_done=p.done,
                    tasks_running=p.running,
                    tasks_reused=p.reused,
                    score_sum=score_sum,
                )
            )

    if scope == "run":
        scope = f"run:{run_id}" if run_id is not None else None
    try:
        outcomes = pool.run(specs, run_id=run_id, scope=scope, progress=adapter)
        startup = pool.startup_s
        for o in outcomes:  # reused tasks (done by an earlier, interrupted process) are scored too
            if o.status == "done" and o.result:
                scorer.add(o.key, o.result.get("items", []))
        scorer.wait()
        if progress is not None and last_report:  # every answer scored now
            adapter(PoolProgress(**{**vars(last_report[0]), "last": None}))
    except BaseException:
        scorer.close()
        if own:
            pool.close(kill=True)
        raise
    scorer.close()
    if own:
        pool.close()

    failed = [o for o in outcomes if o.status != "done"]
    if failed:
        raise task_failure(failed, len(outcomes))

    items: list[dict] = []
    for o in outcomes:
        items.extend(o.result.get("items", []))
    for d in items:  # the full answer was only needed for scoring
        d.pop("answer", None)
    pos = {i: k for k, i in enumerate(idx)}
    items.sort(key=lambda d: (d["repeat"], pos.get(d["index"], d["index"])))
    per_repeat: dict[int, list[dict]] = {r: [] for r in range(repeats)}
    for d in items:
        per_repeat.setdefault(d["repeat"], []).append(d)
    scores = [mean_of([d["score"] for d in per_repeat[r]]) for r in range(repeats)]
    mean = mean_of(scores)
    std = math.sqrt(mean_of([(s - mean) ** 2 for s in scores])) if scores else 0.0
    costs = [d.get("cost_usd") for d in items]
    known = [c for c in costs if c is not None]
    cost = float(sum(known)) if known or not items or all(not d.get("calls") for d in items) else None
    tokens = int(sum(int(d.get("tokens") or 0) for d in items))
    eval_ids: list[int] = []
    if store_rows:
        eval_ids = store_evaluations(
            store, per_repeat, repeats, dataset=dataset, split=split, run_id=run_id, workflow_id=workflow_id, n=len(idx)
        )
    return EvalResult(
        dataset=dataset,
        split=split,
        mean_score=mean,
        scores=scores,
        std=std,
        n=len(idx),
        repeats=repeats,
        cost_usd=cost,
        tokens=tokens,
        details=items,
        evaluation_ids=eval_ids,
        errors=sum(1 for d in items if d.get("error")),
        tasks=len(outcomes),
        tasks_reused=sum(1 for o in outcomes if o.reused),
        wall_s=time.perf_counter() - t0,
        pool_startup_s=startup,
        run_id=run_id,
        workflow_id=workflow_id,
    )
