"""The GiGPO training loop on a tiny random Llama (fast) and on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from aflowctl.config import load_config
from aflowctl.errors import AflowctlError, ConfigError
from aflowctl.store import open_store
from aflowctl.trainer import TrainingError
from aflowctl.trainer.loop import Trainer
from trainer_helpers import tiny_policy_dir


def _pick_keyword(policy, prompts, n=64, max_new_tokens=4):
    """A word the initial policy says in roughly 5-35% of its responses."""
    from aflowctl.trainer.policy import load_policy, sample

    model, tok = load_policy(policy)
    counts = collections.Counter()
    for p in prompts:
        for r in sample(model, tok, [[{"role": "user", "content": p}]] * n, temperature=1.0,
                        max_new_tokens=max_new_tokens, seed=123):
            for w in set(r.text.lower().split()):
                if w.isalpha() and len(w) >= 4:
                    counts[w] += 1
    total = n * len(prompts)
    for w, c in counts.most_common():
        if 0.05 <= c / total <= 0.35:
            return w, c / total
    pytest.fail(f"no suitable keyword in {counts.most_common(5)}")


def test_keyword_reward_learning_on_tiny_model():
    """GiGPO raises the rate of a rewarded word.

    Measured (2 cores, busy machine): the word is said in ~11% of initial samples;
    see the printed line for the run's figures (reward per update).
    """
    policy = tiny_policy_dir()
    from aflowctl.trainer.env import DEFAULT_PROMPTS

    word, rate = _pick_keyword(policy, DEFAULT_PROMPTS)
    cfg = load_config(None, {
        "train.env": "keyword", "train.keyword": word, "train.policy_model": str(policy),
        "train.episodes_per_group": 8, "train.groups_per_batch": 2, "train.max_new_tokens": 4,
        "train.lr": 3e-4, "train.entropy_coef": 0.0, "train.epochs": 8, "train.micro_batch_size": 16,
        "train.checkpoint_every": 100,
    })
    res = Trainer(cfg, store=open_store()).run()
    rewards = [m["reward_mean"] for m in res.metrics]
    assert len(rewards) == 8
    end = sum(rewards[-4:]) / 4
    print(f"keyword {word!r} initial rate {rate:.3f}; first update {rewards[0]:.3f}; last 4 updates {end:.3f}: {rewards}")
    assert end >= 0.6 and end >= max(rate, rewards[0]) + 0.3, (word, rate, rewards)
    # the run is recorded: metrics rows, experiences with GiGPO fields, a checkpoint
    from aflowctl.store import queries

    store = open_store()
    assert len(queries.train_metrics(store, res.run_id)) == 8
    exps = queries.list_experiences(store, run_id=res.run_id)
    assert len(exps) == 8 * 16
    assert {e["step"] for e in exps} == {0}
    assert all(e["policy_version"].startswith(res.run_id + "@") for e in exps)
    assert len({e["group_id"] for e in exps}) == 16
    assert res.last_checkpoint is not None and res.last_checkpoint.name == "step-00000008"
    assert queries.get_run(store, res.run_id)["status"] == "completed"


def test_multi_step_episodes_and_kl_and_micro_batching():
    """T=2 steps, KL to a frozen reference, several micro-batches and PPO epochs: metrics are sane."""
    policy = tiny_policy_dir()
    cfg = load_config(None, {
        "train.env": "keyword", "train.keyword": "measures", "train.policy_model": str(policy),
        "train.episodes_per_group": 3, "train.steps_per_episode": 2, "train.groups_per_batch": 2,
        "train.max_new_tokens": 5, "train.lr": 1e-3, "train.epochs": 1, "train.micro_batch_size": 5,
        "train.ppo_epochs": 2, "train.use_kl": True, "train.kl_coef": 0.1, "train.checkpoint_every": 10,
        "train.lr_schedule": "cosine", "train.warmup_steps": 1,
    })
    res = Trainer(cfg, store=open_store()).run()
    assert len(res.metrics) == 1
    m = res.metrics[-1]
    assert m["steps"] == 12
    assert m["kl"] >= 0.0 and m["entropy"] > 0
    assert 0.0 <= m["clip_frac"] <= 1.0
    assert res.metrics[0]["lr"] == pytest.approx(1e-3)  # warm-up of 1 update: full lr at update 0
    # every step row of one group shares its anchor (the prompt does not change): no singleton step groups
    assert m["singleton_step_group_frac"] == 0.0
    from aflowctl.store import queries

    rows = queries.list_experiences(open_store(), run_id=res.run_id)
    assert sorted({r["step"] for r in rows}) == [0, 1]
    assert all(json.loads(r["prompt"])[0]["role"] == "user" for r in rows)


def test_bad_inputs_are_one_clear_error(tmp_path):
    store = open_store()
    cfg = load_config(None, {"train.env": "keyword", "train.policy_model": str(tmp_path / "nope")})
    with pytest.raises(TrainingError, match="does not exist"):
        Trainer(cfg, store=store).run()
    with pytest.raises(ConfigError, match="steps_per_episode"):
        load_config(None, {"train.steps_per_episode": 0})
    with pytest.raises(ConfigError, match="episodes_per_group"):
        load_config(None, {"train.episodes_per_group": 0})
    (tmp_path / "empty").mkdir()
    cfg = load_config(None, {"train.env": "keyword", "train.policy_model": str(tmp_path / "empty")})
    with pytest.raises(TrainingError, match="config.json"):
        Trainer(cfg, store=store).run()


def test_sft_warm_start_from_experiences():
    """--from-experiences: reward-filtered SFT makes the recorded good response more likely."""
    import torch

    from aflowctl.store import Experience, Run, utcnow
    from aflowctl.trainer import policy as pol

    policy = tiny_policy_dir()
    store = open_store()
    now = utcnow()
    msgs = [{"role": "user", "content": "Propose a change."}]
    good, bad = "add a review step", "delete everything"

    def _add(s):
        s.add(Run(id="opt-1", kind="optimize", created_at=now, updated_at=now))
        s.flush()
        for i in range(6):
            s.add(Experience(run_id="opt-1", round=i, group_id=f"g{i}", episode_id=f"e{i}", step=0, anchor="h",
                             prompt=json.dumps(msgs), action_text=good if i % 2 == 0 else bad,
                             reward=0.2 if i % 2 == 0 else -0.1, valid=True, created_at=now))

    store.transact(_add)
    cfg = load_config(None, {"train.env": "keyword", "train.policy_model": str(policy), "train.sft_lr": 3e-3,
                             "train.sft_epochs": 3, "train.micro_batch_size": 2})

    def logp_of(model_dir, text):
        model, tok = pol.load_policy(model_dir)
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        r = pol.Rollout(pol.render_prompt_ids(tok, msgs), ids, text, "stop")
        with torch.no_grad():
            lp, _ = pol.response_logprobs(model, *pol.pack([r], tok.pad_token_id)[:4])
        return float(lp.sum())

    res = Trainer(cfg, store=store, from_experiences=["opt-1"], sft_only=True).run()
    assert res.updates == 0
    sft = [m for m in res.metrics if m.get("phase") == "sft"][0]
    assert sft["sft_pairs"] == 3  # only the rewarded ones
    assert sft["sft_loss_last"] < sft["sft_loss_first"]
    model_dir = res.last_checkpoint / "model"
    assert logp_of(model_dir, good) > logp_of(policy, good) + 1.0

    with pytest.raises(AflowctlError, match="no usable experiences"):
        Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"sft_min_reward": 5.0})}),
                store=store, from_experiences=["opt-1"], sft_only=True).run()
    with pytest.raises(AflowctlError, match="do not exist"):
        Trainer(cfg, store=store, from_experiences=["nope"], sft_only=True).run()


@pytest.mark.slow
def test_a_few_updates_of_the_embedded_model():
    """Two GiGPO updates of the real SmolLM2-135M (fp32, CPU): weights move, metrics are recorded."""
    pytest.importorskip("aflowctl.llm.local_model")
    cfg = load_config(None, {
        "train.env": "keyword", "train.keyword": "workflow", "train.episodes_per_group": 2,
        "train.groups_per_batch": 1, "train.max_new_tokens": 16, "train.lr": 1e-5, "train.epochs": 1,
        "train.groups_per_epoch": 2, "train.micro_batch_size": 2, "train.checkpoint_every": 10,
    })
    res = Trainer(cfg, store=open_store()).run()
    assert res.updates == 2
    assert all(m["entropy"] > 0 for m in res.metrics)
    assert (res.last_checkpoint / "model" / "model.safetensors").is_file()
    # the trainable parameters changed: the checkpoint's weights differ from the base model's
    import torch
    from safetensors.torch import load_file

    from aflowctl.trainer.policy import resolve_policy_path

    base: dict = {}
    for f in sorted(Path(resolve_policy_path(None)).glob("*.safetensors")):
        base.update(load_file(str(f)))
    after = load_file(str(res.last_checkpoint / "model" / "model.safetensors"))
    shared = [k for k in after if k in base]
    assert len(shared) > 10
    changed = [k for k in shared if not torch.equal(base[k], after[k])]
    assert len(changed) >= len(shared) // 2, f"only {len(changed)} of {len(shared)} tensors changed"


def test_trainer_logprobs_match_the_sampler():
    """The trainer's own forward pass gives the behaviour log-probs the sampler reported."""
    import torch

    from aflowctl.trainer import policy as pol

    model, tok = pol.load_policy(tiny_policy_dir())
    msgs = [[{"role": "user", "content": "Say something."}], [{"role": "user", "content": "A longer prompt, here."}]]
    rolls = pol.sample(model, tok, msgs * 2, temperature=0.7, max_new_tokens=6, seed=11, batch_size=3)
    again = pol.sample(model, tok, msgs * 2, temperature=0.7, max_new_tokens=6, seed=11, batch_size=4)
    assert [r.response_ids for r in rolls] == [r.response_ids for r in again]  # seeded per row, batching aside
    with torch.no_grad():
        lp, ent = pol.response_logprobs(model, *pol.pack(rolls, tok.pad_token_id)[:4], temperature=0.7, with_entropy=True)
    for i, r in enumerate(rolls):
        n = len(r.response_ids)
        assert torch.allclose(lp[i, :n], torch.tensor(r.meta["sample_logprobs"]), atol=1e-4)
    assert (ent > 0).all()


def test_cli_bad_input_leaves_no_run(tmp_path):
    from typer.testing import CliRunner

    from aflowctl.cli import app
    from aflowctl.store import queries

    runner = CliRunner()
    r = runner.invoke(app, ["train", "--policy-model", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["train", "--from-experiences", "nope", "--sft-only", "--policy-model", str(tiny_policy_dir())])
    assert r.exit_code == 1 and "do not exist" in r.output
    r = runner.invoke(app, ["train", "--sft-only"])
    assert r.exit_code == 2 and "--from-experiences" in r.output
    assert queries.list_runs(open_store()) == []
