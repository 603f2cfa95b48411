"""Checkpoints: exact resume after kill -9, corruption refused, config/model mismatch, export, inspect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.config import load_config
from aflowctl.errors import CheckpointError
from aflowctl.store import open_store, queries
from aflowctl.trainer import checkpoint as ck
from aflowctl.trainer.loop import Trainer
from trainer_helpers import keyword_config_toml, tiny_policy_dir

runner = CliRunner()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from aflowctl.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def _weights(ckpt_dir: Path) -> dict:
    return load_file(str(ckpt_dir / "model" / "model.safetensors"))


def _small_cfg(policy, **over):
    base = {
        "train.env": "keyword", "train.keyword": "measures", "train.policy_model": str(policy),
        "train.episodes_per_group": 4, "train.groups_per_batch": 2, "train.max_new_tokens": 4, "train.lr": 1e-3,
        "train.epochs": 2, "train.micro_batch_size": 4, "train.checkpoint_every": 1, "train.keep_checkpoints": 3,
    }
    base.update(over)
    return load_config(None, base)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    state = ck.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ck.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


@pytest.mark.slow
def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path):
    """`aflowctl train` killed with SIGKILL mid-run, then `--resume`: same final weights as an uninterrupted run."""
    policy = tiny_policy_dir()
    cfg = tmp_path / "train.toml"
    cfg.write_text(keyword_config_toml(policy, epochs=6))
    home = Path(os.environ["AFLOWCTL_HOME"])

    full = _cli("train", "-c", str(cfg), "--run-id", "full", "--json")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["updates"] == 6

    proc = subprocess.Popen([sys.executable, "-c", "from aflowctl.cli import main; main()", "train", "-c", str(cfg),
                             "--run-id", "killed", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ))
    target = home / "runs" / "killed" / "checkpoints" / "step-00000002"
    deadline = time.time() + 240
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (home / "runs" / "killed" / "checkpoints" / "step-00000006").exists()

    resumed = _cli("train", "--resume", "killed", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["updates"] == 6

    a = _weights(home / "runs" / "full" / "checkpoints" / "step-00000006")
    b = _weights(home / "runs" / "killed" / "checkpoints" / "step-00000006")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # nothing duplicated or lost in the store: one metrics row per update, same experiences
    store = open_store()
    assert [m["update"] for m in queries.train_metrics(store, "killed")] == list(range(6))
    ea = [(e["round"], e["action_text"], e["reward"]) for e in queries.list_experiences(store, run_id="full")]
    eb = [(e["round"], e["action_text"], e["reward"]) for e in queries.list_experiences(store, run_id="killed")]
    assert ea == eb
    lines = (home / "runs" / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == list(range(6))
    assert queries.get_run(store, "killed")["status"] == "completed"


def test_corrupt_checkpoint_refused_and_fallback(tmp_path):
    policy = tiny_policy_dir()
    store = open_store()
    res = Trainer(_small_cfg(policy), store=store, run_id="r1").run()
    assert res.updates == 2
    run_dir = res.run_dir
    ckpts = ck.list_checkpoints(run_dir)
    assert [p.name for p in ckpts] == ["step-00000001", "step-00000002"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    rows = [r for r in queries.train_metrics(store, "r1")]
    assert len(rows) == 2

    # flip one byte of the optimizer state of the latest checkpoint
    opt = ckpts[-1] / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    opt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*optimizer.pt") as exc:
        ck.latest_checkpoint(run_dir)
    assert "--fallback" in str(exc.value) and "step-00000001" in str(exc.value)
    assert ck.latest_checkpoint(run_dir, fallback=True).step == 1
    # the CLI refuses too, with one line
    r = runner.invoke(app, ["train", "--resume", "r1"])
    assert r.exit_code == 1
    assert "corrupt" in r.output and "Traceback" not in r.output

    # truncated weights are named as such
    w = ckpts[-1] / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.verify_checkpoint(ckpts[-1])

    # resuming with --fallback recomputes update 2 from checkpoint 1 and ends where the first run ended
    res2 = Trainer(_small_cfg(policy), store=store, run_id="r1", resume=True, fallback=True).run()
    assert res2.updates == 2
    assert [m["update"] for m in queries.train_metrics(store, "r1")] == [0, 1]


def test_checkpoint_of_another_config_or_model_is_refused_unless_forced(tmp_path):
    policy = tiny_policy_dir()
    store = open_store()
    Trainer(_small_cfg(policy, **{"train.epochs": 1}), store=store, run_id="r2").run()
    with pytest.raises(CheckpointError, match="train.lr") as exc:
        Trainer(_small_cfg(policy, **{"train.epochs": 2, "train.lr": 5e-3}), store=store, run_id="r2", resume=True).run()
    assert "--force" in str(exc.value)
    # another base model
    from aflowctl.trainer.policy import make_tiny_policy

    other = make_tiny_policy(tmp_path / "other", hidden=32, head_scale=1.0)
    with pytest.raises(CheckpointError, match="base model differs"):
        Trainer(_small_cfg(other), store=store, run_id="r2", resume=True).run()
    # epochs may grow on resume; --force accepts the lr change
    res = Trainer(_small_cfg(policy, **{"train.epochs": 2, "train.lr": 5e-3}), store=store, run_id="r2", resume=True,
                  force=True).run()
    assert res.updates == 2


def test_export_policy_and_inspect_training(tmp_path):
    from transformers import AutoModelForCausalLM

    policy = tiny_policy_dir()
    store = open_store()
    res = Trainer(_small_cfg(policy, **{"train.epochs": 1}), store=store, run_id="r3").run()
    out = tmp_path / "exported"
    r = runner.invoke(app, ["export-policy", "r3", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "aflowctl_policy.json").read_text())
    assert meta["run_id"] == "r3" and meta["step"] == 1
    model = AutoModelForCausalLM.from_pretrained(str(out))
    saved = _weights(res.last_checkpoint)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    r = runner.invoke(app, ["export-policy", "r3", str(out)])
    assert r.exit_code == 1 and "--force" in r.output
    r = runner.invoke(app, ["export-policy", "nope", str(tmp_path / "x")])
    assert r.exit_code == 1 and "neither" in r.output

    r = runner.invoke(app, ["inspect", "training", "r3", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [m["update"] for m in data["metrics"]] == [0]
    assert {"reward_mean", "valid_rate", "kl", "entropy", "clip_frac", "grad_norm", "tokens_per_s",
            "singleton_step_group_frac", "adv_mean"} <= set(data["metrics"][0])
    assert data["checkpoints"][-1]["step"] == 1
    r = runner.invoke(app, ["inspect", "training", "r3"])
    assert r.exit_code == 0 and "training metrics" in r.output
    r = runner.invoke(app, ["inspect", "training", "nope"])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_lora_checkpoint_resume_and_merge_export(tmp_path):
    pytest.importorskip("peft")
    policy = tiny_policy_dir()
    store = open_store()
    cfg = _small_cfg(policy, **{"train.lora": True, "train.epochs": 1, "train.lr": 1e-2})
    res = Trainer(cfg, store=store, run_id="r4").run()
    assert (res.last_checkpoint / "model" / "adapter_model.safetensors").is_file()
    res2 = Trainer(_small_cfg(policy, **{"train.lora": True, "train.epochs": 2, "train.lr": 1e-2}), store=store,
                   run_id="r4", resume=True).run()
    assert res2.updates == 2
    out = tmp_path / "merged"
    from aflowctl.trainer.export import export_policy

    export_policy("r4", out)
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()


def test_resume_without_any_checkpoint_starts_over_cleanly():
    import shutil

    policy = tiny_policy_dir()
    store = open_store()
    res = Trainer(_small_cfg(policy, **{"train.epochs": 1}), store=store, run_id="r5").run()
    shutil.rmtree(res.run_dir / "checkpoints")  # as if killed before its first checkpoint
    res2 = Trainer(_small_cfg(policy, **{"train.epochs": 1}), store=store, run_id="r5", resume=True).run()
    assert res2.updates == 1
    assert [m["update"] for m in queries.train_metrics(store, "r5")] == [0]
    assert len(queries.list_experiences(store, run_id="r5")) == 8
