"""``optimize`` as one call: config, checks, the run's lifecycle, the search, the test split.

The CLI parses its options into :func:`run_optimize` and prints what it returns. A
trained policy as optimizer is served by ``serve_policy`` (the CLI passes
:func:`aflowctl.trainer.serve.serve_policy`; the optimizer never imports the trainer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from aflowctl.config import Config, ModelConfig
from aflowctl.errors import AflowctlError, ConfigError
from aflowctl.optimizer.search import OptimizeOutcome, Progress

Notify = Callable[[str], None]


def optimize_config(store: Any, *, config: Optional[Path], overrides: dict, resume: Optional[str]) -> Any:
    """The config of the run: the stored one (plus options) when resuming without --config."""
    from aflowctl.config import load_config
    from aflowctl.store import runs

    if resume and config is None:
        return runs.stored_config(store, resume, kind="optimize", overrides=overrides)
    return load_config(config, overrides)


def preflight(cfg: Config) -> None:
    """Everything that can be checked before a run row is written: the benchmark and
    its validation split, the model strings and their providers."""
    from aflowctl import benchmarks
    from aflowctl.llm.registry import resolve
    from aflowctl.mdp.core import check_action_format

    bench = benchmarks.get(cfg.optimize.dataset)
    check_action_format(cfg.optimize.action_format, dataset=cfg.optimize.dataset, kind=bench.kind)
    if cfg.optimize.optimizer.model == "mutate" and not cfg.optimize.policy:
        check_action_format("edit", dataset=cfg.optimize.dataset, kind=bench.kind)  # mutate picks edits
    if not bench.load("validate"):
        raise AflowctlError(
            f"the validation split of {cfg.optimize.dataset} is empty", f"aflowctl data fetch {cfg.optimize.dataset}"
        )
    resolve(cfg.optimize.executor.model)
    if cfg.optimize.optimizer.model != "mutate" and not cfg.optimize.policy:
        resolve(cfg.optimize.optimizer.model)


def run_optimize(
    *,
    db: Optional[str],
    config: Optional[Path],
    overrides: dict,
    run_id: Optional[str] = None,
    resume: Optional[str] = None,
    force: bool = False,
    test: bool = False,
    test_round: Optional[int] = None,
    check_providers: bool = True,
    progress: Optional[Progress] = None,
    notify: Notify = lambda line: None,
    serve_policy: Optional[Callable[[Config], ModelConfig]] = None,
) -> OptimizeOutcome:
    from loguru import logger

    from aflowctl import paths
    from aflowctl.errors import RunInterrupted
    from aflowctl.logging import add_run_log
    from aflowctl.optimizer.search import Optimizer
    from aflowctl.rollout.pool import RolloutPool
    from aflowctl.store import open_store, runs

    store = open_store(db)
    store.check_integrity()  # never start writing into a damaged store
    busy_id = resume or run_id
    if busy_id:
        runs.check_not_busy(store, busy_id)
    cfg = optimize_config(store, config=config, overrides=overrides, resume=resume)
    policy_model = None
    if cfg.optimize.policy:
        if serve_policy is None:
            raise ConfigError(
                "optimize.policy is set but nothing serves a policy here",
                "pass serve_policy=aflowctl.trainer.serve.serve_policy",
            )
        policy_model = serve_policy(cfg)  # refuses a missing policy or another base model
    preflight(cfg)
    if check_providers:
        from aflowctl.preflight import check_models

        check_models(cfg, "optimize")
    if resume:
        opened = runs.reopen_run(
            store, resume, kind="optimize", cfg=cfg, force=force, budget_usd=cfg.optimize.budget_usd
        )
    else:
        opened = runs.create_run(
            store,
            kind="optimize",
            cfg=cfg,
            run_id=run_id,
            dataset=cfg.optimize.dataset,
            seed=cfg.optimize.seed,
            budget_usd=cfg.optimize.budget_usd,
            state={"completed_round": 0},
        )
    rid = opened.id
    if opened.notice:
        notify(opened.notice)
    sink = add_run_log(paths.run_dir(rid) / "log.jsonl")
    notify(
        f"run {rid}: {cfg.optimize.dataset}, optimizer {cfg.optimize.policy or cfg.optimize.optimizer.model}, "
        f"executor {cfg.optimize.executor.model}"
    )
    if progress is not None:
        progress("run_start", run_id=rid)
    try:
        with RolloutPool(store, cfg.rollout) as pool:
            opt = Optimizer(store, cfg, rid, pool=pool, progress=progress, policy_model=policy_model)
            outcome = opt.run()
            if test and outcome.status in ("completed", "converged"):
                outcome.test = opt.evaluate_test(test_round)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"run {rid} was interrupted; everything finished so far is stored",
            f"resume it with 'aflowctl optimize --resume {rid}'",
        ) from None
    finally:
        logger.remove(sink)
        opened.lease.release()
    return outcome
