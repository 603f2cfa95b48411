"""Build realistic optimize and train runs in a store, row by row through the SQLModel
models, with controlled timestamps (for report, compare and export tests; the
optimizer that normally writes these rows is tested on its own).

A run is described as a list of rounds. Round 1 is the initial workflow (the real
seed of the dataset); each later round names its parent and lists its children:
``Child(name, modification, scores)``; ``scores=None`` is an invalid proposal (its code
is stored with status 'invalid', or no code at all with ``has_code=False``).

Timestamps: round r happens in [T0 + 100 r, T0 + 100 r + 99] seconds (+ ``t_offset``);
the optimizer call of a proposal at +1, the executor calls of an evaluation repeat
at +10 + repeat, evaluations at +20 + repeat, experiences at +50; a test evaluation
after the last round. Each proposal costs ``optimizer_cost``, each validation repeat
``executor_cost``; one cached executor call with a large cost per round checks that
cached calls are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from aflowctl.config import Config
from aflowctl.store import Evaluation, Experience, LLMCall, Run, TrainMetric, Workflow
from aflowctl.store.db import Store

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


@dataclass
class Child:
    name: str
    modification: str
    scores: Optional[list[float]] = None  # None: invalid proposal
    has_code: bool = True
    test: Optional[list[float]] = None
    error: str = "smoke run failed: operator has no attribute DoesNotExist"


@dataclass
class Built:
    run_id: str
    ids: dict[str, int] = field(default_factory=dict)  # name -> workflow id
    graphs: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)


def _call(run_id, role, model, cost, at, cached=False):
    return LLMCall(run_id=run_id, role=role, provider=model.split("/")[0], model=model, request_hash=f"h-{run_id}-{at}-{role}",
                   prompt_tokens=100, completion_tokens=20, cost_usd=cost, latency_s=0.1, cached=cached, created_at=at)


def build_optimize_run(
    store: Store,
    run_id: str,
    rounds: list,
    *,
    dataset: str = "gsm8k",
    seed: int = 0,
    root_scores: list[float] = (0.5, 0.5, 0.5),
    root_test: Optional[list[float]] = None,
    optimizer_model: str = "openai/gpt-4o",
    policy: Optional[str] = None,
    executor_model: str = "openai/gpt-4o-mini",
    optimizer_cost: float = 0.01,
    executor_cost: float = 0.002,
    status: str = "completed",
    t_offset: float = 0.0,
    n_problems: int = 4,
) -> Built:
    """``rounds``: for rounds 2.. a list of ``(parent_name, [Child, ...])``."""
    from aflowctl.workflow import seeds
    from aflowctl.workflow.loader import WorkflowSource, canonical_hash

    seed_src = seeds.seed_workflow(dataset)
    cfg = Config()
    cfg.optimize.dataset = dataset
    cfg.optimize.seed = seed
    cfg.optimize.optimizer.model = optimizer_model
    cfg.optimize.executor.model = executor_model
    cfg.optimize.policy = policy
    cfg.optimize.validation_rounds = len(root_scores)
    out = Built(run_id)
    T = lambda s: ts(s + t_offset)  # noqa: E731
    last_round = 1 + len(rounds)
    with store.write() as s:
        s.add(Run(id=run_id, kind="optimize", dataset=dataset, seed=seed, status=status,
                  config_json=json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True), config_hash=cfg.hash(),
                  state_json=json.dumps({"completed_round": last_round}), created_at=T(0), updated_at=T(100 * last_round + 99)))
        s.flush()

        def add_wf(name, round_no, parent, graph, prompt, modification, status="valid", error=None):
            w = Workflow(run_id=run_id, round=round_no, parent_id=out.ids.get(parent) if parent else None, dataset=dataset,
                         graph_code=graph, prompt_code=prompt, hash=canonical_hash(WorkflowSource(graph, prompt)),
                         modification=modification, status=status, error=error, created_at=T(100 * round_no + 2))
            s.add(w)
            s.flush()
            out.ids[name], out.graphs[name], out.prompts[name] = w.id, graph, prompt
            return w.id

        def add_evals(wid, round_no, scores, split="validate", base=None):
            for k, sc in enumerate(scores):
                at = base if base is not None else 100 * round_no + 10 + k
                s.add(_call(run_id, "executor", executor_model, executor_cost, T(at)))
                n_ok = round(sc * n_problems)
                details = [{"index": i, "id": f"p{i}", "score": 1.0 if i < n_ok else 0.0, "answer": str(i), "cost_usd": None,
                            "error": None} for i in range(n_problems)]
                s.add(Evaluation(workflow_id=wid, run_id=run_id, dataset=dataset, split=split, repeat=k, score=sc,
                                 cost_usd=executor_cost, n=n_problems, tokens=120, details_json=json.dumps(details),
                                 created_at=T(at + 10 if base is None else at + 1)))

        root = add_wf("root", 1, None, seed_src.graph, seed_src.prompt, None)
        add_evals(root, 1, list(root_scores))
        scores_of = {"root": float(sum(root_scores) / len(root_scores))}
        tests = [("root", root_test)] if root_test else []
        for i, (parent, children) in enumerate(rounds):
            r = i + 2
            s.add(_call(run_id, "executor", executor_model, 0.5, T(100 * r + 5), cached=True))  # cached: not paid
            for k, c in enumerate(children):
                s.add(_call(run_id, "optimizer" if policy is None else "policy", optimizer_model if policy is None else "local/policy",
                            optimizer_cost, T(100 * r + 1)))
                const = f"PROMPT_{c.name.upper()}"
                prompt = out.prompts[parent] + f'\n{const} = """{c.modification}. Think step by step."""\n'
                graph = out.graphs[parent].replace("prompt_custom.SOLVE_PROMPT", f"prompt_custom.{const}")
                if graph == out.graphs[parent]:
                    graph = graph.replace("return solution", f"# {c.name}\n        return solution")
                wid = None
                if c.has_code:
                    if c.scores is None:
                        graph = graph + "\nBROKEN = operator.DoesNotExist\n"
                    wid = add_wf(c.name, r, parent, graph, prompt, c.modification,
                                 status="valid" if c.scores is not None else "invalid", error=None if c.scores else c.error)
                if wid is not None and c.scores is not None:
                    add_evals(wid, r, c.scores)
                    scores_of[c.name] = float(sum(c.scores) / len(c.scores))
                    if c.test:
                        tests.append((c.name, c.test))
                after = scores_of.get(c.name) if c.scores is not None else None
                s.add(Experience(
                    run_id=run_id, round=r, group_id=f"{run_id}:g", episode_id=f"{run_id}/r{r}/k{k}", step=r - 2,
                    anchor="h", parent_workflow_id=out.ids[parent], child_workflow_id=wid, prompt="p", action_text="a",
                    modification=c.modification, reward=(after - scores_of[parent]) if after is not None else 0.0,
                    score_before=scores_of[parent], score_after=after, valid=after is not None,
                    error=None if after is not None else c.error, policy_version=optimizer_model, created_at=T(100 * r + 50),
                ))
        t = 100 * (last_round + 1)
        for name, scores in tests:
            add_evals(out.ids[name], last_round + 1, scores, split="test", base=t)
            t += 5
    return out


def build_train_run(store: Store, run_id: str, updates: int = 6) -> None:
    with store.write() as s:
        s.add(Run(id=run_id, kind="train", dataset="arith", seed=0, status="completed", config_json="{}",
                  created_at=ts(0), updated_at=ts(1000)))
        s.flush()
        for u in range(updates):
            m = {"update": u, "reward_mean": 0.1 * u, "reward_std": 0.05, "loss": 1.0 / (u + 1), "kl": 0.01 * u,
                 "entropy": 2.0 - 0.1 * u, "valid_rate": 0.5 + 0.05 * u}
            s.add(TrainMetric(run_id=run_id, update=u, metrics_json=json.dumps(m), created_at=ts(10 * u + 5)))
            s.add(_call(run_id, "executor", "local/smollm2", None, ts(10 * u + 1)))
