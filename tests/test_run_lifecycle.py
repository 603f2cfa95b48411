"""store/runs.py: one lifecycle for every run kind, leases tested with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aflowctl.config import Config
from aflowctl.errors import ConfigError, NotFoundError, RunBusyError
from aflowctl.store import open_store, queries, runs
from aflowctl.store.models import RunLease
from aflowctl.store.runs import RunStatus

HOLDER = textwrap.dedent(
    """
    import sys, time
    from aflowctl.config import Config
    from aflowctl.store import open_store, runs
    store = open_store(sys.argv[1])
    start_at, hold_s = float(sys.argv[3]), float(sys.argv[4])
    while time.time() < start_at:
        pass
    try:
        opened = runs.create_run(store, kind="optimize", cfg=Config(), run_id=sys.argv[2])
    except Exception as exc:
        print(type(exc).__name__ + ": " + str(exc), flush=True)
        sys.exit(3)
    print("ok", flush=True)
    time.sleep(hold_s)
    opened.lease.release()
    """
)


def _holder(db: Path, run_id: str, *, start_at: float = 0.0, hold_s: float = 600.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(db), run_id, str(start_at), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ok(p: subprocess.Popen) -> None:
    line = p.stdout.readline().strip()
    assert line == "ok", (line, p.stderr.read() if p.poll() is not None else "")


def _cli(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aflowctl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_create_reopen_status_state_and_discard(tmp_path):
    store = open_store(tmp_path / "s.db")
    cfg = Config()
    opened = runs.create_run(store, kind="optimize", cfg=cfg, run_id="r1", dataset="arith", state={"completed_round": 0})
    assert opened.created and opened.id == "r1" and opened.notice is None
    runs.update_state(store, "r1", completed_round=2)
    runs.set_status(store, "r1", RunStatus.INTERRUPTED, "stopped", extra=1)
    row = queries.get_run(store, "r1")
    assert row["status"] == "interrupted" and row["message"] == "stopped"
    assert queries.run_state(store, "r1") == {"completed_round": 2, "extra": 1}
    opened.lease.release()
    # a limit and a resource may change on resume; a key that defines the experiment may not
    cfg2 = cfg.model_copy(deep=True)
    cfg2.optimize.max_rounds, cfg2.rollout.workers = 9, 5
    again = runs.reopen_run(store, "r1", kind="optimize", cfg=cfg2)
    assert not again.created and queries.get_run(store, "r1")["status"] == "running"
    again.lease.release()
    cfg3 = cfg.model_copy(deep=True)
    cfg3.optimize.validation_rounds = 1
    with pytest.raises(ConfigError, match="optimize.validation_rounds"):
        runs.reopen_run(store, "r1", kind="optimize", cfg=cfg3)
    runs.reopen_run(store, "r1", kind="optimize", cfg=cfg3, force=True).lease.release()
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        runs.reopen_run(store, "nope", kind="optimize", cfg=cfg)
    with pytest.raises(ConfigError, match="is a optimize run|not a train run"):
        runs.reopen_run(store, "r1", kind="train", cfg=cfg)
    # discard_after removes later rounds' workflows, evaluations and experiences only
    from aflowctl.store import Evaluation, Experience, Workflow, utcnow

    def add(s):
        ids = {}
        for rnd in (1, 2, 3):
            w = Workflow(run_id="r1", round=rnd, graph_code="g", hash=f"h{rnd}", created_at=utcnow())
            s.add(w)
            s.flush()
            ids[rnd] = w.id
            s.add(Evaluation(workflow_id=w.id, run_id="r1", dataset="arith", split="validate", score=0.5, n=1,
                             created_at=utcnow()))
            s.add(Experience(run_id="r1", round=rnd, group_id="g", episode_id="e", step=0, anchor="a",
                             created_at=utcnow()))
        return ids

    store.transact(add)
    runs.discard_after(store, "r1", 1)
    assert [w["round"] for w in queries.list_workflows(store, run_id="r1")] == [1]
    assert [e["round"] for e in queries.list_experiences(store, run_id="r1")] == [1]
    assert len(queries.list_evaluations(store, "r1")) == 1


def test_a_failed_start_leaves_a_reusable_id_but_a_run_with_work_is_kept(tmp_path):
    store = open_store(tmp_path / "s.db")
    runs.create_run(store, kind="train", cfg=Config(), run_id="t1").lease.release()
    runs.set_status(store, "t1", RunStatus.FAILED, "the start workflow of gsm8k failed to run")
    again = runs.create_run(store, kind="train", cfg=Config(), run_id="t1")
    assert again.notice and "t1" in again.notice and "reused" in again.notice
    assert queries.get_run(store, "t1")["status"] == "running"
    again.lease.release()
    # a failed run that finished an update is resumable: its id is not reused
    runs.set_status(store, "t1", RunStatus.FAILED, "boom", update=3)
    with pytest.raises(ConfigError) as ei:
        runs.create_run(store, kind="train", cfg=Config(), run_id="t1")
    assert "already exists" in ei.value.message and "aflowctl train --resume t1" in ei.value.hint
    # another kind's id is never reused
    with pytest.raises(ConfigError, match="already exists"):
        runs.create_run(store, kind="optimize", cfg=Config(), run_id="t1")


def test_a_live_process_holds_the_run_and_a_dead_one_is_taken_over(tmp_path):
    db = tmp_path / "s.db"
    open_store(db)
    p = _holder(db, "busy")
    try:
        _wait_ok(p)
        store = open_store(db)
        with pytest.raises(RunBusyError) as ei:
            runs.reopen_run(store, "busy", kind="optimize", cfg=Config())
        assert str(ei.value).startswith(f"run busy is being executed by pid {p.pid} on {socket.gethostname()}")
        with pytest.raises(RunBusyError):
            runs.create_run(store, kind="optimize", cfg=Config(), run_id="busy")
        assert runs.lease_holder(store, "busy")["pid"] == p.pid
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # the holder was killed -9: its lease is taken over
    store = open_store(db)
    assert runs.lease_holder(store, "busy") is None
    opened = runs.reopen_run(store, "busy", kind="optimize", cfg=Config())
    opened.lease.release()


def test_a_lease_on_another_host_is_respected_until_its_heartbeat_is_stale(tmp_path):
    store = open_store(tmp_path / "s.db")
    runs.create_run(store, kind="optimize", cfg=Config(), run_id="x").lease.release()

    def lease(age_s: float):
        from datetime import datetime, timedelta, timezone

        t = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat(timespec="milliseconds")

        def txn(s):
            row = s.get(RunLease, "x") or RunLease(run_id="x", pid=1, host="x", token="t", acquired_at=t, heartbeat_at=t)
            row.pid, row.host, row.token, row.acquired_at, row.heartbeat_at = 4242, "other-host", "t", t, t
            s.add(row)

        store.transact(txn)

    lease(1.0)
    with pytest.raises(RunBusyError, match="run x is being executed by pid 4242 on other-host"):
        runs.reopen_run(store, "x", kind="optimize", cfg=Config())
    lease(runs.STALE_S + 5)
    runs.reopen_run(store, "x", kind="optimize", cfg=Config()).lease.release()


def test_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.05)
    store = open_store(tmp_path / "s.db")
    opened = runs.create_run(store, kind="optimize", cfg=Config(), run_id="hb")
    with store.read() as s:
        first = s.get(RunLease, "hb").heartbeat_at
    time.sleep(0.4)
    with store.read() as s:
        assert s.get(RunLease, "hb").heartbeat_at > first
    opened.lease.release()
    with store.read() as s:
        assert s.get(RunLease, "hb") is None


def test_simultaneous_starts_with_one_run_id_give_one_run_and_clear_errors(tmp_path):
    db = tmp_path / "s.db"
    open_store(db)
    start_at = time.time() + 3.0  # all four interpreters are up and spinning by then
    procs = [_holder(db, "same", start_at=start_at, hold_s=4.0) for _ in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        outs.append((p.returncode, out.strip(), err))
    assert sorted(rc for rc, _, _ in outs) == [0, 3, 3, 3], outs
    for rc, out, err in outs:
        assert "IntegrityError" not in out + err
        if rc == 3:
            assert out.startswith("RunBusyError: run same is being executed by pid "), out
    store = open_store(db)
    assert [r["id"] for r in queries.list_runs(store)] == ["same"]


def test_cli_resume_of_a_run_held_by_another_process_is_one_line(tmp_path):
    db = tmp_path / "s.db"
    open_store(db)
    p = _holder(db, "held")
    try:
        _wait_ok(p)
        for args in (["optimize", "--db", str(db), "--resume", "held"],
                     ["optimize", "--db", str(db), "--run-id", "held", "--optimizer-model", "mutate"],
                     ["train", "--db", str(db), "--run-id", "held"]):
            r = _cli(args)
            assert r.returncode == 1, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, r.stderr
            assert f"run held is being executed by pid {p.pid} on {socket.gethostname()}" in lines[0]
    finally:
        p.kill()
        p.wait()


def test_train_resume_of_a_missing_run_fails_before_loading_the_model(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    cfg = tmp_path / "t.toml"
    cfg.write_text('[train]\nenv = "keyword"\n')
    for extra in ([], ["--config", str(cfg)]):
        t0 = time.perf_counter()
        r = _cli(["train", "--db", str(tmp_path / "s.db"), "--resume", "MISSING", *extra],
                 env={"AFLOWCTL_MODELS_DIR": str(models)})
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()]
        assert "training run 'MISSING' does not exist" in r.stderr
        assert list(models.iterdir()) == []  # the embedded model was not converted or loaded
        assert time.perf_counter() - t0 < 30


def test_train_on_a_missing_split_creates_no_run_and_the_same_command_says_the_same(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    cfg = tmp_path / "t.toml"
    cfg.write_text('[train]\ndatasets = ["gsm8k"]\n')
    db = tmp_path / "s.db"
    env = {"AFLOWCTL_DATA_PATH": str(empty), "AFLOWCTL_HOME": str(tmp_path / "home")}
    errs = []
    for _ in range(2):
        r = _cli(["train", "--db", str(db), "--config", str(cfg), "--run-id", "t1"], env=env)
        assert r.returncode == 1
        errs.append(r.stderr.strip())
    assert errs[0] == errs[1], errs  # the id is not blocked by the first attempt
    assert "gsm8k" in errs[0] and "aflowctl data fetch gsm8k" in errs[0]
    assert "train.executor" not in errs[0]
    assert queries.get_run(open_store(db), "t1") is None


def test_ctrl_c_names_the_real_run_id_and_releases_the_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from aflowctl.cli import app
    from aflowctl.optimizer import search

    def interrupted(self):
        runs.set_status(self.store, self.run_id, RunStatus.INTERRUPTED, "interrupted")
        raise KeyboardInterrupt

    monkeypatch.setattr(search.Optimizer, "run", interrupted)
    db = tmp_path / "s.db"
    r = CliRunner().invoke(app, ["optimize", "--db", str(db), "--dataset", "gsm8k", "--optimizer-model", "mutate",
                                 "--executor-model", "openai/x", "--run-id", "c1", "--no-preflight"])
    assert r.exit_code == 130, r.output
    assert "aflowctl optimize --resume c1" in r.output
    assert "RUN_ID" not in r.output
    store = open_store(db)
    assert queries.get_run(store, "c1")["status"] == "interrupted"
    assert runs.lease_holder(store, "c1") is None


def test_two_cli_optimize_starts_with_one_run_id(tmp_path):
    from test_optimize_e2e import make_server, write_config

    server = make_server(latency=0.2)
    try:
        cfg = write_config(tmp_path, server, optimizer="mutate", rounds=1)
        db = tmp_path / "race.db"
        open_store(db)
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key-123456", "AFLOWCTL_HOME": str(tmp_path / "home")}
        args = [sys.executable, "-m", "aflowctl.cli", "optimize", "--config", str(cfg), "--db", str(db), "--run-id", "same"]
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    finally:
        server.stop()
    codes = sorted(rc for *_, rc in results)
    assert codes == [0, 1], results
    winner = next(pid for pid, _, _, rc in results if rc == 0)
    _, _, err, _ = next(r for r in results if r[3] == 1)
    assert "IntegrityError" not in err
    assert err.strip().splitlines() == [f"Error: run same is being executed by pid {winner} on {socket.gethostname()}. "
                                        "wait for it to finish, or stop that process first"]
    store = open_store(db)
    assert [r["id"] for r in queries.list_runs(store)] == ["same"]
    assert queries.get_run(store, "same")["status"] == "completed"


def test_no_sql_or_orm_in_the_cli_or_the_optimizer():
    """Reads go through store/queries.py and writes through store/runs.py."""
    import ast

    root = Path(__file__).resolve().parents[1] / "aflowctl"
    models = {"Run", "Workflow", "Evaluation", "RolloutTask", "Experience", "LLMCall", "Checkpoint", "TrainMetric",
              "RunLease"}
    offenders = []
    for path in sorted([*(root / "cli").rglob("*.py"), *(root / "optimizer").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = getattr(node, "module", None) or ""
                names = {a.name for a in node.names}
                if mod.split(".")[0] in ("sqlalchemy", "sqlmodel") or any(
                        a.name.split(".")[0] in ("sqlalchemy", "sqlmodel") for a in node.names):
                    offenders.append(f"{path.name}:{node.lineno} imports {mod or names}")
                if mod.startswith("aflowctl.store") and names & models:
                    offenders.append(f"{path.name}:{node.lineno} imports {sorted(names & models)}")
            if isinstance(node, ast.Attribute) and node.attr in ("transact", "write", "read", "exec", "execute") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("store", "s", "session", "conn"):
                offenders.append(f"{path.name}:{node.lineno} calls {node.value.id}.{node.attr}")
    assert not offenders, offenders
