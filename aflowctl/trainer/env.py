"""Environments the policy is trained in.

An environment gives start states, renders a state as chat messages for the
policy, and turns a batch of (state, action text) into transitions. The trainer
groups episodes that share a start state (GiGPO's episode groups) and uses
:attr:`State.anchor` to form step groups (exact equality of the key).

* :class:`WorkflowEnv` - workflow search, the one search MDP of
  :mod:`aflowctl.mdp.core` that ``aflowctl optimize`` uses too: a state is a
  workflow with its validation score and experience; the action is the policy's
  answer in the configured format (``train.action_format``: code or one JSON edit);
  the child is evaluated on the group's validation problems (common random numbers)
  and the reward is score(child) - score(parent). An invalid action (unparseable,
  repeated, not compiling, failing its smoke run) keeps the state, reward 0,
  ``valid = False``, with its one-line reason.
* :class:`RewardEnv` - fixed prompts and an injected ``reward_fn(text) -> float``
  (e.g. :func:`keyword_reward`); for smoke tests of the training loop itself.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from aflowctl.rollout.pool import RolloutPool


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


class WorkflowEnv:
    """AFlow workflow search as an MDP: the search step of :class:`aflowctl.mdp.core.SearchMDP`.

    A state's ``data`` holds ``dataset``, ``search`` (a :class:`SearchState`) and
    ``plan`` (the :class:`EvalPlan` of its GiGPO group). Observation, parsing, validity
    and reward are the MDP's, exactly as ``aflowctl optimize`` applies them; the smoke
    verdict comes from the plan's first problem of the child's evaluation.

    Common random numbers: :meth:`prepare` gives every state of a group the group's
    plan, ``validation_limit`` validation problems and one executor seed drawn from
    the run seed and the group's key; the group's start workflow and every child are
    scored on it. ``evaluate`` (same signature as :class:`PoolEvaluator`) is
    injectable; the default evaluates through one rollout pool, closed by :meth:`close`.
    """

    name = "workflow"

    def __init__(self, cfg, *, store=None, run_id: Optional[str] = None, evaluate=None):
        self.cfg = cfg
        self.train = cfg.train
        self.store = store
        self.run_id = run_id
        self._evaluate = evaluate
        self._pool: Optional[RolloutPool] = None
        self._evaluators: dict[str, Any] = {}
        self._mdps: dict[str, Any] = {}
        self._scores: dict[tuple, tuple[float, list]] = {}
        self.evaluations = 0  # child and parent evaluations run (not cached)

    def mdp(self, ds: str):
        from aflowctl.mdp.core import SearchMDP

        if ds not in self._mdps:
            self._mdps[ds] = SearchMDP(
                dataset=ds,
                operators=self.cfg.optimize.operators,
                action_format=self.train.action_format,
                failed_cases=self.cfg.optimize.failed_cases,
                evaluate=self._evaluator(ds),
                where="train",
            )
        return self._mdps[ds]

    def _evaluator(self, ds: str):
        if self._evaluate is not None:
            return self._evaluate
        if ds not in self._evaluators:
            from aflowctl.mdp.core import PoolEvaluator
            from aflowctl.rollout.pool import RolloutPool

            if self._pool is None:
                self._pool = RolloutPool(self.store, self.cfg.rollout)
                self._pool.start()
            self._evaluators[ds] = PoolEvaluator(
                self.store,
                dataset=ds,
                executor=self.train.executor,
                llm_cfg=self.cfg.llm,
                rollout_cfg=self.cfg.rollout,
                run_id=self.run_id,
                pool=self._pool,
            )
        return self._evaluators[ds]

    # -- states
    def start_states(self) -> list[State]:
        from aflowctl.mdp.core import SearchState
        from aflowctl.workflow import loader
        from aflowctl.workflow.seeds import seed_workflow

        out = []
        for ds in self.train.datasets:
            self.mdp(ds)  # refuses an action format the benchmark cannot take, before any episode
            src = seed_workflow(ds)
            data = {"dataset": ds, "search": SearchState(src)}
            out.append(State(anchor=loader.canonical_hash(src), start=ds, data=data))
        return out

    @staticmethod
    def with_tried(state: State, tried: Sequence) -> State:
        """A copy of start state ``state`` whose search state lists ``tried`` (its experience):
        the observation shows it, and a repeat of one of them is invalid, as in ``optimize``."""
        import copy

        out = copy.deepcopy(state)
        out.data["search"].tried = list(tried)
        return out

    def plan_for(self, ds: str, group_key: str):
        """The group's problems and executor seed, drawn from the run seed (same key, same plan)."""
        from aflowctl.mdp.core import EvalPlan
        from aflowctl.trainer.loop import derive_seed

        n = len(self.mdp(ds).bench.load("validate"))
        if n == 0:
            from aflowctl.errors import BenchmarkError

            raise BenchmarkError(f"the validation split of {ds} is empty", f"aflowctl data fetch {ds}")
        limit = min(self.train.validation_limit or n, n)
        draw = random.Random(derive_seed(self.train.seed, "crn-problems", ds, group_key))
        indices = tuple(sorted(draw.sample(range(n), limit)))
        return EvalPlan(indices=indices, seed=derive_seed(self.train.seed, "crn-executor", ds, group_key) % 1_000_000)

    def prepare(self, states: Sequence[State], rng: random.Random, groups: Optional[Sequence[str]] = None) -> None:
        """Give each state its group's plan (``groups``: one key per state) and score the
        states whose score is not known yet (start workflows) on it."""
        for i, s in enumerate(states):
            if "plan" not in s.data:
                s.data["plan"] = self.plan_for(s.data["dataset"], groups[i] if groups else "default")
        todo = [s for s in states if s.data["search"].score is None]
        results = self._score_all([(s.data["dataset"], s.data["search"].source, s.data["plan"]) for s in todo])
        for s in todo:
            r = results[self._key(s.data["dataset"], s.data["search"].source, s.data["plan"])]
            if isinstance(r, str):
                from aflowctl.trainer import TrainingError

                raise TrainingError(
                    f"the start workflow of {s.data['dataset']} is invalid: {r}",
                    "check train.executor (model, api_base) and the rollout settings",
                )
            s.data["search"].score, details = r
            s.data["search"].failed_cases = self.mdp(s.data["dataset"]).failed_cases(details)

    def _key(self, ds: str, src, plan) -> tuple:
        from aflowctl.workflow import loader

        return (ds, loader.canonical_hash(src), plan)

    def _score_all(self, items: Sequence[tuple]) -> dict:
        """Score (dataset, source, plan) items, each distinct one once (cached): the value
        is (score, details), or the one-line reason the child is invalid."""
        from concurrent.futures import ThreadPoolExecutor

        todo: dict[tuple, tuple] = {}
        for ds, src, plan in items:
            k = self._key(ds, src, plan)
            if k not in self._scores:
                todo.setdefault(k, (ds, src, plan))

        def one(item):
            from aflowctl.errors import WorkflowError
            from aflowctl.mdp.core import one_line
            from aflowctl.mdp.parse import ProposalError

            ds, src, plan = item
            mdp = self.mdp(ds)
            try:
                res = mdp.evaluate(src, plan)
                mdp.judge_smoke(res.details, plan.smoke_index)
            except (ProposalError, WorkflowError) as exc:
                return one_line(exc)
            return (float(res.mean_score), list(res.details))

        if todo:
            keys = list(todo)
            with ThreadPoolExecutor(max_workers=min(8, len(keys))) as tp:
                for k, r in zip(keys, tp.map(one, [todo[k] for k in keys])):
                    self._scores[k] = r
            self.evaluations += len(keys)
        return {self._key(ds, src, plan): self._scores[self._key(ds, src, plan)] for ds, src, plan in items}

    def observe(self, state: State) -> list[dict]:
        if state.data["search"].score is None:
            self.prepare([state], random.Random(0))
        return self.mdp(state.data["dataset"]).observe(state.data["search"])

    def step_batch(self, states, actions, *, rng):
        from aflowctl.mdp.core import SearchState
        from aflowctl.mdp.experience import Tried
        from aflowctl.workflow import loader

        self.prepare(states, rng)
        acts = [self.mdp(s.data["dataset"]).parse(s.data["search"], text) for s, text in zip(states, actions)]
        todo = [(s.data["dataset"], a.source, s.data["plan"]) for s, a in zip(states, acts) if a.valid]
        results = self._score_all(todo)
        out: list[Transition] = []
        for s, a in zip(states, acts):
            ds, search, plan = s.data["dataset"], s.data["search"], s.data["plan"]
            r = results.get(self._key(ds, a.source, plan)) if a.valid else a.error
            if isinstance(r, str) or r is None:
                out.append(self._invalid(s, a, r or "invalid"))
                continue
            score, details = r
            before = float(search.score)
            search.tried.append(Tried(modification=a.modification, score_before=before, score_after=score, valid=True))
            child = SearchState(source=a.source, score=score, failed_cases=self.mdp(ds).failed_cases(details))
            nxt = State(
                anchor=loader.canonical_hash(a.source),
                start=s.start,
                data={"dataset": ds, "search": child, "plan": plan},
            )
            out.append(
                Transition(
                    nxt,
                    self.mdp(ds).reward(before, score),
                    True,
                    info={
                        "modification": a.modification,
                        "score_before": before,
                        "score_after": score,
                        "format": a.format,
                    },
                )
            )
        return out

    @staticmethod
    def _invalid(s: State, a, error: str) -> Transition:
        from aflowctl.mdp.experience import Tried

        search = s.data["search"]
        if a.modification:
            search.tried.append(
                Tried(
                    modification=a.modification, score_before=search.score, score_after=None, valid=False, error=error
                )
            )
        return Transition(
            s,
            0.0,
            False,
            error=error,
            info={"modification": a.modification, "score_before": search.score, "format": a.format},
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._evaluators.clear()
        self._mdps.clear()


def make_env(cfg, *, store=None, run_id=None) -> Environment:
    """The environment the config names (``train.env``)."""
    t = cfg.train
    if t.env == "keyword":
        return RewardEnv(t.prompts or list(DEFAULT_PROMPTS), keyword_reward(t.keyword))
    return WorkflowEnv(cfg, store=store, run_id=run_id)
