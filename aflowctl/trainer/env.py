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

    ``score_fn(sources, dataset, *, rng) -> list[float | Exception]`` scores child
    workflows on a validation sample (an exception marks a child that failed to
    compile or run); the default evaluates them through the rollout pool with the
    executor model of the config.
    """

    name = "workflow"

    def __init__(self, cfg, *, store=None, run_id: Optional[str] = None, score_fn: Optional[ScoreFn] = None):
        self.cfg = cfg
        self.train = cfg.train
        self.store = store
        self.run_id = run_id
        self.score_fn = score_fn or self._evaluate_through_pool
        self._scores: dict[tuple[str, str], float] = {}
        self._failed: dict[tuple[str, str], list] = {}

    # -- states
    def start_states(self) -> list[State]:
        from aflowctl.workflow import loader
        from aflowctl.workflow.seeds import seed_workflow

        out = []
        for ds in self.train.datasets:
            src = seed_workflow(ds)
            h = loader.canonical_hash(src)
            out.append(State(anchor=h, start=ds, data={
                "dataset": ds, "source": src, "score": None, "modifications": [], "experience": [],
            }))
        return out

    def prepare(self, states: Sequence[State], rng: random.Random) -> None:
        """Score the states whose score is not known yet (start workflows), in one batch."""
        todo = [s for s in states if s.data.get("score") is None]
        by_key: dict[tuple[str, str], State] = {}
        for s in todo:
            key = (s.data["dataset"], s.anchor)
            if key in self._scores:
                s.data["score"] = self._scores[key]
                s.data["failed_cases"] = self._failed.get(key, [])
            else:
                by_key.setdefault(key, s)
        if not by_key:
            return
        keys = list(by_key)
        for ds in {k[0] for k in keys}:
            ks = [k for k in keys if k[0] == ds]
            results = self.score_fn([by_key[k].data["source"] for k in ks], ds, rng=rng)
            for k, r in zip(ks, results):
                if isinstance(r, BaseException):
                    from aflowctl.trainer import TrainingError

                    raise TrainingError(f"the start workflow of {ds} failed to run: {r}", "check the executor model settings")
                score, failed = (r if isinstance(r, tuple) else (r, []))
                self._scores[k] = float(score)
                self._failed[k] = failed
        for s in todo:
            key = (s.data["dataset"], s.anchor)
            s.data["score"] = self._scores[key]
            s.data["failed_cases"] = self._failed.get(key, [])

    def observe(self, state: State) -> list[dict]:
        from aflowctl.optimizer import prompt as opt_prompt

        if state.data.get("score") is None:
            self.prepare([state], random.Random(0))
        return opt_prompt.render_optimize_prompt(
            dataset=state.data["dataset"],
            parent_src=state.data["source"],
            parent_score=state.data["score"],
            experience=self._experience_text(state),
            failed_cases=state.data.get("failed_cases", [])[: self.cfg.optimize.failed_cases],
            operators=self.cfg.optimize.operators,
        )

    @staticmethod
    def _experience_text(state: State):
        return list(state.data.get("experience", []))

    def step_batch(self, states, actions, *, rng):
        from aflowctl.errors import AflowctlError
        from aflowctl.optimizer import parse
        from aflowctl.workflow import loader

        self.prepare(states, rng)
        out: list[Optional[Transition]] = [None] * len(states)
        pending: dict[str, list[tuple[int, Any, Any]]] = {}
        for i, (s, text) in enumerate(zip(states, actions)):
            try:
                prop = parse.parse_proposal(text)
                mod = (prop.modification or "").strip()
                if mod and mod in s.data.get("modifications", []):
                    raise parse.ProposalError("repeated modification", "propose something new")
                src = loader.WorkflowSource(graph=prop.graph, prompt=prop.prompt)
                loader.check_source(src)
            except AflowctlError as exc:
                out[i] = Transition(s, 0.0, False, error=str(exc).splitlines()[0][:300])
                continue
            pending.setdefault(s.data["dataset"], []).append((i, prop, src))
        for ds, items in pending.items():
            results = self.score_fn([src for _, _, src in items], ds, rng=rng)
            for (i, prop, src), r in zip(items, results):
                s = states[i]
                if isinstance(r, BaseException):
                    out[i] = Transition(s, 0.0, False, error=f"child failed: {str(r).splitlines()[0][:300]}")
                    continue
                score, failed = (r if isinstance(r, tuple) else (r, []))
                child_hash = loader.canonical_hash(src)
                self._scores[(ds, child_hash)] = float(score)
                self._failed[(ds, child_hash)] = failed
                mods = list(s.data.get("modifications", [])) + [(prop.modification or "").strip()]
                exp = list(s.data.get("experience", [])) + [{
                    "modification": prop.modification, "score_before": s.data["score"], "score_after": float(score),
                }]
                child = State(anchor=child_hash, start=s.start, data={
                    "dataset": ds, "source": src, "score": float(score), "failed_cases": failed,
                    "modifications": mods, "experience": exp,
                })
                out[i] = Transition(child, float(score) - float(s.data["score"]), True,
                                    info={"modification": prop.modification, "score_before": s.data["score"],
                                          "score_after": float(score)})
        return out  # type: ignore[return-value]

    def _evaluate_through_pool(self, sources, dataset, *, rng):
        """Evaluate children on the validation sample through the rollout pool."""
        from aflowctl.rollout import evaluate as ev

        results = []
        for src in sources:
            try:
                res = ev.evaluate_workflow(
                    src, dataset=dataset, split="validate", repeats=1, limit=self.train.validation_limit,
                    executor=self.train.executor, rollout_cfg=self.cfg.rollout, llm_cfg=self.cfg.llm,
                    store=self.store, run_id=self.run_id,
                )
            except Exception as exc:  # noqa: BLE001 - a child that fails to run is an invalid action
                results.append(exc)
                continue
            mean = res["mean"] if isinstance(res, dict) else getattr(res, "mean")
            details = res.get("details", []) if isinstance(res, dict) else getattr(res, "details", [])
            failed = [d for d in details if float(d.get("score", 0)) < 1.0]
            results.append((float(mean), failed))
        return results


def make_env(cfg, *, store=None, run_id=None) -> Environment:
    """The environment the config names (``train.env``)."""
    t = cfg.train
    if t.env == "keyword":
        return RewardEnv(t.prompts or list(DEFAULT_PROMPTS), keyword_reward(t.keyword))
    return WorkflowEnv(cfg, store=store, run_id=run_id)
