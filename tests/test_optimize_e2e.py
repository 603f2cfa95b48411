"""`aflowctl optimize` end to end against a loopback OpenAI-compatible server.

The server plays both roles: as executor it answers GSM8K validation questions (right
for some, and for more of them when the instruction asks for step-by-step work); as
optimizer it returns well-formed or malformed modifications.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aflowctl.cli import app
from helpers.openai_server import OpenAIServer

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aflow"

pytestmark = pytest.mark.skipif(not (DATA / "gsm8k_validate.jsonl").exists(), reason="needs ../shared/data/aflow")


def _gsm8k_answers() -> dict[str, str]:
    out = {}
    for line in (DATA / "gsm8k_validate.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["question"]] = row["answer"].split("####")[-1].strip().replace(",", "")
    return out


ANSWERS = _gsm8k_answers()
OPT_SYSTEM_MARK = "You improve agentic workflows"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def executor_reply(text: str) -> str:
    """Right for a third of the questions; for two thirds when told to work in numbered steps."""
    for q, a in ANSWERS.items():
        if q[:60] in text:
            good = _h(q) % 3 == 0 or ("in numbered steps" in text.lower() and _h(q) % 3 != 2)
            return f"Working it out. The answer is {a if good else int(float(a)) + 7}"
    if "Program output" in text or "code" in text.lower():
        return "print(1)"
    return "A"


STEP_PROMPT = 'SOLVE = "Work carefully, in numbered steps, and give the final number."\n'


def optimizer_reply(messages: list, mode: str) -> str:
    user = messages[1]["content"]
    graph = re.search(r"<graph>\n(.*?)\n</graph>", user, re.S).group(1)
    if mode == "garbage":
        return "I would add an ensemble, but here is no code."
    if mode == "garbage-then-good" and len(messages) == 2:
        return "<modification>half an answer</modification><graph>class Workflow:"
    # a real modification: swap the instruction prompt for a step-by-step one
    n = len(re.findall(r"Previous|tried", user))
    prompt = STEP_PROMPT.replace("final number", f"final number (variant {_h(user) % 1000})")
    new_graph = re.sub(r"prompt_custom\.\w+", "prompt_custom.SOLVE", graph)
    return f"<modification>Ask for step-by-step reasoning (variant {_h(user) % 1000}, {n})</modification>\n<graph>\n{new_graph}\n</graph>\n<prompt>\n{prompt}</prompt>"


def make_server(optimizer_mode: str = "good", latency: float = 0.0) -> OpenAIServer:
    def responder(messages, body):
        if messages and messages[0].get("role") == "system" and OPT_SYSTEM_MARK in messages[0].get("content", ""):
            reply = optimizer_reply(messages, optimizer_mode)
            # sampled candidates differ: the request's seed picks the variant
            return reply.replace("variant ", f"seed {body.get('seed')} variant ")
        return executor_reply("\n".join(str(m.get("content")) for m in messages))

    return OpenAIServer(responder=responder, latency_s=latency).start()


def write_config(tmp_path: Path, server: OpenAIServer, *, optimizer: str = "openai/test-opt", rounds: int = 3,
                 extra_opt: str = "", extra_llm: str = "") -> Path:
    cfg = tmp_path / "opt.toml"
    opt_block = f'[optimize.optimizer]\nmodel = "{optimizer}"\napi_base = "{server.url}"\ntemperature = 1.0\n'
    if optimizer == "mutate":
        opt_block = '[optimize.optimizer]\nmodel = "mutate"\n'
    cfg.write_text(
        f"""
[llm]
max_retries = 1
backoff_base_s = 0.01
{extra_llm}

[rollout]
workers = 1
concurrency = 8

[optimize]
dataset = "gsm8k"
operators = ["Custom", "ScEnsemble"]
max_rounds = {rounds}
validation_rounds = 2
validation_limit = 9
seed = 3
{extra_opt}

{opt_block}
[optimize.executor]
model = "openai/test-exec"
api_base = "{server.url}"
temperature = 0.0
"""
    )
    return cfg


def _store_rows(db: Path) -> dict:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    wf = [dict(r) for r in conn.execute("SELECT round, parent_id, hash, modification, status FROM workflows ORDER BY id")]
    ev = [dict(r) for r in conn.execute(
        "SELECT w.round, e.split, e.repeat, e.score, e.n FROM evaluations e JOIN workflows w ON w.id = e.workflow_id ORDER BY w.id, e.split, e.repeat")]
    ex = [dict(r) for r in conn.execute(
        "SELECT round, group_id, episode_id, step, anchor, modification, reward, score_before, score_after, valid FROM experiences ORDER BY id")]
    conn.close()
    return {"workflows": wf, "evaluations": ev, "experiences": ex}


@pytest.fixture
def env_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")


def test_three_round_run_records_tree_scores_experiences(tmp_path, env_keys):
    server = make_server()
    try:
        cfg = write_config(tmp_path, server)
        db = tmp_path / "a.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "r3", "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["run_id"] == "r3" and out["status"] in ("completed", "converged") and out["rounds"] == 3
        rows = _store_rows(db)
        rounds = [w["round"] for w in rows["workflows"]]
        assert rounds == [1, 2, 3]
        assert rows["workflows"][0]["parent_id"] is None and rows["workflows"][1]["parent_id"] is not None
        # two validation repeats per workflow, 9 problems each
        assert len(rows["evaluations"]) == 6 and all(e["n"] == 9 for e in rows["evaluations"])
        base = [e["score"] for e in rows["evaluations"] if e["round"] == 1]
        assert base[0] == base[1] and 0 < base[0] < 1
        # the step-by-step child is better, and the experience says so
        ex = rows["experiences"]
        assert [e["round"] for e in ex] == [2, 3]
        assert all(e["valid"] for e in ex)
        assert ex[0]["score_after"] > ex[0]["score_before"] and ex[0]["reward"] == pytest.approx(ex[0]["score_after"] - ex[0]["score_before"])
        assert ex[0]["anchor"] == rows["workflows"][0]["hash"]
        # inspect reads it back
        r2 = runner.invoke(app, ["inspect", "runs", "--json", "--db", str(db)])
        run = json.loads(r2.stdout)[0]
        assert run["id"] == "r3" and run["rounds"] == 3 and run["best_score"] == pytest.approx(max(e["score_after"] for e in ex))
        r3 = runner.invoke(app, ["inspect", "experiences", "--run", "r3", "--json", "--db", str(db)])
        items = json.loads(r3.stdout)
        for key in ("run_id", "round", "group_id", "episode_id", "step", "anchor", "modification", "reward",
                    "score_before", "score_after", "valid"):
            assert key in items[0]
        r4 = runner.invoke(app, ["inspect", "calls", "--run", "r3", "--json", "--db", str(db)])
        roles = {c["role"] for c in json.loads(r4.stdout)}
        assert {"optimizer", "executor"} <= roles
    finally:
        server.stop()


def test_malformed_optimizer_output_is_retried_then_recorded(tmp_path, env_keys):
    server = make_server(optimizer_mode="garbage-then-good")
    try:
        cfg = write_config(tmp_path, server, rounds=2)
        db = tmp_path / "b.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "g1", "--json"])
        assert r.exit_code == 0, r.output
        # the retry carried the parse error back to the optimizer
        opt_reqs = [b for b in server.requests if OPT_SYSTEM_MARK in b["messages"][0]["content"]]
        assert len(opt_reqs) >= 2 and "could not be used" in opt_reqs[1]["messages"][-1]["content"]
        assert _store_rows(db)["experiences"][0]["valid"] == 1
    finally:
        server.stop()
    server = make_server(optimizer_mode="garbage")
    try:
        cfg = write_config(tmp_path, server, rounds=2)
        db = tmp_path / "c.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "g2", "--json"])
        assert r.exit_code == 0, r.output
        ex = _store_rows(db)["experiences"]
        assert len(ex) == 1 and ex[0]["valid"] == 0 and ex[0]["reward"] == 0
        # "completed", but not silently: the summary says the proposals were invalid
        out = json.loads(r.stdout)
        assert out["status"] == "completed" and "1 of 1 proposals were invalid" in out["warnings"][0]
    finally:
        server.stop()


def test_convergence_stops_the_search(tmp_path, env_keys):
    server = make_server()
    try:
        cfg = write_config(tmp_path, server, optimizer="mutate", rounds=12,
                           extra_opt="consecutive_rounds = 2\noperators = [\"Custom\", \"ScEnsemble\"]\n".replace(
                               'operators = ["Custom", "ScEnsemble"]\n', ""))
        db = tmp_path / "d.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["status"] == "converged" and out["rounds"] < 12
    finally:
        server.stop()


def test_budget_cap_stops_cleanly_and_resumes(tmp_path, env_keys):
    server = make_server()
    try:
        # price the loopback models so that the run spends money
        prices = "\n".join(
            f'[llm.prices."{m}"]\ninput_cost_per_token = 1e-6\noutput_cost_per_token = 2e-6'
            for m in ("openai/test-exec", "openai/test-opt")
        )
        cfg = write_config(tmp_path, server, rounds=4, extra_opt="budget_usd = 0.003")
        cfg.write_text(cfg.read_text().replace("temperature = 0.0", "temperature = 0.0\nmax_tokens = 50") + "\n" + prices + "\n")
        db = tmp_path / "e.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "b1"])
        assert r.exit_code == 3, r.output
        assert "budget" in r.output.lower() and "--budget-usd" in r.output
        run = json.loads(runner.invoke(app, ["inspect", "runs", "--json", "--db", str(db)]).stdout)[0]
        assert run["status"] == "budget_exceeded"
        assert 0 < run["cost_usd"] <= 0.003
        r2 = runner.invoke(app, ["optimize", "--resume", "b1", "--budget-usd", "1.0", "--db", str(db), "--json"])
        assert r2.exit_code == 0, r2.output
        assert json.loads(r2.stdout)["rounds"] == 4
    finally:
        server.stop()


def test_bad_inputs_one_line_each(tmp_path, env_keys):
    server = make_server()
    try:
        cfg = write_config(tmp_path, server)
        db = tmp_path / "f.db"
        cases = [
            (["optimize", "--config", str(cfg), "--db", str(db), "--dataset", "nope"], "nope"),
            (["optimize", "--config", str(cfg), "--db", str(db), "--resume", "missing-run"], "missing-run"),
            (["optimize", "--config", str(cfg), "--db", str(db), "--executor-model", "nosuchprovider/x", "--max-rounds", "1"], "nosuchprovider"),
            (["optimize", "--config", str(cfg), "--db", str(db), "--candidates", "0"], "candidates"),
        ]
        for args, needle in cases:
            r = runner.invoke(app, args)
            assert r.exit_code != 0, (args, r.output)
            err = [l for l in r.stderr.splitlines() if l.startswith("Error")]
            assert len(err) == 1 and needle in err[0], (args, r.stderr)
        # a conflicting config on resume is refused, naming the keys
        assert runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "c1", "--max-rounds", "1"]).exit_code == 0
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--resume", "c1", "--seed", "9"])
        assert r.exit_code == 1 and "optimize.seed" in r.stderr and "--force" in r.stderr
    finally:
        server.stop()


def _run_cli(args, env, timeout=300):
    return subprocess.Popen([sys.executable, "-m", "aflowctl.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_kill9_and_resume_gives_the_same_store(tmp_path):
    server = make_server(latency=0.25)
    try:
        cfg = write_config(tmp_path, server, optimizer="mutate", rounds=6, extra_opt="check_convergence = false")
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key-123456", "AFLOWCTL_HOME": str(tmp_path / "home")}
        ref_db = tmp_path / "ref.db"
        t_ref = time.monotonic()
        p = _run_cli(["optimize", "--config", str(cfg), "--db", str(ref_db), "--run-id", "k"], env)
        assert p.wait(timeout=600) == 0, p.stderr.read()
        t_ref = time.monotonic() - t_ref  # kills land inside a run however fast this machine is
        reference = _store_rows(ref_db)
        rng = random.Random(0)
        db = tmp_path / "kill.db"
        kills = 0
        for attempt in range(8):
            args = ["optimize", "--config", str(cfg), "--db", str(db)] + (["--resume", "k"] if db.exists() and attempt else ["--run-id", "k"])
            p = _run_cli(args, env)
            try:
                p.wait(timeout=rng.uniform(0.3, 0.9) * t_ref)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
                continue
            if p.returncode == 0:
                break
        else:
            p = _run_cli(["optimize", "--config", str(cfg), "--db", str(db), "--resume", "k"], env)
            assert p.wait(timeout=600) == 0, p.stderr.read()
        assert kills >= 1
        assert _store_rows(db) == reference
        # no executor call was paid twice: every non-cached request hash appears once per sample index
        conn = sqlite3.connect(db)
        dup = conn.execute(
            "SELECT COUNT(*) FROM (SELECT request_hash, sample_index FROM llm_calls WHERE cached = 0 AND error IS NULL "
            "GROUP BY request_hash, sample_index HAVING COUNT(*) > 1)").fetchone()[0]
        assert dup == 0
    finally:
        server.stop()


def test_k_candidates_are_all_kept_as_one_step_group(tmp_path, env_keys):
    server = make_server()
    try:
        cfg = write_config(tmp_path, server, rounds=3)
        db = tmp_path / "k.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "k3", "--candidates", "3", "--json"])
        assert r.exit_code == 0, r.output
        rows = _store_rows(db)
        assert [w["round"] for w in rows["workflows"]] == [1, 2, 2, 2, 3, 3, 3]
        ex = rows["experiences"]
        assert len(ex) == 6
        for rnd in (2, 3):
            group = [e for e in ex if e["round"] == rnd]
            assert len(group) == 3
            assert len({e["anchor"] for e in group}) == 1  # one step group: the parent is the anchor
            assert len({e["group_id"] for e in group}) == 1
            assert len({e["episode_id"] for e in group}) == 3
            assert len({e["modification"] for e in group}) == 3
        # every child was evaluated (validation_rounds = 2)
        assert sum(1 for e in rows["evaluations"] if e["round"] == 2) == 6
    finally:
        server.stop()


def _wait_for_first_evaluation(db: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Return once the run has stored its first evaluation (round 1 is done, round 2 is next)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    if conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]:
                        return
            except sqlite3.OperationalError:
                pass  # the schema is not there yet
        time.sleep(0.05)
    raise AssertionError("the run stored no evaluation in time")


@pytest.mark.slow
def test_ctrl_c_leaves_an_interrupted_resumable_run(tmp_path):
    # 0.5 s per call: rounds 2-4 take seconds, so the Ctrl-C sent after round 1 lands mid-run
    # even when this test process is slow to notice round 1 (both cores busy under -n 2)
    server = make_server(latency=0.5)
    try:
        cfg = write_config(tmp_path, server, optimizer="mutate", rounds=4, extra_opt="check_convergence = false")
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key-123456", "AFLOWCTL_HOME": str(tmp_path / "home")}
        db = tmp_path / "int.db"
        p = _run_cli(["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "i1"], env)
        _wait_for_first_evaluation(db, p)  # Ctrl-C lands mid-run, however fast this machine is
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err
        assert "aflowctl optimize --resume i1" in err  # the real run id, not a placeholder
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT status FROM runs WHERE id = 'i1'").fetchone()[0] == "interrupted"
        conn.close()
        p = _run_cli(["optimize", "--config", str(cfg), "--db", str(db), "--resume", "i1"], env)
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT status FROM runs WHERE id = 'i1'").fetchone()[0] == "completed"
        assert conn.execute("SELECT COUNT(*) FROM experiences WHERE run_id = 'i1'").fetchone()[0] == 3
    finally:
        server.stop()
