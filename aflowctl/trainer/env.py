"""Environments the policy is trained in.

An environment gives start states, renders a state as chat messages for the
policy, and turns a batch of (state, action text) into transitions. The trainer
groups episodes that share a start state (GiGPO's episode groups) and uses
:attr:`State.anchor` to form step groups (exact equality of the key).

* :class:`WorkflowEnv` - the MDP of issue 6: a state is a workflow (graph + prompt
  code) with its validation score and experience; the action is the policy's full
  response to the optimizer prompt (``<modification>/<graph>/<prompt>``); the
  child is evaluated on a validation sample and the reward is
  score(child) - score(parent). An unparseable response, a repeated modification or
  a child that fails to compile or run is invalid: the state stays, reward 0,
  ``valid = False``. Its scorer is injectable (``score_fn``), the default evaluates
  through the rollout pool.
* :class:`RewardEnv` - fixed prompts and an injected ``reward_fn(text) -> float``
  (e.g. :func:`keyword_reward`); for smoke tests of the training loop itself.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence


@dataclass
class State:
    """One state: ``anchor`` is its exact-match key (a workflow's canonical hash)."""

    anchor: str
    start: str  # name of the start state it descends from (the group's start)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transition:
    next_state: State
    reward: float
    valid: bool
    error: Optional[str] = None
    info: dict[str, Any] = field(default_factory=dict)


class Environment(Protocol):
    name: str

    def start_states(self) -> list[State]:
        """The start states an epoch goes through (one group each)."""

    def observe(self, state: State) -> list[dict]:
        """The chat messages the policy sees in ``state``."""

    def step_batch(self, states: Sequence[State], actions: Sequence[str], *, rng: random.Random) -> list[Transition]:
        """Transitions for a batch of actions (evaluated together where possible)."""


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- reward env


def keyword_reward(word: str) -> Callable[[str], float]:
    """1.0 when the response contains ``word`` (case-insensitive), else 0.0."""
    w = word.lower()

    def reward(text: str) -> float:
        return 1.0 if w in text.lower() else 0.0

    reward.__name__ = f"keyword_reward({word!r})"
    return reward


DEFAULT_PROMPTS = ("Say something.", "Write one short sentence.")


class RewardEnv:
    """Fixed prompts, reward from an injected function of the response text.

    The state does not change (an episode of T steps answers the same prompt T
    times), so every step of a group shares its anchor.
    """

    name = "reward"

    def __init__(self, prompts: Sequence[str], reward_fn: Callable[[str], float]):
        if not prompts:
            from aflowctl.errors import ConfigError

            raise ConfigError("the reward environment needs at least one prompt", "set train.prompts")
        self.prompts = list(prompts)
        self.reward_fn = reward_fn

    def start_states(self) -> list[State]:
        return [State(anchor=_key(p), start=f"prompt{i}", data={"prompt": p}) for i, p in enumerate(self.prompts)]

    def observe(self, state: State) -> list[dict]:
        return [{"role": "user", "content": state.data["prompt"]}]

    def step_batch(self, states, actions, *, rng):
        return [Transition(s, float(self.reward_fn(a)), True) for s, a in zip(states, actions)]


# --------------------------------------------------------------------------- workflow env

ScoreFn = Callable[..., Any]


class WorkflowEnv:
    """AFlow workflow search as an MDP (see the module docstring).

    ``score_fn(sources, dataset, *, rng) -> list[(score, failed_cases) | Exception]``
    scores child workflows on a validation sample (an exception marks a child that
    failed to compile or run); the default evaluates them through one rollout pool
    (started on first use, closed by :meth:`close`) with the executor of the config.
    The prompt is the one ``aflowctl optimize`` renders (same experience and failed
    cases sections), so a trained policy can act in ``optimize --policy``.
    """

    name = "workflow"

    def __init__(self, cfg, *, store=None, run_id: Optional[str] = None, score_fn: Optional[ScoreFn] = None):
        self.cfg = cfg
        self.train = cfg.train
        self.store = store
        self.run_id = run_id
        self.score_fn = score_fn or self._evaluate_through_pool
        self._scores: dict[tuple[str, str], tuple[float, list]] = {}
        self._pool = None
        self._problems: dict[str, list] = {}

    # -- states
    def start_states(self) -> list[State]:
        from aflowctl.workflow import loader
        from aflowctl.workflow.seeds import seed_workflow

        out = []
        for ds in self.train.datasets:
            src = seed_workflow(ds)
            h = loader.canonical_hash(src)
            out.append(State(anchor=h, start=ds, data={"dataset": ds, "source": src, "score": None, "tried": []}))
        return out

    def prepare(self, states: Sequence[State], rng: random.Random) -> None:
        """Score the states whose score is not known yet (start workflows), once per workflow."""
        todo: dict[tuple[str, str], State] = {}
        for s in states:
            key = (s.data["dataset"], s.anchor)
            if s.data.get("score") is None and key not in self._scores:
                todo.setdefault(key, s)
        for ds in sorted({k[0] for k in todo}):
            keys = [k for k in todo if k[0] == ds]
            results = self.score_fn([todo[k].data["source"] for k in keys], ds, rng=rng)
            for k, r in zip(keys, results):
                if isinstance(r, BaseException):
                    from aflowctl.trainer import TrainingError

                    raise TrainingError(f"the start workflow of {ds} failed to run: {str(r).splitlines()[0][:300]}",
                                        "check train.executor (model, api_base) and the rollout settings")
                self._scores[k] = (float(r[0]), list(r[1]))
        for s in states:
            key = (s.data["dataset"], s.anchor)
            if s.data.get("score") is None:
                s.data["score"], s.data["failed_cases"] = self._scores[key]

    def observe(self, state: State) -> list[dict]:
        from aflowctl.optimizer.prompt import render_optimize_prompt
        from aflowctl.workflow.registry import operator_descriptions

        if state.data.get("score") is None:
            self.prepare([state], random.Random(0))
        ds = state.data["dataset"]
        src = state.data["source"]
        return render_optimize_prompt(
            dataset=ds, kind=self._bench(ds).kind, parent_graph=src.graph, parent_prompt=src.prompt,
            parent_score=state.data["score"], experience=list(state.data.get("tried", [])),
            failed_cases=self._failed_case_texts(ds, state.data.get("failed_cases", [])),
            operator_descriptions=operator_descriptions(list(self.cfg.optimize.operators)),
        )

    def _bench(self, ds: str):
        from aflowctl import benchmarks

        return benchmarks.get(ds)

    def _failed_case_texts(self, ds: str, details: list) -> list[dict]:
        if not details:
            return []
        bench = self._bench(ds)
        if ds not in self._problems:
            self._problems[ds] = bench.load("validate")
        problems = self._problems[ds]
        out = []
        for d in details:
            idx = d.get("index")
            if idx is None or idx >= len(problems):
                continue
            p = problems[idx]
            out.append({"question": bench.inputs(p)[0], "expected": bench.expected(p),
                        "prediction": d.get("prediction") if d.get("prediction") is not None else d.get("error", "")})
            if len(out) >= self.cfg.optimize.failed_cases:
                break
        return out

    def step_batch(self, states, actions, *, rng):
        from aflowctl.errors import AflowctlError
        from aflowctl.optimizer.experience import Tried
        from aflowctl.optimizer.parse import ProposalError, normalise_modification, parse_proposal
        from aflowctl.workflow import loader

        self.prepare(states, rng)
        out: list[Optional[Transition]] = [None] * len(states)
        pending: dict[str, list[tuple[int, Any, Any]]] = {}
        for i, (s, text) in enumerate(zip(states, actions)):
            mod = None
            try:
                prop = parse_proposal(text)
                mod = prop.modification
                if normalise_modification(mod) in {normalise_modification(t.modification) for t in s.data.get("tried", [])}:
                    raise ProposalError(f"the modification '{mod[:80]}' was already tried on this workflow", "propose another")
                src = loader.WorkflowSource(graph=prop.graph, prompt=prop.prompt)
                loader.check_source(src)
            except AflowctlError as exc:
                out[i] = self._invalid(s, mod, str(exc))
                continue
            pending.setdefault(s.data["dataset"], []).append((i, prop, src))
        for ds, items in pending.items():
            results = self.score_fn([src for _, _, src in items], ds, rng=rng)
            for (i, prop, src), r in zip(items, results):
                s = states[i]
                if isinstance(r, BaseException):
                    out[i] = self._invalid(s, prop.modification, f"the child failed to run: {r}")
                    continue
                score, failed = float(r[0]), list(r[1])
                child_hash = loader.canonical_hash(src)
                self._scores[(ds, child_hash)] = (score, failed)
                before = float(s.data["score"])
                tried = Tried(modification=prop.modification, score_before=before, score_after=score, valid=True)
                s.data.setdefault("tried", []).append(tried)  # the parent's experience grows (AFlow's experience)
                child = State(anchor=child_hash, start=s.start, data={
                    "dataset": ds, "source": src, "score": score, "failed_cases": failed, "tried": [],
                })
                out[i] = Transition(child, score - before, True, info={
                    "modification": prop.modification, "score_before": before, "score_after": score,
                })
        return out  # type: ignore[return-value]

    @staticmethod
    def _invalid(s: State, mod, error: str) -> Transition:
        from aflowctl.optimizer.experience import Tried

        err = error.splitlines()[0][:300] if error else "invalid"
        if mod:
            s.data.setdefault("tried", []).append(Tried(modification=mod, score_before=s.data.get("score"),
                                                        score_after=None, valid=False, error=err))
        return Transition(s, 0.0, False, error=err, info={"modification": mod, "score_before": s.data.get("score")})

    def _evaluate_through_pool(self, sources, dataset, *, rng):
        """Evaluate workflows on the validation sample through one shared rollout pool."""
        from aflowctl.rollout.evaluate import evaluate_workflow
        from aflowctl.rollout.pool import RolloutPool

        if self._pool is None:
            self._pool = RolloutPool(self.store, self.cfg.rollout)
            self._pool.start()
        results = []
        for src in sources:
            try:
                res = evaluate_workflow(
                    self.store, src, dataset=dataset, split="validate", executor=self.train.executor,
                    llm_cfg=self.cfg.llm, rollout_cfg=self.cfg.rollout, repeats=1, limit=self.train.validation_limit,
                    run_id=self.run_id, seed=self.train.seed, pool=self._pool, store_rows=False,
                )
            except Exception as exc:  # noqa: BLE001 - a child that fails to compile or run is an invalid action
                from aflowctl.errors import BudgetExceeded

                if isinstance(exc, BudgetExceeded):
                    raise
                results.append(exc)
                continue
            if res.errors and res.errors >= max(1, res.n):
                results.append(RuntimeError(f"the workflow raised on all {res.n} problems"))
                continue
            failed = [d for d in res.details if float(d.get("score", 0.0)) < 1.0]
            results.append((float(res.mean_score), failed))
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_env(cfg, *, store=None, run_id=None) -> Environment:
    """The environment the config names (``train.env``)."""
    t = cfg.train
    if t.env == "keyword":
        return RewardEnv(t.prompts or list(DEFAULT_PROMPTS), keyword_reward(t.keyword))
    return WorkflowEnv(cfg, store=store, run_id=run_id)
