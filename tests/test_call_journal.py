"""The write-ahead journal of LLM calls: a call that was sent is logged even when its
process is killed with kill -9 (aflowctl/store/calljournal.py).

Real processes killed for real, a loopback OpenAI-compatible server, the real store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.openai_server import OpenAIServer

from aflowctl.errors import StoreError
from aflowctl.store import calljournal, open_store

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import asyncio, sys
    PRICES = {"openai/test-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    from aflowctl.config import LLMConfig, ModelConfig
    from aflowctl.llm.calllog import deferred_logging, flush_logs
    from aflowctl.llm.client import make_llm
    from aflowctl.store import open_store

    store = open_store(sys.argv[1], cached=False)
    llm = make_llm(ModelConfig(model="openai/test-model", api_base=sys.argv[2]), role="executor", run_id="r1",
                   store=store, llm_cfg=LLMConfig(concurrency_per_model=4, max_retries=0, prices=PRICES))

    async def main():
        with deferred_logging(sys.argv[3] == "deferred"):  # the gateway's way: rows committed in the background
            await asyncio.gather(*(llm.generate(f"question {i}") for i in range(12)))
            await flush_logs()

    print("ready", flush=True)
    asyncio.run(main())
    """
)


def _rows(db: Path, sql: str, *args) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _quick_check(db: Path) -> str:
    return _rows(db, "PRAGMA quick_check")[0][0]


def _committed(db: Path) -> int:
    try:
        return _rows(db, "SELECT COUNT(*) FROM llm_calls WHERE cached = 0")[0][0]
    except sqlite3.Error:
        return -1


def _kill_with_calls_in_flight(
    srv: OpenAIServer, proc: subprocess.Popen, db: Path, *, sent: int, in_flight: int
) -> None:
    """SIGKILL once ``sent`` requests reached the server, ``in_flight`` of them are being
    answered and the others' rows are committed: every concurrency slot is then
    waiting on the server, so no call is between its journal entry and the wire."""
    deadline = time.monotonic() + 60

    def ready() -> bool:
        return srv.count == sent and srv.in_flight == in_flight and _committed(db) == sent - in_flight

    while not ready() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        time.sleep(0.005)
    assert srv.count == sent and srv.in_flight == in_flight
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.parametrize("mode", ["deferred", "direct"])
def test_calls_in_flight_at_kill_9_are_recorded_once_on_the_next_open(tmp_path, mode):
    db = tmp_path / "s.db"
    open_store(db, cached=False).dispose()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENAI_API_KEY": "sk-test-not-a-real-key-000000"}
    with OpenAIServer(lambda m, b: "ok", latency_s=0.6) as srv:
        proc = subprocess.Popen(
            [sys.executable, str(driver), str(db), srv.url, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        _kill_with_calls_in_flight(srv, proc, db, sent=8, in_flight=4)  # 4 answered, 4 on the wire
        received = srv.count
    assert received == 8
    assert _rows(db, "SELECT COUNT(*) FROM llm_calls")[0][0] == 4  # the answered ones: the others have no row yet
    assert calljournal.journal_dir(db).is_dir()

    store = open_store(db, cached=False)  # what a resume, `inspect` or `report` does first
    from aflowctl.store import queries

    activity = queries.call_activity(store, "r1")
    assert activity["unpriced"] == 4 and activity["cost_usd"] > 0  # spend shows as "$x + unknown"
    store.dispose()
    rows = _rows(db, "SELECT error, cost_usd, role, provider, model, journal_key, messages_json FROM llm_calls")
    assert len(rows) == received  # every request the server received has exactly one row
    assert len({r[5] for r in rows}) == received and all(r[5] for r in rows)
    interrupted = [r for r in rows if r[0]]
    assert len(interrupted) == 4 and len(rows) - len(interrupted) == 4
    for error, cost, role, provider, model, _, messages in interrupted:
        assert error.startswith("interrupted: the call was in flight when its process was killed")
        assert "its cost is unknown" in error and cost is None  # unknown, never a silent $0
        assert (role, provider, model) == ("executor", "openai", "test-model")
        assert "question" in messages
    assert not calljournal.journal_dir(db).exists()
    assert _quick_check(db) == "ok"
    open_store(db, cached=False).dispose()  # reopening again adds nothing
    assert _rows(db, "SELECT COUNT(*) FROM llm_calls")[0][0] == received


def _entry(key_row: dict) -> dict:
    row = {
        "run_id": "r1",
        "role": "executor",
        "provider": "openai",
        "model": "m",
        "request_hash": "h",
        "sample_index": 0,
        "messages_json": "[]",
        "params_json": "{}",
        "cached": 0,
        "error": "interrupted",
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "latency_s": None,
    }
    row.update(key_row)
    return row


def test_a_live_writers_entries_are_left_alone_and_a_committed_row_is_not_counted_twice(tmp_path):
    db = tmp_path / "s.db"
    store = open_store(db, cached=False)
    journal = calljournal.Journal(db)
    key = journal.begin(_entry({"worst_case_usd": 0.25}))
    assert calljournal.reconcile(store) == 0  # its writer (this process) is alive: nothing to do
    assert _rows(db, "SELECT COUNT(*) FROM llm_calls")[0][0] == 0
    journal.close()  # unsettled: the file stays, unlocked, as after a kill

    def damaged() -> None:  # what open_store passes: the integrity check, before any write
        raise StoreError("the store is damaged", "restore it")

    with pytest.raises(StoreError):
        calljournal.reconcile(store, before_write=damaged)
    assert calljournal.has_entries(db) and _rows(db, "SELECT COUNT(*) FROM llm_calls")[0][0] == 0
    assert calljournal.reconcile(store, before_write=store.check_integrity) == 1
    ((error, cost),) = _rows(db, "SELECT error, cost_usd FROM llm_calls WHERE journal_key = ?", key)
    assert error.endswith("its cost is unknown (at most $0.2500)") and cost is None

    # killed after its row was committed but before the settle line: recorded once
    child = textwrap.dedent(
        f"""
        import os, sqlite3
        from aflowctl.store import calljournal
        j = calljournal.Journal({str(db)!r})
        k = j.begin({_entry({})!r})
        c = sqlite3.connect({str(db)!r})
        c.execute("INSERT INTO llm_calls (provider, model, request_hash, response, created_at, journal_key) "
                  "VALUES ('openai', 'm', 'h', 'answer', 'now', ?)", (k,))
        c.commit()
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    assert calljournal.reconcile(store) == 0
    assert _rows(db, "SELECT COUNT(*), SUM(response = 'answer') FROM llm_calls") == [(2, 1)]
    assert not calljournal.journal_dir(db).exists()
    store.dispose()


def test_settled_entries_leave_no_file_and_segments_rotate(tmp_path, monkeypatch):
    monkeypatch.setattr(calljournal, "SEGMENT_BYTES", 600)
    db = tmp_path / "s.db"
    journal = calljournal.Journal(db)
    keys = [journal.begin(_entry({"request_hash": f"h{i}"})) for i in range(6)]
    files = sorted(journal.dir.iterdir())
    assert len(files) >= 2  # rotated past SEGMENT_BYTES
    journal.settle(keys[:-1])
    assert len(list(journal.dir.iterdir())) == 1  # older segments are gone once settled
    journal.settle(keys[-1:])
    journal.close()
    assert not journal.dir.exists()  # nothing left: the empty folder goes too


def _answers() -> dict:
    from aflowctl import benchmarks

    bench = benchmarks.get("gsm8k")
    return {p["question"]: bench.expected(p) for p in bench.load("validate")[:8]}


@pytest.mark.slow
def test_kill_9_of_aflowctl_evaluate_with_calls_in_flight_then_resume(tmp_path):
    """A real `aflowctl evaluate` (gateway, confined workers) killed with calls in flight:
    reopening records them as interrupted, the resumed run re-sends only those, and in
    the end the server's request count equals the store's non-cached call rows."""
    home = tmp_path / "home"
    exe = shutil.which("aflowctl") or str(Path(sys.executable).parent / "aflowctl")
    answers = _answers()

    def responder(messages, body):
        text = "\n".join(m.get("content") or "" for m in messages)
        return next((f"the answer is {a}" for q, a in answers.items() if q in text), "?")

    env = {**os.environ, "AFLOWCTL_HOME": str(home)}  # AFLOWCTL_DATA_PATH: set by conftest
    cmd = [
        exe,
        "evaluate",
        "--dataset",
        "gsm8k",
        "--limit",
        "8",
        "--executor-model",
        "openai/m",
        "--api-base",
        "URL",
        "--workers",
        "1",
        "--concurrency",
        "4",
        "--no-preflight",
        "--json",
    ]
    db = home / "aflowctl.db"
    with OpenAIServer(responder, latency_s=1.0) as srv:
        cmd[cmd.index("URL")] = srv.url
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _kill_with_calls_in_flight(srv, proc, db, sent=8, in_flight=4)
        killed_after = srv.count
        time.sleep(0.5)
        assert srv.count == killed_after  # the workers died with their parent
        assert _committed(db) == 4  # the answered ones; the 4 in flight have no row yet

        out = subprocess.run([exe, "inspect", "runs", "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        calls = _rows(db, "SELECT error FROM llm_calls WHERE cached = 0")
        assert len(calls) == killed_after == 8
        assert sum(1 for (e,) in calls if e and e.startswith("interrupted")) == 4

        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        total = srv.count
    result = json.loads(res.stdout)
    assert result["n"] == 8 and result["scores"] == [pytest.approx(1.0)]
    assert total == 12  # the 4 interrupted calls were sent again; the 4 answered ones came from the cache
    rows = _rows(db, "SELECT request_hash, sample_index, error, journal_key FROM llm_calls WHERE cached = 0")
    assert len(rows) == total  # completed + interrupted: nothing lost, nothing counted twice
    assert len({r[3] for r in rows}) == total
    answered = [(h, i) for h, i, e, _ in rows if e is None]
    assert len(answered) == len(set(answered)) == 8
    assert _quick_check(db) == "ok"
