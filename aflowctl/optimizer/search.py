"""The search loop of `aflowctl optimize`: AFlow's algorithm, resumable and seeded.

Round 1 evaluates the initial workflow. Each later round (1) selects a parent among the
best evaluated workflows with the round's seeded generator, (2) asks the optimizer
(an LLM, the trained policy, or the LLM-free ``mutate`` proposer) for K modifications,
retrying malformed, repeated, non-compiling or smoke-failing ones with the error fed
back, (3) evaluates the valid children ``validation_rounds`` times in parallel through
the rollout pool, (4) records children, scores and experiences, (5) checks convergence.
Step (2) is :mod:`.proposal`; the run's outcome and its test split are :mod:`.outcome`.

Durability: a round's rows become visible together. Child workflows and their
evaluations are written first; the experiences and the run's cursor
(``state_json.completed_round``) are committed in one transaction that marks the round
complete. On resume, rows of an incomplete round are deleted and the round is redone:
LLM calls come back from the response cache and finished rollout tasks from the task
table, so nothing is paid twice and the result equals an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from aflowctl.config import Config, ModelConfig
from aflowctl.errors import AflowctlError, BudgetExceeded, ConfigError
from aflowctl.mdp import experience as exp_mod
from aflowctl.mdp.core import EvalPlan, SearchMDP
from aflowctl.optimizer.convergence import check_convergence
from aflowctl.optimizer.outcome import OptimizeOutcome, best_workflow, evaluate_test, outcome
from aflowctl.optimizer.proposal import Child, propose_all
from aflowctl.optimizer.selection import Candidate, round_rng, select_parent, top_candidates
from aflowctl.store import queries, runs
from aflowctl.store.db import Store
from aflowctl.store.runs import RunStatus

if TYPE_CHECKING:
    from aflowctl.llm.client import LLM

Progress = Callable[..., None]


def _optimizer_name(cfg: Config) -> str:
    if cfg.optimize.policy:
        return f"policy:{cfg.optimize.policy}"
    return cfg.optimize.optimizer.model


# ------------------------------------------------------------------ the optimizer


class Optimizer:
    """One optimize run. With ``optimize.policy`` set, ``policy_model`` is how the policy is
    served (see :func:`aflowctl.trainer.serve.policy_model_config`)."""

    def __init__(
        self,
        store: Store,
        cfg: Config,
        run_id: str,
        *,
        pool: Any,
        progress: Optional[Progress] = None,
        policy_model: Optional[ModelConfig] = None,
    ):
        from aflowctl import benchmarks

        self.store = store
        self.cfg = cfg
        self.oc = cfg.optimize
        self.run_id = run_id
        self.pool = pool
        self.progress = progress or (lambda *a, **k: None)
        self.bench = benchmarks.get(self.oc.dataset)
        self.kind = self.bench.kind
        self._val_problems: Optional[list[dict]] = None
        self._optimizer_llm: Optional[LLM] = None
        self._wait_s = 0.0  # time spent waiting on LLM calls and evaluations in this round
        self.round_stats: list[dict] = []  # per round: wall_s, wait_s, overhead_s
        self.policy_model = policy_model
        if self.oc.policy and policy_model is None:
            raise ConfigError(
                "optimize.policy is set but the policy is not served",
                "pass policy_model=aflowctl.trainer.serve.policy_model_config(...)",
            )
        self.mdp = SearchMDP(
            dataset=self.oc.dataset,
            operators=self.oc.operators,
            action_format=self.oc.action_format,
            failed_cases=self.oc.failed_cases,
            evaluate=self._mdp_evaluate,
        )
        self._check_models()

    def _check_models(self) -> None:
        """Unknown providers and malformed model strings fail before any work."""
        from aflowctl.llm.registry import resolve

        resolve(self.oc.executor.model)
        if not self._uses_mutate() and not self.oc.policy:
            resolve(self.oc.optimizer.model)

    # -------------------------------------------------------------- helpers

    @property
    def val_problems(self) -> list[dict]:
        if self._val_problems is None:
            probs = self.bench.load("validate")
            if self.oc.validation_limit:
                probs = probs[: self.oc.validation_limit]
            if not probs:
                raise AflowctlError(
                    f"the validation split of {self.oc.dataset} is empty", f"aflowctl data fetch {self.oc.dataset}"
                )
            self._val_problems = probs
        return self._val_problems

    def _llm_cfg(self):
        llm = self.cfg.llm
        budget = self.oc.budget_usd if self.oc.budget_usd is not None else llm.budget_usd
        return llm.model_copy(update={"budget_usd": budget})

    def _evaluate(
        self,
        graph: str,
        prompt: str,
        *,
        workflow_id: Optional[int],
        repeats: int,
        split: str = "validate",
        indices: Optional[list[int]] = None,
        limit: Optional[int] = None,
        store_rows: bool = True,
        seed: Optional[int] = None,
    ):
        from aflowctl.rollout.evaluate import evaluate_workflow
        from aflowctl.workflow.loader import WorkflowSource

        if indices is None and split == "validate" and limit is None:
            indices = list(range(len(self.val_problems)))
        t0 = time.perf_counter()
        try:
            return evaluate_workflow(
                self.store,
                WorkflowSource(graph=graph, prompt=prompt),
                dataset=self.oc.dataset,
                split=split,
                executor=self.oc.executor,
                llm_cfg=self._llm_cfg(),
                rollout_cfg=self.cfg.rollout,
                repeats=repeats,
                limit=limit,
                indices=indices,
                run_id=self.run_id,
                workflow_id=workflow_id if store_rows else None,
                seed=self.oc.seed if seed is None else seed,
                pool=self.pool,
                store_rows=store_rows,
                progress=lambda p: self.progress(
                    "evaluation",
                    workflow_id=workflow_id,
                    split=split,
                    done=p.done,
                    total=p.total,
                    failed=p.failed,
                    mean=p.mean_so_far,
                ),
            )
        finally:
            self._wait_s += time.perf_counter() - t0

    def _mdp_evaluate(self, src, *, indices, seed, repeats=1, workflow_id=None, store_rows=False):
        return self._evaluate(
            src.graph,
            src.prompt,
            workflow_id=workflow_id,
            repeats=repeats,
            indices=list(indices),
            store_rows=store_rows,
            seed=seed,
        )

    def plan(self) -> EvalPlan:
        """Every workflow of the run is scored on the same problems with the same executor seed."""
        return EvalPlan(indices=tuple(range(len(self.val_problems))), seed=self.oc.seed)

    def _insert_workflow(
        self,
        *,
        round_no: int,
        parent_id: Optional[int],
        graph: str,
        prompt: str,
        modification: Optional[str],
        status: str = "valid",
        error: Optional[str] = None,
    ) -> int:
        from aflowctl.workflow.loader import WorkflowSource, canonical_hash

        try:
            h = canonical_hash(WorkflowSource(graph=graph, prompt=prompt))
        except Exception:  # noqa: BLE001 - an invalid child still gets a (textual) identity
            import hashlib

            h = "raw-" + hashlib.sha256((graph + "\0" + prompt).encode()).hexdigest()[:40]

        return runs.add_workflow(
            self.store,
            run_id=self.run_id,
            round_no=round_no,
            parent_id=parent_id,
            dataset=self.oc.dataset,
            graph=graph,
            prompt=prompt,
            hash=h,
            modification=modification,
            status=status,
            error=error,
        )

    def _workflow_rows(self) -> list[dict]:
        return queries.list_workflows(self.store, run_id=self.run_id)

    def _candidates(self) -> list[Candidate]:
        rows = [r for r in self._workflow_rows() if r["status"] == "valid" and r["score"] is not None]
        return [
            Candidate(workflow_id=r["id"], score=float(r["score"]), round=r["round"], is_initial=r["round"] == 1)
            for r in rows
        ]

    def _tried(self, parent_id: int) -> list[exp_mod.Tried]:
        rows = [
            r for r in queries.list_experiences(self.store, run_id=self.run_id) if r["parent_workflow_id"] == parent_id
        ]
        return exp_mod.from_rows(rows)

    def _failed_cases(self, workflow_id: int) -> list[dict]:
        details = queries.first_evaluation_details(self.store, workflow_id)
        return self.mdp.failed_cases(details) if details is not None else []

    def _get_optimizer_llm(self):
        if self._optimizer_llm is None:
            from aflowctl.llm.client import make_llm

            mc: ModelConfig
            if self.oc.policy:
                assert self.policy_model is not None  # __init__ refuses a policy run without one
                mc, role = self.policy_model, "policy"
            else:
                mc, role = self.oc.optimizer, "optimizer"
            self._optimizer_llm = make_llm(mc, role=role, run_id=self.run_id, store=self.store, llm_cfg=self._llm_cfg())
        return self._optimizer_llm

    # -------------------------------------------------------------- proposal

    def _uses_mutate(self) -> bool:
        return self.oc.optimizer.model == "mutate" and not self.oc.policy

    # -------------------------------------------------------------- rounds

    def _round_one(self) -> None:
        from aflowctl.workflow import seeds
        from aflowctl.workflow.loader import check_source, load_folder

        if self.oc.initial_workflow:
            src = load_folder(self.oc.initial_workflow)
        else:
            src = seeds.seed_workflow(self.oc.dataset)
        check_source(src)
        self.progress("round_start", round=1, parent=None)
        wid = self._insert_workflow(round_no=1, parent_id=None, graph=src.graph, prompt=src.prompt, modification=None)
        res = self.mdp.evaluate(src, self.plan(), repeats=self.oc.validation_rounds, workflow_id=wid, store_rows=True)

        runs.update_state(self.store, self.run_id, completed_round=1)
        self.progress("round_done", round=1, score=res.mean_score, children=[(wid, res.mean_score)])

    def _round(self, round_no: int) -> None:
        from aflowctl.workflow.loader import WorkflowSource

        cands = top_candidates(self._candidates(), self.oc.sample)
        if not cands:
            raise AflowctlError("no evaluated workflow to select a parent from", "check the initial workflow")
        values = None
        if self.oc.policy_guidance_weight > 0:
            values = self._policy_values(cands)
        parent_c, _ = select_parent(
            cands,
            round_rng(self.oc.seed, round_no, 0),
            alpha=self.oc.alpha,
            lambda_=self.oc.lambda_,
            policy_values=values,
            policy_weight=self.oc.policy_guidance_weight,
        )
        parent = next(r for r in self._workflow_rows() if r["id"] == parent_c.workflow_id)
        self.progress("round_start", round=round_no, parent=parent["id"], parent_score=parent_c.score)
        children = propose_all(self, round_no, parent, parent_c.score)
        for c in children:
            if c.graph is not None:
                c.workflow_id = self._insert_workflow(
                    round_no=round_no,
                    parent_id=parent["id"],
                    graph=c.graph,
                    prompt=c.prompt or "",
                    modification=c.modification,
                    status="valid" if c.valid else "invalid",
                    error=None if c.valid else c.error,
                )
        valid = [c for c in children if c.valid]
        if valid:
            with ThreadPoolExecutor(max_workers=len(valid)) as tp:
                results = list(
                    tp.map(
                        lambda c: self.mdp.evaluate(
                            WorkflowSource(graph=c.graph, prompt=c.prompt or ""),
                            self.plan(),
                            repeats=self.oc.validation_rounds,
                            workflow_id=c.workflow_id,
                            store_rows=True,
                        ),
                        valid,
                    )
                )
            for c, res in zip(valid, results):
                c.scores = list(res.scores)
        self._record(round_no, parent, parent_c.score, children)
        self.progress(
            "round_done",
            round=round_no,
            parent=parent["id"],
            children=[(c.workflow_id, float(np.mean(c.scores)) if c.scores else None) for c in children],
        )

    def _record(self, round_no: int, parent: dict, parent_score: float, children: list[Child]) -> None:
        group_id = f"{self.run_id}:{self._initial_hash()[:12]}"
        policy_version = _optimizer_name(self.cfg)

        rows = []
        for c in children:
            after = float(np.mean(c.scores)) if c.valid and c.scores else None
            rows.append(
                dict(
                    group_id=group_id,
                    episode_id=f"{self.run_id}/r{round_no}/k{c.k}",
                    step=round_no - 2,
                    anchor=parent["hash"],
                    parent_workflow_id=parent["id"],
                    child_workflow_id=c.workflow_id,
                    prompt=c.prompt_text,
                    action_text=c.action_text,
                    modification=c.modification,
                    reward=self.mdp.reward(parent_score, after),
                    score_before=parent_score,
                    score_after=after,
                    valid=c.valid and after is not None,
                    error=c.error if not c.valid else None,
                    policy_version=policy_version,
                )
            )
        runs.record_round(self.store, self.run_id, round_no, rows)

    def _initial_hash(self) -> str:
        rows = [r for r in self._workflow_rows() if r["round"] == 1]
        return rows[0]["hash"] if rows else "none"

    def _policy_values(self, cands: list[Candidate]) -> list[float]:
        """Policy guidance: the mean reward of the policy's past actions from each parent
        (0 where it never acted), a cheap value estimate that needs no extra model."""
        rows = queries.list_experiences(self.store, run_id=self.run_id)
        vals = []
        for c in cands:
            rs = [r["reward"] for r in rows if r["parent_workflow_id"] == c.workflow_id and r["valid"]]
            vals.append(float(np.mean(rs)) if rs else 0.0)
        return vals

    def _converged(self) -> bool:
        if not self.oc.check_convergence:
            return False
        rows = [r for r in self._workflow_rows() if r["status"] == "valid" and r["score"] is not None]
        means, stds = [], []
        for r in rows:
            sc = queries.workflow_scores(self.store, r["id"])
            means.append(float(np.mean(sc)))
            stds.append(float(np.std(sc, ddof=0)))
        ok, _, _ = check_convergence(
            means, stds, top_k=3, z=self.oc.convergence_z, consecutive=self.oc.consecutive_rounds
        )
        return ok

    # -------------------------------------------------------------- driver

    def run(self) -> OptimizeOutcome:
        done = queries.run_state(self.store, self.run_id).get("completed_round", 0)
        runs.discard_after(self.store, self.run_id, done)
        status, message = "completed", ""
        try:
            _ = self.val_problems
            if done < 1:
                self._round_one()
                done = 1
            while done < self.oc.max_rounds:
                t0, self._wait_s = time.perf_counter(), 0.0
                if self._converged():
                    status, message = "converged", f"converged after round {done}"
                    break
                self._round(done + 1)
                wall = time.perf_counter() - t0
                self.round_stats.append(
                    {
                        "round": done + 1,
                        "wall_s": wall,
                        "wait_s": self._wait_s,
                        "overhead_s": max(wall - self._wait_s, 0.0),
                    }
                )
                done += 1
            else:
                if self._converged():
                    status, message = "converged", f"converged after round {done}"
        except BudgetExceeded as exc:
            status, message = "budget_exceeded", str(exc)
        except KeyboardInterrupt:
            runs.set_status(
                self.store,
                self.run_id,
                RunStatus.INTERRUPTED,
                f"interrupted: resume with 'aflowctl optimize --resume {self.run_id}'",
            )
            raise
        except BaseException as exc:
            runs.set_status(self.store, self.run_id, RunStatus.FAILED, str(exc)[:500])
            raise
        runs.set_status(self.store, self.run_id, status, message or None)
        return self.outcome(status, message)

    def best(self) -> Optional[dict]:
        return best_workflow(self.store, self.run_id)

    def outcome(self, status: str, message: str = "", test: Optional[dict] = None) -> OptimizeOutcome:
        return outcome(self.store, self.run_id, status, message, test)

    def evaluate_test(self, round_no: Optional[int] = None) -> dict:
        """Evaluate the best workflow (or the one of ``round_no``) on the test split."""
        return evaluate_test(self, round_no)
