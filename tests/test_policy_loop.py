"""`aflowctl optimize --policy`: a trainer checkpoint plays the optimizer (issue 7)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aflowctl.cli import app
from test_optimize_e2e import DATA, make_server
from trainer_helpers import keyword_config_toml, tiny_policy_dir

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (DATA / "gsm8k_validate.jsonl").exists(), reason="needs ../shared/data/aflow")


def _train_tiny(tmp_path: Path, db: Path, run_id: str) -> Path:
    policy = tiny_policy_dir()
    cfg = tmp_path / "train.toml"
    cfg.write_text(keyword_config_toml(policy, epochs=1))
    r = runner.invoke(app, ["train", "--config", str(cfg), "--db", str(db), "--run-id", run_id, "--json"])
    assert r.exit_code == 0, r.output
    return policy


def _opt_config(tmp_path: Path, server, policy_base: Path) -> Path:
    cfg = tmp_path / "opt.toml"
    cfg.write_text(f"""
[rollout]
workers = 1
concurrency = 4

[optimize]
dataset = "gsm8k"
operators = ["Custom", "ScEnsemble"]
max_rounds = 2
validation_rounds = 1
validation_limit = 4
max_retries = 0
check_convergence = false

[optimize.optimizer]
model = "mutate"
max_tokens = 24

[optimize.executor]
model = "openai/test-exec"
api_base = "{server.url}"

[train]
policy_model = "{policy_base}"
""")
    return cfg


def test_policy_drives_rounds_resumes_and_records_experiences(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    db = tmp_path / "p.db"
    base = _train_tiny(tmp_path, db, "t1")
    server = make_server()
    try:
        cfg = _opt_config(tmp_path, server, base)
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--policy", "t1",
                                "--candidates", "2", "--run-id", "p1", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["rounds"] == 2
        # resume the finished run with a higher round cap: it continues from round 3
        r = runner.invoke(app, ["optimize", "--resume", "p1", "--max-rounds", "3", "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["rounds"] == 3
        conn = sqlite3.connect(db)
        ex = conn.execute("SELECT round, policy_version, anchor, action_text FROM experiences WHERE run_id = 'p1' ORDER BY id").fetchall()
        assert [e[0] for e in ex] == [2, 2, 3, 3]
        assert all(e[1].startswith("policy:") for e in ex)
        assert all(e[3] for e in ex)  # the policy's full response is the action
        roles = {row[0] for row in conn.execute("SELECT DISTINCT role FROM llm_calls WHERE run_id = 'p1'")}
        assert "policy" in roles and "executor" in roles
    finally:
        server.stop()


def test_bad_policy_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    db = tmp_path / "q.db"
    base = _train_tiny(tmp_path, db, "t2")
    server = make_server()
    try:
        cfg = _opt_config(tmp_path, server, base)
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--policy", str(tmp_path / "nope")])
        assert r.exit_code == 1 and "does not exist" in r.stderr
        # a config that names another base model than the policy was trained from
        other = tmp_path / "other.toml"
        other.write_text(cfg.read_text().replace(f'policy_model = "{base}"', 'policy_model = "' + str(_other_base(tmp_path)) + '"'))
        r = runner.invoke(app, ["optimize", "--config", str(other), "--db", str(db), "--policy", "t2"])
        assert r.exit_code == 1 and "another base model" in r.stderr, r.output
        runs = json.loads(runner.invoke(app, ["inspect", "runs", "--json", "--db", str(db), "--kind", "optimize"]).stdout)
        assert runs == []  # refused before any run was created
    finally:
        server.stop()


def _other_base(tmp_path: Path) -> Path:
    from aflowctl.trainer.policy import make_tiny_policy

    return make_tiny_policy(tmp_path / "other-base", seed=1, hidden=32, layers=1)
