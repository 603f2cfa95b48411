"""``aflowctl logs``: every LLM call, newest first, filters and full-text search (FTS5)."""

from __future__ import annotations

import json
import sqlite3
import threading

from helpers.openai_server import openai_server  # noqa: F401,F811 - fixture
from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()


def _llm(server, db, prompt, *extra):
    r = runner.invoke(app, ["llm", "-m", "openai/gpt-4o-mini", prompt, "--api-base", server.url, "--db", str(db), *extra])
    assert r.exit_code == 0, r.output


def _logs(db, *args):
    return runner.invoke(app, ["logs", "--db", str(db), *args])


def _seed(server, db):
    """Four real calls through the router: two runs, two roles' worth of prompts."""
    from aflowctl.store import Run, open_store, utcnow

    store = open_store(db)
    with store.write() as s:
        for rid in ("opt-20260101-000000-aaaa", "opt-20260101-000000-bbbb"):
            s.add(Run(id=rid, kind="optimize", created_at=utcnow(), updated_at=utcnow()))
    _llm(server, db, "What is seventeen times three?", "--run", "opt-20260101-000000-aaaa")
    _llm(server, db, "Name a [tensorboard] fruit", "--run", "opt-20260101-000000-aaaa")
    _llm(server, db, "Solve 17 * 23 \"quoted\"", "--run", "opt-20260101-000000-bbbb")
    _llm(server, db, "plain question without a run")


def test_logs_newest_first_with_filters_and_json(openai_server, tmp_path):
    db = tmp_path / "l.db"
    _seed(openai_server, db)
    r = _logs(db, "--json", "-n", "0")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["prompt"] for x in rows] == ["plain question without a run", 'Solve 17 * 23 "quoted"',
                                          "Name a [tensorboard] fruit", "What is seventeen times three?"]
    first = rows[0]
    for key in ("id", "created_at", "run_id", "role", "model", "prompt_tokens", "completion_tokens", "cost_usd",
                "latency_s", "cached", "error", "prompt", "response", "messages"):
        assert key in first, key
    assert first["model"] == "openai/gpt-4o-mini" and first["role"] == "cli" and first["cost_usd"] > 0
    assert first["response"] == "echo: plain question without a run"

    assert len(json.loads(_logs(db, "--json").stdout)) == 3  # default: the last 3, like llm logs
    assert len(json.loads(_logs(db, "--json", "-n", "1").stdout)) == 1
    only = json.loads(_logs(db, "--json", "--run", "opt-20260101-000000-aaaa").stdout)
    assert [x["prompt"] for x in only] == ["Name a [tensorboard] fruit", "What is seventeen times three?"]
    assert json.loads(_logs(db, "--json", "--role", "executor").stdout) == []
    assert len(json.loads(_logs(db, "--json", "--role", "cli", "-n", "0").stdout)) == 4
    assert len(json.loads(_logs(db, "--json", "--model", "openai/gpt-4o-mini", "-n", "0").stdout)) == 4
    assert len(json.loads(_logs(db, "--json", "--model", "gpt-4o-mini", "-n", "0").stdout)) == 4
    assert json.loads(_logs(db, "--json", "--model", "openai/gpt-4o").stdout) == []

    # text output: header, run/role/tokens/cost, prompt and response; user text is not markup
    r = _logs(db, "--run", "opt-20260101-000000-aaaa", "-n", "1")
    assert r.exit_code == 0
    assert "opt-20260101-000000-aaaa" in r.stdout and "role cli" in r.stdout and "tokens" in r.stdout
    assert "> Name a [tensorboard] fruit" in r.stdout and "< echo: Name a [tensorboard] fruit" in r.stdout
    full = _logs(db, "--full", "-n", "1", "--run", "opt-20260101-000000-bbbb").stdout
    assert "### user" in full and "### response" in full and 'Solve 17 * 23 "quoted"' in full


def test_logs_full_text_search(openai_server, tmp_path):
    db = tmp_path / "l.db"
    _seed(openai_server, db)

    def search(q):
        r = _logs(db, "--json", "-n", "0", "-q", q)
        assert r.exit_code == 0, r.output
        return [x["prompt"] for x in json.loads(r.stdout)]

    assert search("seventeen") == ["What is seventeen times three?"]
    assert search("SEVENTEEN three") == ["What is seventeen times three?"]  # every word, any case
    assert search("seventeen fruit") == []
    assert search("echo") and len(search("echo")) == 4  # responses are searched too
    assert search('17 * 23 "quoted"') == ['Solve 17 * 23 "quoted"']  # FTS operators taken literally
    assert search("AND OR NOT") == []
    assert search("tensorboard") == ["Name a [tensorboard] fruit"]
    # the index is an FTS5 table kept by triggers
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM llm_calls_fts WHERE llm_calls_fts MATCH 'fruit'").fetchone()[0] == 1


def test_migration_indexes_existing_calls(tmp_path):
    """A store written before the FTS migration (6): its calls become searchable."""
    from aflowctl.store import db as dbmod
    from aflowctl.store import migrations, open_store

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    dbmod.migrate(conn, target=5)
    conn.execute("INSERT INTO llm_calls (run_id, role, provider, model, request_hash, messages_json, response, created_at)"
                 " VALUES (NULL, 'executor', 'local', 'smollm2', 'h', ?, 'forty-two', '2026-01-01T00:00:00')",
                 (json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "old\nquestion"}]),))
    conn.execute("INSERT INTO llm_calls (run_id, role, provider, model, request_hash, messages_json, response, created_at)"
                 " VALUES (NULL, 'executor', 'local', 'smollm2', 'h2', 'not json', NULL, '2026-01-01T00:00:01')")
    conn.close()
    store = open_store(path)
    assert store.schema_version() == migrations.SCHEMA_VERSION
    r = _logs(path, "--json", "-q", "question")
    assert [x["response"] for x in json.loads(r.stdout)] == ["forty-two"]
    assert [x["response"] for x in json.loads(_logs(path, "--json", "-q", "brief").stdout)] == ["forty-two"]
    assert len(json.loads(_logs(path, "--json", "-q", "json").stdout)) == 1  # invalid JSON indexed as text


def test_logs_bad_input_and_empty_store(tmp_path):
    db = tmp_path / "e.db"
    r = _logs(db, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = _logs(db)
    assert r.exit_code == 0 and r.stdout == "" and r.stderr.strip() == "no LLM calls logged yet"
    r = _logs(db, "--run", "nope")
    assert r.exit_code == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "run 'nope' does not exist" in lines[0] and "Traceback" not in r.output
    r = _logs(db, "--role", "nobody")
    assert r.exit_code == 0 and len(r.stderr.strip().splitlines()) == 1 and "role nobody" in r.stderr
    r = _logs(db, "-n", "-1")
    assert r.exit_code == 2


def test_unknown_price_is_shown_as_unknown(openai_server, tmp_path):
    db = tmp_path / "u.db"
    r = runner.invoke(app, ["llm", "-m", "openai/my-own-unpriced-model", "hi", "--api-base", openai_server.url,
                            "--db", str(db)])
    assert r.exit_code == 0, r.output
    out = _logs(db).stdout
    assert "cost unknown" in out and "$0.0000" not in out
    calls = runner.invoke(app, ["inspect", "calls", "--db", str(db)]).stdout
    assert "unknown" in calls and "$0.0000" not in calls


def test_logs_reads_while_a_run_writes(tmp_path):
    """A reader sees a consistent, growing log while another connection inserts calls."""
    from aflowctl.store import LLMCall, open_store, utcnow

    db = tmp_path / "w.db"
    store = open_store(db)
    stop = threading.Event()
    written = []

    def writer():
        i = 0
        while not stop.is_set() and i < 400:
            with store.write() as s:
                s.add(LLMCall(run_id=None, role="executor", provider="local", model="smollm2", request_hash=f"h{i}",
                              messages_json=json.dumps([{"role": "user", "content": f"question number {i}"}]),
                              response=f"answer {i}", cost_usd=0.0, created_at=utcnow()))
            written.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        seen = []
        for _ in range(5):
            r = _logs(db, "--json", "-n", "0", "-q", "question")
            assert r.exit_code == 0, r.output
            seen.append(len(json.loads(r.stdout)))
    finally:
        stop.set()
        t.join()
    assert seen == sorted(seen)
    final = json.loads(_logs(db, "--json", "-n", "0", "-q", "question").stdout)
    assert len(final) == len(written) and final[0]["prompt"] == f"question number {written[-1]}"
