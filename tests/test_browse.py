"""``aflowctl browse``: the store read-only in Datasette, canned queries over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers.store_runs import Child, build_optimize_run, build_train_run
from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()
RUN = "opt-20260101-000000-beef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_browse_serves_canned_queries_read_only(tmp_path):
    pytest.importorskip("datasette", reason="aflowctl browse needs the optional extra: pip install 'aflowctl[ui]'")
    from aflowctl.store import LLMCall, open_store, utcnow

    db = tmp_path / "store.db"
    store = open_store(db)
    build_optimize_run(store, RUN, [("root", [Child("a", "add an ensemble", [0.7, 0.8, 0.75]), Child("b", "bad", None)])])
    build_train_run(store, "train-20260101-000000-cafe", updates=2)
    with store.write() as s:
        s.add(LLMCall(run_id=RUN, role="executor", provider="local", model="smollm2", request_hash="x",
                      messages_json=json.dumps([{"role": "user", "content": "seventeen bananas"}]), response="42",
                      cost_usd=0.0, created_at=utcnow()))
    store.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    port = _free_port()
    env = {**os.environ, "AFLOWCTL_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "aflowctl.cli", "browse", "--db", str(db), "--port", str(port),
                             "--no-open"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/store"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/-/versions.json")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "browse did not start"
                time.sleep(0.3)
        rows = _get(f"{base}/workflows_by_score.json?_shape=array&run_id={RUN}")
        assert [r["workflow_id"] for r in rows][:2] == [2, 1]  # best score first
        assert rows[0]["score"] == pytest.approx(0.75) and rows[0]["modification"] == "add an ensemble"
        rows = _get(f"{base}/experiences_by_reward.json?_shape=array&run_id=")
        assert rows[0]["reward"] == pytest.approx(0.25) and rows[-1]["valid"] == 0
        rows = _get(f"{base}/spend_by_role_and_model.json?_shape=array&run_id={RUN}")
        assert {r["role"] for r in rows} >= {"executor", "optimizer"}
        rows = _get(f"{base}/training_metrics.json?_shape=array&run_id=")
        assert [r["update"] for r in rows] == [0, 1] and rows[1]["reward_mean"] is not None
        # table metadata: descriptions; full-text search over calls
        meta = _get(f"http://127.0.0.1:{port}/-/metadata.json")
        assert "resumable cursor" in meta["databases"]["store"]["tables"]["runs"]["columns"]["state_json"]
        found = _get(f"{base}/llm_calls.json?_shape=array&_search=bananas")
        assert [r["response"] for r in found] == ["42"]
        with urllib.request.urlopen(f"{base}/llm_calls?_search=bananas", timeout=10) as r:
            assert "<pre" in r.read().decode()  # JSON columns shown indented
        # read-only: a write through SQL is refused, the file is unchanged
        bad = urllib.request.Request(f"{base}.json?sql=" + urllib.request.quote("DELETE FROM runs"))
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad, timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_browse_without_the_extra_names_the_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasette" else real(name, *a))
    r = runner.invoke(app, ["browse", "--no-open", "--db", str(tmp_path / "s.db")])
    assert r.exit_code == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install 'aflowctl[ui]'" in lines[0]


def test_browse_port_in_use_is_one_line(tmp_path):
    pytest.importorskip("datasette", reason="aflowctl browse needs the optional extra: pip install 'aflowctl[ui]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(app, ["browse", "--no-open", "--port", str(port), "--db", str(tmp_path / "s.db")])
    assert r.exit_code == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0] and "--port" in lines[0]
