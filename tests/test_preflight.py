"""Keys, reachability and model names are checked before a run is created (loopback server)."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.config import ModelConfig
from aflowctl.errors import UnknownModelError
from aflowctl.preflight import check_model
from aflowctl.store import open_store, queries
from helpers.openai_server import OpenAIServer

runner = CliRunner()


@pytest.fixture
def server():
    with OpenAIServer(api_key="sk-right-key-123456", models=["test-model"]) as s:
        yield s


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(r) -> str:
    text = r.output.strip()
    assert r.exit_code == 1, text
    assert len(text.splitlines()) == 1, text
    return text


def _evaluate(db, *args):
    return runner.invoke(app, ["evaluate", "--dataset", "gsm8k", "--limit", "1", "--db", str(db), *args])


def _no_runs(db) -> bool:
    return queries.list_runs(open_store(db)) == []


def test_wrong_key_is_one_line_naming_the_variable_and_no_run(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000000")
    db = tmp_path / "s.db"
    line = _one_line(_evaluate(db, "--executor-model", "openai/test-model", "--api-base", server.url))
    assert "refused the key in OPENAI_API_KEY (HTTP 401)" in line and server.url in line
    assert "sk-wrong" not in line
    assert server.count == 0 and _no_runs(db)


def test_missing_key_names_the_variable(server, tmp_path, monkeypatch):
    monkeypatch.delenv("MY_EXEC_KEY", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[optimize.executor]\nmodel = "openai/test-model"\napi_base = "{server.url}"\napi_key_env = "MY_EXEC_KEY"\n')
    db = tmp_path / "s.db"
    line = _one_line(_evaluate(db, "--config", str(cfg)))
    assert "MY_EXEC_KEY is not set" in line and "export MY_EXEC_KEY" in line
    assert _no_runs(db)


def test_unknown_model_is_named_with_what_the_server_serves(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key-123456")
    db = tmp_path / "s.db"
    line = _one_line(_evaluate(db, "--executor-model", "openai/no-such-model", "--api-base", server.url))
    assert "does not serve 'no-such-model' (it serves test-model)" in line
    assert _no_runs(db)


def test_unreachable_server_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key-123456")
    url = f"http://127.0.0.1:{_unused_port()}/v1"
    db = tmp_path / "s.db"
    line = _one_line(_evaluate(db, "--executor-model", "openai/test-model", "--api-base", url))
    assert f"cannot reach {url}" in line
    assert _no_runs(db)


def test_no_preflight_skips_the_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key-123456")
    url = f"http://127.0.0.1:{_unused_port()}/v1"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[llm]\nmax_retries = 0\n[rollout]\nworkers = 1\n")
    db = tmp_path / "s.db"
    r = _evaluate(db, "--config", str(cfg), "--executor-model", "openai/test-model", "--api-base", url, "--no-preflight")
    assert "executor model openai/test-model: cannot reach" not in r.output
    assert not _no_runs(db)  # the run was created: nothing stopped it before


def test_optimize_checks_the_optimizer_model_before_creating_a_run(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPT_KEY", "sk-wrong-key-000000")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key-123456")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[optimize]\ndataset = "gsm8k"\n[optimize.optimizer]\nmodel = "openai/test-model"\napi_base = "{server.url}"\n'
        f'api_key_env = "OPT_KEY"\n[optimize.executor]\nmodel = "openai/test-model"\napi_base = "{server.url}"\n'
    )
    db = tmp_path / "s.db"
    r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "o1"])
    line = _one_line(r)
    assert "optimizer model openai/test-model" in line and "refused the key in OPT_KEY" in line
    assert _no_runs(db)


def test_train_checks_its_executor_before_creating_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key-123456")
    url = f"http://127.0.0.1:{_unused_port()}/v1"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[train]\ndatasets = ["gsm8k"]\n[train.executor]\nmodel = "openai/test-model"\napi_base = "{url}"\n')
    db = tmp_path / "s.db"
    line = _one_line(runner.invoke(app, ["train", "--config", str(cfg), "--db", str(db), "--run-id", "t1"]))
    assert f"train executor model openai/test-model: cannot reach {url}" in line
    assert _no_runs(db)


def test_local_models_must_resolve_without_loading(tmp_path):
    check_model(ModelConfig(model="local/smollm2"), role="executor")  # the embedded file exists
    with pytest.raises(UnknownModelError, match="not a model folder or .gguf file"):
        check_model(ModelConfig(model=f"local/{tmp_path}/missing.gguf"), role="executor")
    with pytest.raises(UnknownModelError, match="unknown provider"):
        check_model(ModelConfig(model="nosuchprovider/x"), role="executor")


def test_a_key_refused_during_the_run_stops_it_instead_of_recording_invalid_proposals(tmp_path, monkeypatch):
    """--no-preflight lets the run start; the optimizer's 401 in round 2 then stops it (exit 1,
    status failed, resumable), with no experience recorded as an invalid proposal."""
    from test_optimize_e2e import make_server, write_config

    executor = make_server()
    optimizer = OpenAIServer(api_key="sk-right-key-123456").start()
    try:
        cfg = write_config(tmp_path, executor, rounds=3)
        text = cfg.read_text().replace(f'model = "openai/test-opt"\napi_base = "{executor.url}"',
                                       f'model = "openai/test-opt"\napi_base = "{optimizer.url}"\napi_key_env = "OPT_KEY"')
        cfg.write_text(text)
        monkeypatch.setenv("OPT_KEY", "sk-wrong-key-000000")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
        db = tmp_path / "s.db"
        r = runner.invoke(app, ["optimize", "--config", str(cfg), "--db", str(db), "--run-id", "k401", "--no-preflight"])
        assert r.exit_code == 1, r.output
        assert "401" in r.output.strip().splitlines()[-1]
    finally:
        executor.stop()
        optimizer.stop()
    store = open_store(db)
    run = queries.get_run(store, "k401")
    assert run["status"] == "failed" and "401" in run["message"]
    assert queries.list_experiences(store, run_id="k401") == []
    assert queries.run_state(store, "k401")["completed_round"] == 1
    opt_calls = [c for c in queries.call_totals(store, "k401") if c["role"] == "optimizer"]
    assert [(c["calls"], c["errors"]) for c in opt_calls] == [(1, 1)]  # no retry of a refused key
