"""`aflowctl evaluate`: bad inputs (CliRunner), a JSON run against a loopback server,
and resume after kill -9 of a real `aflowctl evaluate` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.answers import answering, benchmark_answers
from helpers.openai_server import OpenAIServer
from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()


def _one_line_error(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def _db_snapshot(home: Path) -> list:
    db = home / "aflowctl.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    out = [conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("runs", "workflows", "evaluations", "rollout_tasks")]
    conn.close()
    return out


@pytest.fixture
def workflow_dirs(tmp_path):
    bad_syntax = tmp_path / "bad_syntax"
    bad_syntax.mkdir()
    (bad_syntax / "graph.py").write_text("class Workflow(:\n    pass\n")
    (bad_syntax / "prompt.py").write_text("")
    no_class = tmp_path / "no_class"
    no_class.mkdir()
    (no_class / "graph.py").write_text("class Flow:\n    async def __call__(self, problem):\n        return problem, 0\n")
    (no_class / "prompt.py").write_text("")
    return bad_syntax, no_class


def test_bad_inputs_one_line_each_and_nothing_lost(workflow_dirs, _isolated_home):
    home = _isolated_home
    bad_syntax, no_class = workflow_dirs
    ok = ["--executor-model", "openai/m", "--api-base", "http://127.0.0.1:9/v1"]
    # something stored first, to check that nothing is lost
    from aflowctl.store import Run, open_store, utcnow

    store = open_store()
    with store.write() as s:
        s.add(Run(id="earlier", kind="evaluate", status="completed", created_at=utcnow(), updated_at=utcnow()))
    r = runner.invoke(app, ["evaluate", "--dataset", "nope", *ok])
    assert r.exit_code == 1
    line = _one_line_error(r)
    assert "unknown benchmark 'nope'" in line and "gsm8k" in line and "humaneval" in line
    before = _db_snapshot(home)

    cases = [
        ([str(bad_syntax), "--dataset", "gsm8k"], ["graph.py", "syntax error", "line 1"]),
        ([str(no_class), "--dataset", "gsm8k"], ["no Workflow class"]),
        (["--dataset", "hotpotqa", "--split", "test"], ["test split of hotpotqa", "aflowctl data fetch hotpotqa"]),
        (["--dataset", "gsm8k", "--index", "100000"], ["problem index 100000 is out of range", "gsm8k/validate"]),
        (["--dataset", "gsm8k", "--split", "train"], ["--split must be validate or test"]),
        (["424242", "--dataset", "gsm8k"], ["workflow 424242 does not exist"]),
        ([str(home / "no_such_folder"), "--dataset", "gsm8k"], ["neither a folder nor a workflow id"]),
        (["--dataset", "gsm8k", "--limit", "0"], ["--limit must be at least 1"]),
    ]
    for args, needles in cases:
        r = runner.invoke(app, ["evaluate", *args, *ok])
        assert r.exit_code != 0, (args, r.stdout)
        line = _one_line_error(r)
        for needle in needles:
            assert needle in line, (args, line)
        assert r.stdout == ""
    assert _db_snapshot(home) == before and len(before[0]) == 1


def _answers() -> dict:
    return benchmark_answers("gsm8k", 40)


def _responder(answers):
    return answering(
        answers, lambda i: i % 3 == 0, right="so the answer is {expected}", wrong="so the answer is 0.123", unknown="?"
    )


def test_evaluate_json(_isolated_home):
    with OpenAIServer(_responder(_answers()), latency_s=0.0) as srv:
        r = runner.invoke(app, ["evaluate", "--dataset", "gsm8k", "--limit", "6", "--repeats", "2", "--executor-model", "openai/m",
                                "--api-base", srv.url, "--workers", "1", "--concurrency", "3", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("mean_score", "scores", "std", "n", "cost_usd", "tokens"):
        assert key in out
    assert out["scores"] == [pytest.approx(2 / 6)] * 2 and out["n"] == 6 and out["tokens"] > 0 and out["std"] == 0.0
    conn = sqlite3.connect(_isolated_home / "aflowctl.db")
    run = conn.execute("SELECT id, kind, status, dataset FROM runs").fetchall()
    assert run == [(out["run_id"], "evaluate", "completed", "gsm8k")]
    evals = conn.execute("SELECT workflow_id, repeat, score FROM evaluations ORDER BY repeat").fetchall()
    assert evals == [(out["workflow_id"], 0, pytest.approx(2 / 6)), (out["workflow_id"], 1, pytest.approx(2 / 6))]
    assert conn.execute("SELECT COUNT(*) FROM llm_calls WHERE run_id = ? AND role = 'executor'", (out["run_id"],)).fetchone()[0] == 12
    # a stored workflow id works as WORKFLOW
    wid = out["workflow_id"]
    conn.close()
    with OpenAIServer(_responder(_answers()), latency_s=0.0) as srv:
        r = runner.invoke(app, ["evaluate", str(wid), "--dataset", "gsm8k", "--index", "0", "--index", "1", "--executor-model",
                                "openai/m", "--api-base", srv.url, "--workers", "1", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["scores"] == [0.5]


@pytest.mark.slow
def test_resume_after_kill_9_of_aflowctl_evaluate(_isolated_home, tmp_path):
    """Kill the CLI process mid-run; the same command again redoes no finished task."""
    home = _isolated_home
    exe = shutil.which("aflowctl") or str(Path(sys.executable).parent / "aflowctl")
    answers = _answers()
    with OpenAIServer(_responder(answers), latency_s=0.15) as srv:
        cmd = [exe, "evaluate", "--dataset", "gsm8k", "--limit", "24", "--executor-model", "openai/m", "--api-base", srv.url,
               "--workers", "1", "--concurrency", "1", "--json"]
        env = {**os.environ, "AFLOWCTL_HOME": str(home)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        db = home / "aflowctl.db"
        deadline = time.monotonic() + 90
        done_before = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                conn = sqlite3.connect(db)
                done_before = conn.execute("SELECT key, result_json FROM rollout_tasks WHERE status = 'done'").fetchall()
                conn.close()
            except sqlite3.Error:
                continue
            if done_before:
                break
        assert done_before and proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(1.5)  # orphaned workers notice their parent is gone and exit
        conn = sqlite3.connect(db)
        n_tasks = conn.execute("SELECT COUNT(*) FROM rollout_tasks").fetchone()[0]
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
        conn.close()
        assert n_tasks == 3 and 1 <= len(done_before) < 3 and status == "running"
        requests_before = srv.count

        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        requests = list(srv.requests)
    assert out["tasks"] == 3 and out["tasks_reused"] == len(done_before)
    assert out["n"] == 24 and out["scores"] == [pytest.approx(8 / 24)]
    # every question was asked at most once, over both processes: nothing finished was redone
    asked = {}
    for body in requests:
        text = "\n".join(m.get("content") or "" for m in body["messages"])
        q = next(q for q in answers if q in text)
        asked[q] = asked.get(q, 0) + 1
    done_items = {i for _, rj in done_before for i in (d["index"] for d in json.loads(rj)["items"])}
    for q, (i, _) in answers.items():
        if i in done_items:
            assert asked.get(q) == 1, (i, asked.get(q))
    assert len(asked) == 24 and requests_before < 24
    conn = sqlite3.connect(home / "aflowctl.db")
    rows = conn.execute("SELECT key, status, attempts, result_json FROM rollout_tasks").fetchall()
    runs = dict(conn.execute("SELECT id, status FROM runs").fetchall())
    conn.close()
    by_key = {k: (s, a, rj) for k, s, a, rj in rows}
    for key, rj in done_before:
        assert by_key[key] == ("done", 1, rj)
    assert all(s == "done" for s, _, _ in by_key.values())
    assert runs == {out["run_id"]: "completed"}  # the interrupted run was resumed, not duplicated
    assert "resuming the interrupted run" not in res.stderr  # --json: nothing but JSON on stdout, no chatter


def test_the_same_evaluation_twice_at_once_is_one_run(_isolated_home):
    """A second identical evaluate while the first runs would resume the first's run: it is
    refused in one line naming the process that executes it (one process per run)."""
    import socket

    home = _isolated_home
    with OpenAIServer(_responder(_answers()), latency_s=0.5) as srv:
        cmd = [sys.executable, "-m", "aflowctl.cli", "evaluate", "--dataset", "gsm8k", "--limit", "24",
               "--executor-model", "openai/m", "--api-base", srv.url, "--workers", "1", "--concurrency", "1", "--json"]
        env = {**os.environ, "AFLOWCTL_HOME": str(home)}
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        db = home / "aflowctl.db"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first.poll() is None:  # wait until the first holds its run
            time.sleep(0.1)
            try:
                conn = sqlite3.connect(db)
                held = conn.execute("SELECT COUNT(*) FROM run_leases").fetchone()[0]
                conn.close()
            except sqlite3.Error:
                continue
            if held:
                break
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    line = _one_line_error(second)
    assert f"is being executed by pid {first.pid} on {socket.gethostname()}" in line
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), MIN(status) FROM runs").fetchone() == (1, "completed")
    conn.close()
