"""``aflowctl llm`` through Typer's CliRunner against the loopback server."""

from __future__ import annotations

import json
import sqlite3

from helpers.openai_server import openai_server  # noqa: F401 - fixture
from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()


def test_llm_prints_the_answer_and_logs_the_call(openai_server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_BASE", openai_server.url)
    db = tmp_path / "cli.db"
    res = runner.invoke(app, ["llm", "-m", "openai/gpt-4o-mini", "hello cli", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "echo: hello cli"
    row = sqlite3.connect(db).execute("SELECT role, provider, model, response FROM llm_calls").fetchone()
    assert row == ("cli", "openai", "gpt-4o-mini", "echo: hello cli")


def test_llm_json_system_temperature_max_tokens(openai_server, tmp_path):
    res = runner.invoke(
        app,
        ["llm", "-m", "openai/gpt-4o-mini", "q", "--json", "--system", "sys", "--temperature", "0.3",
         "--max-tokens", "7", "--api-base", openai_server.url, "--db", str(tmp_path / "c.db")],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["text"] == "echo: q" and out["model"] == "openai/gpt-4o-mini"
    assert out["prompt_tokens"] == 2 and out["completion_tokens"] == 2 and out["cost_usd"] > 0
    assert out["latency_s"] >= 0 and out["cached"] is False
    body = openai_server.requests[-1]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 7 and body["messages"][0]["content"] == "sys"


def test_llm_bad_input_is_one_clear_line(tmp_path, monkeypatch):
    db = ["--db", str(tmp_path / "c.db")]
    res = runner.invoke(app, ["llm", "-m", "nosuch/x", "hi", *db])
    assert res.exit_code == 1
    assert "Error: unknown provider 'nosuch'" in res.stderr and "openai" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["llm", "-m", "gpt-4o", "hi", *db])
    assert res.exit_code == 1 and "malformed model string 'gpt-4o'" in res.stderr
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    res = runner.invoke(app, ["llm", "-m", "openai/gpt-4o-mini", "hi", *db])
    assert res.exit_code == 1 and "OPENAI_API_KEY is not set" in res.stderr
    res = runner.invoke(app, ["llm", "-m", "openai/gpt-4o-mini", "hi", "--cache", "sometimes", *db])
    assert res.exit_code == 2 and "--cache must be one of" in res.stderr


def test_llm_budget_flag(openai_server, tmp_path):
    res = runner.invoke(
        app,
        ["llm", "-m", "openai/gpt-4o-mini", "hi", "--api-base", openai_server.url, "--budget-usd", "0.000001",
         "--max-tokens", "1000", "--db", str(tmp_path / "c.db")],
    )
    assert res.exit_code == 1 and "budget of $0.0000" in res.stderr and "--budget-usd" in res.stderr
    assert openai_server.count == 0
