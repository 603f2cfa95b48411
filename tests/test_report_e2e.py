"""report, export and compare on what the real optimizer writes (mutate proposer, a
loopback OpenAI-compatible executor): the rows they read are the optimizer's own."""

from __future__ import annotations

import json
import random

import pytest
from markupsafe import escape
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.store import open_store, queries
from aflowctl.workflow.loader import canonical_hash, load_folder
from helpers.openai_server import OpenAIServer

runner = CliRunner()


@pytest.mark.slow
def test_report_export_compare_on_real_optimize_runs(tmp_path, monkeypatch, shared_data):
    rnd = random.Random(0)

    def responder(messages, body):  # right about a third of the time on GSM8K
        return {"content": "The answer is\n" + str(rnd.choice([18, 3, 70])), "prompt_tokens": 50, "completion_tokens": 5}

    monkeypatch.setenv("FAKE_EXECUTOR_KEY", "sk-test")
    with OpenAIServer(responder=responder) as srv:
        cfg = tmp_path / "e2e.toml"
        cfg.write_text(f"""
[optimize]
dataset = "gsm8k"
max_rounds = 3
validation_rounds = 2
validation_limit = 3
test_limit = 3
candidates = 2
check_convergence = false
[optimize.optimizer]
model = "mutate"
[optimize.executor]
model = "openai/gpt-4o-mini"
api_base = "{srv.url}"
api_key_env = "FAKE_EXECUTOR_KEY"
[rollout]
workers = 1
""")
        for seed in (0, 1):
            r = runner.invoke(app, ["optimize", "--config", str(cfg), "--seed", str(seed), "--run-id", f"e2e-{seed}", "--test"])
            assert r.exit_code == 0, r.output
    store = open_store()

    r = runner.invoke(app, ["report", "e2e-0", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "rep" / "report.html").read_text()
    wfs = queries.list_workflows(store, run_id="e2e-0")
    exps = queries.list_experiences(store, run_id="e2e-0")
    assert len(exps) == 4  # rounds 2 and 3, K = 2
    for w in wfs:
        assert f'id="wf-{w["id"]}"' in page
    for e in exps:
        if e["modification"]:
            assert str(escape(e["modification"])) in page
    assert "<script" not in page and (tmp_path / "rep" / "report.png").stat().st_size > 20_000

    md = runner.invoke(app, ["report", "e2e-0", "--format", "md"]).stdout
    assert "| 3 |" in md and "spend (USD, cumulative)" in md

    out = tmp_path / "aflow"
    r = runner.invoke(app, ["export", "e2e-0", "--aflow", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "aflowctl_export.json").read_text())
    by_id = {w["id"]: w for w in wfs}
    assert len(manifest["rounds"]) == sum(1 for w in wfs if w["status"] == "valid" and w["repeats"])
    for m in manifest["rounds"]:
        assert canonical_hash(load_folder(out / f"round_{m['aflow_round']}")) == by_id[m["workflow_id"]]["hash"]

    r = runner.invoke(app, ["compare", "e2e-0", "e2e-1", "--json", "--plot", str(tmp_path / "cmp.png")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [s["rounds"] for s in res["runs"]] == [3, 3]
    assert [s["proposals"] for s in res["runs"]] == [4, 4]
    for s in res["runs"]:
        assert s["test_score"] is not None  # --test evaluated the best workflow
        assert s["cost_usd"] == pytest.approx(queries.run_costs(store, s["run_id"])[s["run_id"]])
        assert s["curve"][-1]["cumulative_cost_usd"] <= s["cost_usd"] + 1e-12
    assert len(res["groups"]) == 1 and res["groups"][0]["final_best"]["n"] == 2
