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


def _fake_evaluate(calls):
    """Scores by the prompt text: BROKEN raises on every problem, GOODIDEA scores 0.75, else 0.5."""
    from aflowctl.rollout.evaluate import EvalResult

    def evaluate(src, *, indices, seed, repeats=1, workflow_id=None, store_rows=False):
        calls.append((tuple(indices), seed))
        score = 0.75 if "GOODIDEA" in src.prompt else 0.5
        details = []
        for k, i in enumerate(indices):
            if "BROKEN" in src.prompt:
                details.append({"repeat": 0, "index": i, "score": 0.0, "error": "KeyError: 'x'", "error_type": "KeyError"})
            else:
                details.append({"repeat": 0, "index": i, "score": 1.0 if k < score * len(indices) else 0.0, "prediction": "7"})
        mean = sum(d["score"] for d in details) / len(details)
        return EvalResult("gsm8k", "validate", mean, [mean], 0.0, len(indices), 1, None, 0, details=details)

    return evaluate


def test_workflow_env_transitions(shared_data):
    cfg = load_config(None, {"train.datasets": ["gsm8k"], "train.validation_limit": 4})
    calls = []
    env = WorkflowEnv(cfg, evaluate=_fake_evaluate(calls))
    (start,) = env.start_states()
    graph = start.data["search"].source.graph
    states = [start, start, start, start]
    env.prepare(states, random.Random(0), groups=["g"] * 4)
    assert start.data["search"].score == 0.5 and len(calls) == 1
    msgs = env.observe(start)
    assert msgs[0]["role"] == "system" and "<graph>" in msgs[1]["content"] and "50.0%" in msgs[1]["content"]
    assert "workflow answered: 7" in msgs[1]["content"]  # failed cases come from the evaluation's details

    actions = [
        _proposal(graph, "Ask for step-by-step reasoning"),
        "I would add an ensemble.",  # unparseable
        _proposal(graph, "Break it", prompt='SOLVE_PROMPT = "BROKEN"\n'),  # fails its smoke run
        _proposal("x = (", "Bad syntax"),  # does not compile
    ]
    tr = env.step_batch(states, actions, rng=random.Random(0))
    assert tr[0].valid and tr[0].reward == pytest.approx(0.25)
    assert tr[0].next_state.anchor != start.anchor and tr[0].next_state.data["search"].score == 0.75
    assert tr[0].info["score_before"] == 0.5 and tr[0].info["score_after"] == 0.75
    for t in tr[1:]:
        assert not t.valid and t.reward == 0.0 and t.next_state.anchor == start.anchor and t.error
    assert "smoke run" in tr[2].error and "KeyError" in tr[2].error
    assert "class Workflow" in tr[3].error
    # the same modification again on the same parent is invalid (repeated)
    again = env.step_batch([start], [_proposal(graph, "ask for step by step reasoning!")], rng=random.Random(0))[0]
    assert not again.valid and "already tried" in again.error
    # the parent's prompt now shows the experience
    assert "step-by-step" in env.observe(start)[1]["content"]


def test_workflow_env_edit_format_observation_is_short(shared_data):
    cfg = load_config(None, {"train.datasets": ["gsm8k"], "train.validation_limit": 4, "train.action_format": "edit"})
    env = WorkflowEnv(cfg, evaluate=_fake_evaluate([]))
    (start,) = env.start_states()
    env.prepare([start], random.Random(0), groups=["g"])
    msgs = env.observe(start)
    text = msgs[0]["content"] + msgs[1]["content"]
    assert '{"edit": "ensemble", "k": 3}' in text and "<graph>" not in text and "Failed:" in text
    assert len(text.split()) < 200  # well under 600 tokens; the slow training test counts real tokens
    tr = env.step_batch([start], ['{"edit": "ensemble", "k": 3}'], rng=random.Random(0))[0]
    assert tr.valid and tr.info["modification"] == '{"edit": "ensemble", "k": 3}' and tr.info["format"] == "edit"
    assert "WORKFLOW_SPEC" in tr.next_state.data["search"].source.graph
    assert '"edit": "ensemble", "k": 3' in env.observe(start)[1]["content"]  # tried, shown in the language


def test_trainer_in_the_workflow_env_records_invalid_actions(shared_data):
    """The tiny random policy only writes invalid proposals: rewards 0, valid=false, advantages 0."""
    from aflowctl.store import open_store, queries
    from aflowctl.trainer.loop import Trainer
    from trainer_helpers import tiny_policy_dir

    cfg = load_config(None, {"train.datasets": ["gsm8k"], "train.policy_model": str(tiny_policy_dir()),
                             "train.episodes_per_group": 2, "train.steps_per_episode": 2, "train.max_new_tokens": 6,
                             "train.checkpoint_every": 5, "train.validation_limit": 2})
    env = WorkflowEnv(cfg, evaluate=_fake_evaluate([]))
    res = Trainer(cfg, store=open_store(), env=env).run()
    m = res.metrics[-1]
    assert m["valid_rate"] == 0.0 and m["reward_mean"] == 0.0 and m["adv_std"] == 0.0
    assert m["generation_s"] > 0 and m["env_s"] >= 0 and m["rollout_s"] >= m["generation_s"]
    rows = queries.list_experiences(open_store(), run_id=res.run_id)
    assert len(rows) == 4 and not any(r["valid"] for r in rows)
    assert all(r["error"] for r in rows)
    assert len({r["anchor"] for r in rows}) == 1  # invalid actions keep the state
