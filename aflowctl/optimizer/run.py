"""``optimize`` as one call: config, checks, the run's lifecycle, the search, the test split.

The CLI parses its options into :func:`run_optimize` and prints what it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from aflowctl.optimizer.search import OptimizeOutcome, Progress

Notify = Callable[[str], None]


def optimize_config(store: Any, *, config: Optional[Path], overrides: dict, resume: Optional[str]) -> Any:
    """The config of the run: the stored one (plus options) when resuming without --config."""
    from aflowctl.config import load_config
    from aflowctl.store import runs

    if resume and config is None:
        return runs.stored_config(store, resume, kind="optimize", overrides=overrides)
    return load_config(config, overrides)


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
) -> OptimizeOutcome:
    from loguru import logger

    from aflowctl import paths
    from aflowctl.errors import RunInterrupted
    from aflowctl.logging import add_run_log
    from aflowctl.optimizer.search import Optimizer, preflight
    from aflowctl.rollout.pool import RolloutPool
    from aflowctl.store import open_store, runs

    store = open_store(db)
    store.check_integrity()  # never start writing into a damaged store
    if resume or run_id:
        runs.check_not_busy(store, resume or run_id)
    cfg = optimize_config(store, config=config, overrides=overrides, resume=resume)
    if cfg.optimize.policy:
        from aflowctl.optimizer.policy import check_policy

        check_policy(cfg.optimize.policy, cfg)
    preflight(cfg)
    if check_providers:
        from aflowctl.preflight import check_models

        check_models(cfg, "optimize")
    if resume:
        opened = runs.reopen_run(store, resume, kind="optimize", cfg=cfg, force=force, budget_usd=cfg.optimize.budget_usd)
    else:
        opened = runs.create_run(store, kind="optimize", cfg=cfg, run_id=run_id, dataset=cfg.optimize.dataset,
                                 seed=cfg.optimize.seed, budget_usd=cfg.optimize.budget_usd,
                                 state={"completed_round": 0})
    rid = opened.id
    if opened.notice:
        notify(opened.notice)
    sink = add_run_log(paths.run_dir(rid) / "log.jsonl")
    notify(f"run {rid}: {cfg.optimize.dataset}, optimizer {cfg.optimize.policy or cfg.optimize.optimizer.model}, "
           f"executor {cfg.optimize.executor.model}")
    try:
        with RolloutPool(store, cfg.rollout) as pool:
            opt = Optimizer(store, cfg, rid, pool=pool, progress=progress)
            outcome = opt.run()
            if test and outcome.status in ("completed", "converged"):
                outcome.test = opt.evaluate_test(test_round)
    except KeyboardInterrupt:
        raise RunInterrupted(f"run {rid} was interrupted; everything finished so far is stored",
                             f"resume it with 'aflowctl optimize --resume {rid}'") from None
    finally:
        logger.remove(sink)
        opened.lease.release()
    return outcome
