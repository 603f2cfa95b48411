"""The workflow MDP (with an injected scorer) and the reward environment."""

from __future__ import annotations

import random

import pytest

from aflowctl.config import load_config
from aflowctl.trainer.env import RewardEnv, WorkflowEnv, keyword_reward


def test_keyword_reward_env():
    env = RewardEnv(["Say hi."], keyword_reward("Hello"))
    (s,) = env.start_states()
    assert env.observe(s) == [{"role": "user", "content": "Say hi."}]
    tr = env.step_batch([s, s], ["well, hello there", "bye"], rng=random.Random(0))
    assert [t.reward for t in tr] == [1.0, 0.0]
    assert all(t.valid and t.next_state.anchor == s.anchor for t in tr)


def _proposal(graph: str, modification: str, prompt: str = 'SOLVE_PROMPT = "GOODIDEA: think it through."\n') -> str:
    return f"<modification>{modification}</modification>\n<graph>\n{graph}\n</graph>\n<prompt>\n{prompt}</prompt>"


def test_workflow_env_transitions(shared_data):
    cfg = load_config(None, {"train.datasets": ["gsm8k"]})
    calls = []

    def score_fn(sources, dataset, *, rng):
        calls.append((dataset, len(sources)))
        out = []
        for src in sources:
            if "BROKEN" in src.prompt:
                out.append(RuntimeError("the workflow raised on all 4 problems"))
            elif "GOODIDEA" in src.prompt:
                out.append((0.75, [{"index": 0, "score": 0.0, "prediction": "41"}]))
            else:
                out.append((0.5, [{"index": 1, "score": 0.0, "prediction": "7"}]))
        return out

    env = WorkflowEnv(cfg, score_fn=score_fn)
    (start,) = env.start_states()
    graph = start.data["source"].graph
    states = [start, start, start, start]
    env.prepare(states, random.Random(0))
    assert start.data["score"] == 0.5 and calls == [("gsm8k", 1)]
    msgs = env.observe(start)
    assert msgs[0]["role"] == "system" and "<graph>" in msgs[1]["content"] and "50.0%" in msgs[1]["content"]
    assert "workflow answered: 7" in msgs[1]["content"]  # failed cases come from the scorer's details

    actions = [
        _proposal(graph, "Ask for step-by-step reasoning"),
        "I would add an ensemble.",  # unparseable
        _proposal(graph, "Break it", prompt='SOLVE_PROMPT = "BROKEN"\n'),  # fails to run
        _proposal("x = (", "Bad syntax"),  # does not compile
    ]
    tr = env.step_batch(states, actions, rng=random.Random(0))
    assert tr[0].valid and tr[0].reward == pytest.approx(0.25)
    assert tr[0].next_state.anchor != start.anchor and tr[0].next_state.data["score"] == 0.75
    assert tr[0].info["score_before"] == 0.5 and tr[0].info["score_after"] == 0.75
    for t in tr[1:]:
        assert not t.valid and t.reward == 0.0 and t.next_state.anchor == start.anchor and t.error
    assert "child failed" in tr[2].error or "raised" in tr[2].error
    # the same modification again on the same parent is invalid (repeated)
    again = env.step_batch([start], [_proposal(graph, "ask for step by step reasoning!")], rng=random.Random(0))[0]
    assert not again.valid and "already tried" in again.error
    # the parent's prompt now shows the experience
    assert "step-by-step" in env.observe(start)[1]["content"]


def test_trainer_in_the_workflow_env_records_invalid_actions(shared_data):
    """The tiny random policy only writes invalid proposals: rewards 0, valid=false, advantages 0."""
    from aflowctl.store import open_store, queries
    from aflowctl.trainer.loop import Trainer
    from trainer_helpers import tiny_policy_dir

    cfg = load_config(None, {"train.datasets": ["gsm8k"], "train.policy_model": str(tiny_policy_dir()),
                             "train.episodes_per_group": 2, "train.steps_per_episode": 2, "train.max_new_tokens": 6,
                             "train.checkpoint_every": 5})
    env = WorkflowEnv(cfg, score_fn=lambda sources, ds, rng: [(0.5, []) for _ in sources])
    res = Trainer(cfg, store=open_store(), env=env).run()
    m = res.metrics[-1]
    assert m["valid_rate"] == 0.0 and m["reward_mean"] == 0.0 and m["adv_std"] == 0.0
    rows = queries.list_experiences(open_store(), run_id=res.run_id)
    assert len(rows) == 4 and not any(r["valid"] for r in rows)
    assert all(r["error"] for r in rows)
    assert len({r["anchor"] for r in rows}) == 1  # invalid actions keep the state
