"""The search MDP: one definition of a search step, used by `optimize` and by `train`.

A state (:class:`SearchState`) is a workflow with its validation score, what was
tried on it and some failed cases. :class:`SearchMDP` renders a state as the
messages the optimizer sees (:meth:`~SearchMDP.observe`), parses an answer into a
child workflow (:meth:`~SearchMDP.parse`: code format ``<modification>/<graph>/
<prompt>``, or one JSON edit, see docs/edits.md), decides validity (parsed, not
tried on this parent, only allowed operators, compiles, and a one-problem smoke run:
:meth:`~SearchMDP.check`), evaluates a child (:meth:`~SearchMDP.evaluate`) and gives
the reward ``score(child) - score(parent)``.

Errors are split by fault. What the answer got wrong (unparseable, unknown edit,
repeated, not compiling, failing its smoke run) makes an *invalid action* with a
one-line reason. Everything else (a missing key or 401 of the executor, retries
exhausted, a pool failure, the budget) propagates and stops the run, which stays
resumable.

Evaluations follow an :class:`EvalPlan` (which validation problems, which executor
seed): the trainer draws one plan per GiGPO group and evaluates the group's parent
and every child with it (common random numbers); the optimizer uses one plan per run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aflowctl import errors as _errors
from aflowctl.errors import AflowctlError, ConfigError, WorkflowError
from aflowctl.mdp import edits as edits_mod
from aflowctl.mdp import spec as spec_mod
from aflowctl.mdp.experience import Tried
from aflowctl.mdp.mutate import propose_edit
from aflowctl.mdp.observe import render_edit_prompt, render_optimize_prompt
from aflowctl.mdp.parse import (
    TAGS,
    ProposalError,
    normalise_modification,
    parse_proposal,
)

FORMATS = ("code", "edit", "auto")
# Errors of a workflow's own problem runs that are not the workflow's fault (these classes of
# aflowctl.errors and their subclasses): they stop the run.
INFRASTRUCTURE = (
    "ProviderError",
    "BudgetExceeded",
    "StoreError",
    "ConfigError",
    "PluginError",
    "SandboxError",
    "NotFoundError",
    "BenchmarkError",
    "InfrastructureError",
)


def check_action_format(action_format: str, *, dataset: str, kind: str, where: str = "optimize") -> None:
    """Refuse an unknown format, or ``edit`` on a benchmark kind without an edit catalogue."""
    if action_format not in FORMATS:
        raise ConfigError(
            f"unknown action format '{action_format}' (known: {', '.join(FORMATS)})",
            f"set {where}.action_format or --action-format to code, edit or auto",
        )
    if action_format == "edit" and kind not in edits_mod.edit_kinds():
        raise ConfigError(
            f"benchmark {dataset} is of kind '{kind}', which has no edit catalogue (kinds with one: "
            f"{', '.join(edits_mod.edit_kinds())})",
            f"set {where}.action_format to code or auto",
        )


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


@dataclass
class SearchState:
    source: Any  # WorkflowSource
    score: float | None = None
    tried: list[Tried] = field(default_factory=list)
    failed_cases: list[dict] = field(default_factory=list)  # {question, expected, prediction}


@dataclass(frozen=True)
class EvalPlan:
    """Which validation problems and which executor seed an evaluation uses."""

    indices: tuple[int, ...]
    seed: int

    @property
    def smoke_index(self) -> int:
        return self.indices[0]


@dataclass
class Action:
    """An answer and what became of it: a child workflow, or the reason it is invalid."""

    text: str
    format: str  # code | edit (the form the answer was read in)
    modification: str | None = None
    source: Any = None  # WorkflowSource of the child, when it could be built
    valid: bool = False
    error: str | None = None


class EvaluateFn(Protocol):
    def __call__(
        self,
        src: Any,
        *,
        indices: Sequence[int],
        seed: int,
        repeats: int = 1,
        workflow_id: int | None = None,
        store_rows: bool = False,
    ) -> Any: ...


class PoolEvaluator:
    """Evaluates through :func:`aflowctl.rollout.evaluate.evaluate_workflow` and one pool
    (the caller's, or one started on first use and closed by :meth:`close`)."""

    def __init__(
        self,
        store: Any,
        *,
        dataset: str,
        executor: Any,
        llm_cfg: Any,
        rollout_cfg: Any,
        run_id: str | None,
        pool: Any = None,
    ):
        self.store, self.dataset, self.executor = store, dataset, executor
        self.llm_cfg, self.rollout_cfg, self.run_id = llm_cfg, rollout_cfg, run_id
        self.pool, self._own = pool, False

    def __call__(
        self,
        src: Any,
        *,
        indices: Sequence[int],
        seed: int,
        repeats: int = 1,
        workflow_id: int | None = None,
        store_rows: bool = False,
    ) -> Any:
        from aflowctl.rollout.evaluate import evaluate_workflow

        if self.pool is None:
            from aflowctl.rollout.pool import RolloutPool

            self.pool, self._own = RolloutPool(self.store, self.rollout_cfg), True
            self.pool.start()
        return evaluate_workflow(
            self.store,
            src,
            dataset=self.dataset,
            split="validate",
            executor=self.executor,
            llm_cfg=self.llm_cfg,
            rollout_cfg=self.rollout_cfg,
            repeats=repeats,
            indices=list(indices),
            run_id=self.run_id,
            workflow_id=workflow_id if store_rows else None,
            seed=seed,
            pool=self.pool,
            store_rows=store_rows,
        )

    def close(self) -> None:
        if self._own and self.pool is not None:
            self.pool.close()
        self.pool, self._own = None, False


def infrastructure_class(error_type: str | None) -> type[AflowctlError] | None:
    """The error class to re-raise for a problem error of this type, or None when it is the workflow's own."""
    if error_type == "RolloutError":
        return AflowctlError
    cls = getattr(_errors, error_type or "", None)
    bases = tuple(getattr(_errors, name) for name in INFRASTRUCTURE if hasattr(_errors, name))
    if isinstance(cls, type) and issubclass(cls, AflowctlError) and issubclass(cls, bases):
        return cls
    return None


def raise_infrastructure(details: Sequence[dict], what: str) -> None:
    """Re-raise, as its own class, the first problem error that is not the workflow's fault."""
    for d in details:
        cls = infrastructure_class(d.get("error_type")) if d.get("error") else None
        if cls is not None:
            raise cls(
                f"{what}: {one_line(d['error'])}",
                "fix the executor (model, key, server) and resume the run; this was not the workflow's fault",
            )


class SearchMDP:
    """The search step of one benchmark; see the module docstring."""

    def __init__(
        self,
        *,
        dataset: str,
        operators: Sequence[str],
        action_format: str = "code",
        failed_cases: int = 3,
        evaluate: EvaluateFn | None = None,
        where: str = "optimize",
    ):
        from aflowctl import benchmarks

        self.dataset = dataset
        self.bench = benchmarks.get(dataset)
        self.kind = self.bench.kind
        self.operators = list(operators)
        check_action_format(action_format, dataset=dataset, kind=self.kind, where=where)
        self.action_format = action_format
        self.n_failed_cases = failed_cases
        self._evaluate = evaluate
        self._problems: list | None = None

    # ------------------------------------------------------------ observation

    def editable(self, source: Any) -> bool:
        """The edit language can read this workflow: it carries a spec, or is the plain answer step of its kind."""
        if self.kind not in edits_mod.edit_kinds():
            return False
        if spec_mod.spec_literal(source.graph) is not None:
            return True
        return re.findall(r"operator\.(\w+)\(", source.graph) == [spec_mod.default_answer_op(self.kind)]

    def format_of(self, state: SearchState) -> str:
        """The format the state is rendered in: ``auto`` is edit for workflows the language can read."""
        if self.action_format != "auto":
            return self.action_format
        return "edit" if self.editable(state.source) else "code"

    def spec_of(self, state: SearchState) -> spec_mod.Spec:
        return spec_mod.read_spec(state.source.graph, state.source.prompt, self.kind)

    def observe(self, state: SearchState, *, error_feedback: str | None = None) -> list[dict]:
        if self.format_of(state) == "edit":
            sp = self.spec_of(state)
            return render_edit_prompt(
                kind=self.kind,
                spec=sp,
                score=state.score,
                tried=state.tried,
                failed_cases=state.failed_cases,
                edits=edits_mod.available(sp, self.operators, [t.modification for t in state.tried]),
                error_feedback=error_feedback,
            )
        from aflowctl.workflow.registry import operator_descriptions

        return render_optimize_prompt(
            dataset=self.dataset,
            kind=self.kind,
            parent_graph=state.source.graph,
            parent_prompt=state.source.prompt,
            parent_score=state.score,
            experience=state.tried,
            failed_cases=state.failed_cases,
            operator_descriptions=operator_descriptions(self.operators),
            error_feedback=error_feedback,
        )

    def failed_cases(self, details: Sequence[dict]) -> list[dict]:
        """The first failed problems of an evaluation's details, as the observation shows them."""
        if self._problems is None:
            self._problems = self.bench.load("validate")
        out: list[dict] = []
        for d in details:
            if float(d.get("score") or 0.0) >= 1.0 or d.get("repeat", 0) != 0:
                continue
            idx = d.get("index")
            if idx is None or not 0 <= idx < len(self._problems):
                continue
            p = self._problems[idx]
            pred = d.get("prediction") if d.get("prediction") is not None else d.get("error", "")
            out.append({"question": self.bench.inputs(p)[0], "expected": self.bench.expected(p), "prediction": pred})
            if len(out) >= self.n_failed_cases:
                break
        return out

    # ------------------------------------------------------------ actions

    def parse(self, state: SearchState, text: str) -> Action:
        """Parse ``text`` into a child of ``state`` and check it statically (no smoke run)."""
        fmt = self.format_of(state)
        has_code = any(f"<{t}>" in (text or "") for t in TAGS)
        is_edit = edits_mod.looks_like_edit(text) and not has_code
        if self.action_format == "code":
            form = "code"
        elif self.action_format == "edit":
            form = "edit"
        else:  # auto: the answer's form decides; neither form: the state's
            form = "code" if has_code else "edit" if is_edit else fmt
        act = Action(text=text or "", format=form)
        try:
            if self.action_format == "edit" and has_code:
                raise ProposalError(
                    "the answer mixes formats: it has <modification>/<graph>/<prompt> sections but the "
                    "action format is edit",
                    f"answer with one JSON object such as {edits_mod.EXAMPLE}",
                )
            if self.action_format == "code" and is_edit:
                raise ProposalError(
                    "the answer is a JSON edit but this run's action format is code",
                    "answer with <modification>, <graph> and <prompt> sections",
                )
            if form == "code":
                p = parse_proposal(text)
                act.modification = p.modification
                from aflowctl.workflow.loader import WorkflowSource

                act.source = WorkflowSource(graph=p.graph, prompt=p.prompt)
            else:
                if self.action_format == "auto" and not self.editable(state.source):
                    raise ProposalError(
                        "this workflow was not written by edits, so an edit cannot apply to it",
                        "answer in code format (<modification>, <graph>, <prompt>)",
                    )
                e = edits_mod.parse_edit(text)
                act.modification = e.canonical()
                act.source = self.compile_edit(state, e)
            tried = {normalise_modification(t.modification) for t in state.tried}
            if normalise_modification(act.modification) in tried:
                raise ProposalError(
                    f"the modification '{act.modification[:80]}' was already tried on this workflow",
                    "propose a different one",
                )
            from aflowctl.workflow.loader import check_source

            check_source(act.source, known_operators=self.operators)
        except (ProposalError, WorkflowError) as exc:
            act.error = one_line(exc)
            return act
        act.valid = True
        return act

    def compile_edit(self, state: SearchState, e: edits_mod.Edit) -> Any:
        from aflowctl.workflow.loader import WorkflowSource

        new = edits_mod.apply_edit(self.spec_of(state), e, self.operators)
        graph, prompt = spec_mod.render(new, spec_mod.import_lines(state.source.graph))
        return WorkflowSource(graph=graph, prompt=prompt)

    def check(self, state: SearchState, text: str, plan: EvalPlan) -> Action:
        """Parse, check statically, then smoke-run the child on the plan's first problem."""
        act = self.parse(state, text)
        if act.valid:
            try:
                res = self._run(act.source, indices=[plan.smoke_index], seed=plan.seed)
                self.judge_smoke(res.details, plan.smoke_index)
            except (ProposalError, WorkflowError) as exc:
                act.valid, act.error = False, one_line(exc)
        return act

    def judge_smoke(self, details: Sequence[dict], index: int) -> None:
        """The smoke verdict from the details of an evaluation that covered problem ``index``."""
        mine = [d for d in details if d.get("index") == index and d.get("repeat", 0) == 0]
        raise_infrastructure(mine, "the executor failed during the smoke run")
        for d in mine:
            if d.get("error"):
                raise ProposalError(
                    f"the workflow failed its one-problem smoke run: {one_line(d['error'])}", "fix the code"
                )

    def evaluate(
        self, src: Any, plan: EvalPlan, *, repeats: int = 1, workflow_id: int | None = None, store_rows: bool = False
    ) -> Any:
        """Evaluate a child on the plan; errors that are not the workflow's fault are raised."""
        res = self._run(
            src,
            indices=list(plan.indices),
            seed=plan.seed,
            repeats=repeats,
            workflow_id=workflow_id,
            store_rows=store_rows,
        )
        raise_infrastructure(res.details, "the executor failed during an evaluation")
        return res

    def _run(self, src: Any, **kw: Any) -> Any:
        if self._evaluate is None:
            raise ConfigError("this search MDP has no evaluator", "pass evaluate= (e.g. a PoolEvaluator)")
        return self._evaluate(src, **kw)

    @staticmethod
    def reward(score_before: float | None, score_after: float | None) -> float:
        if score_before is None or score_after is None:
            return 0.0
        return float(score_after) - float(score_before)

    # ------------------------------------------------------------ the random policy

    def random_action(
        self, state: SearchState, rng: np.random.Generator, exclude: Sequence[str] = ()
    ) -> tuple[str, str]:
        """``mutate``'s answer for ``state``: (answer text in the state's format, modification).
        Raises :class:`ProposalError` when every catalogue edit was tried (or excluded)."""
        tried = [t.modification for t in state.tried] + list(exclude)
        e = propose_edit(self.spec_of(state), rng=rng, tried=tried, allowed_ops=self.operators)
        mod = e.canonical()
        if self.format_of(state) == "edit":
            return mod, mod
        src = self.compile_edit(state, e)
        return (
            f"<modification>{mod}</modification>\n<graph>\n{src.graph}</graph>\n<prompt>\n{src.prompt}</prompt>\n",
            mod,
        )
