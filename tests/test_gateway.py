"""The LLM gateway: rollout workers hold no secret and call through the parent.

Real spawn workers, the real store, a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.gateway_worker import escapes
from helpers.openai_server import OpenAIServer

from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
from aflowctl.rollout.pool import PRELOAD, RolloutPool, TaskSpec
from aflowctl.store import open_store

# the worker functions are imported before the workers confine themselves (then only
# what is already imported, the interpreter and the benchmark data can be read)
OPTIONS = {"load_plugins": "", "preload": [*PRELOAD, "helpers.gateway_worker"]}
SECRET = "zq-not-a-pattern-" + "7f3a9c21e5b84d06"  # no known key prefix: only its variable's name says it is one
KEY_VAR = "MY_EXECUTOR_CRED"  # no KEY/TOKEN/SECRET in the name either


def _rows(db: Path, sql: str) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv(KEY_VAR, SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-" + "a" * 24)
    yield


def test_workers_start_without_keys_or_store_path(tmp_path, secret_env):
    store = open_store(tmp_path / "s.db", cached=False)
    with RolloutPool(store, RolloutConfig(workers=2), options=OPTIONS) as pool:
        out = pool.run([TaskSpec({"n": i}, worker="helpers.gateway_worker:environ") for i in range(2)])
    store.dispose()
    assert [o.status for o in out] == ["done", "done"], [o.error for o in out]
    for o in out:
        env, proc = o.result["environ"], o.result["proc"]
        blob = json.dumps(env) + proc
        assert SECRET not in blob and "sk-parent-" not in blob
        assert KEY_VAR not in env and "OPENAI_API_KEY" not in env
        assert str(tmp_path) not in blob  # no store path, no parent home
        assert env["AFLOWCTL_HOME"] != os.environ.get("AFLOWCTL_HOME")


def test_workers_share_one_limit_and_the_parent_logs_every_call(tmp_path, secret_env):
    """W workers, one per-model concurrency limit; the key reaches the server through
    the gateway only; a server that echoes the key leaks it nowhere."""
    calls_per_task, tasks = 12, 4

    def responder(messages, body):
        return f"reply to {messages[-1]['content']} with {SECRET}"

    with OpenAIServer(responder, latency_s=0.05, api_key=SECRET) as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        model = ModelConfig(model="openai/test-model", api_base=srv.url, api_key_env=KEY_VAR)
        with RolloutPool(store, RolloutConfig(workers=2), options=OPTIONS) as pool:
            cid = pool.gateway.register(model, run_id=None, llm_cfg=LLMConfig(concurrency_per_model=3))
            out = pool.run([TaskSpec({"tag": f"t{k}", "calls": calls_per_task}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:generate") for k in range(tasks)])
        store.dispose()
        assert [o.status for o in out] == ["done"] * tasks, [o.error for o in out]
        assert len({o.result["pid"] for o in out}) == 2  # both workers made calls
        assert srv.count == calls_per_task * tasks
        assert srv.max_in_flight <= 3  # one limit for all workers, not 3 per worker
        assert all(h == f"Bearer {SECRET}" for h in srv.auth_headers)
    texts = [t for o in out for t in o.result["texts"]]
    assert texts and all(SECRET not in t and "[REDACTED]" in t for t in texts)
    rows = _rows(tmp_path / "s.db", "SELECT response, error, messages_json, params_json FROM llm_calls")
    assert len(rows) == calls_per_task * tasks  # logged by the parent
    assert SECRET not in json.dumps(rows)
    assert SECRET not in json.dumps(_rows(tmp_path / "s.db", "SELECT payload_json, result_json FROM rollout_tasks"))


def test_a_429_storm_is_retried_by_the_gateway(tmp_path):
    with OpenAIServer(lambda m, b: "ok", latency_s=0.01) as srv:
        srv.fail_next([429] * 6)
        store = open_store(tmp_path / "s.db", cached=False)
        model = ModelConfig(model="openai/test-model", api_base=srv.url)
        with RolloutPool(store, RolloutConfig(workers=1), options=OPTIONS) as pool:
            cid = pool.gateway.register(model, llm_cfg=LLMConfig(max_retries=8, backoff_base_s=0.01, backoff_max_s=0.05))
            out = pool.run([TaskSpec({"tag": "s", "calls": 6}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:generate")])
        store.dispose()
    assert out[0].status == "done" and out[0].result["texts"] == ["ok"] * 6
    errors = _rows(tmp_path / "s.db", "SELECT COUNT(*) FROM llm_calls WHERE error IS NOT NULL")[0][0]
    assert errors == 6  # every failed attempt is logged, none became an answer


def test_an_unknown_key_stops_with_a_provider_auth_error(tmp_path, monkeypatch):
    from aflowctl.errors import ProviderAuthError

    monkeypatch.setenv(KEY_VAR, "wrong-key-123456")
    with OpenAIServer(lambda m, b: "ok", api_key=SECRET) as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        model = ModelConfig(model="openai/test-model", api_base=srv.url, api_key_env=KEY_VAR)
        with RolloutPool(store, RolloutConfig(workers=1, max_attempts=3), options=OPTIONS) as pool:
            cid = pool.gateway.register(model, llm_cfg=LLMConfig(max_retries=0))
            out = pool.run([TaskSpec({"tag": "a", "calls": 1}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:generate")])
        store.dispose()
    assert out[0].status == "failed" and out[0].attempts == 1  # not retried: credentials do not fix themselves
    exc = out[0].exception()
    assert isinstance(exc, ProviderAuthError) and "401" in str(exc)


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
    from aflowctl.rollout.pool import PRELOAD, RolloutPool, TaskSpec
    from aflowctl.store import open_store

    if __name__ == "__main__":
        store = open_store(sys.argv[1])
        opts = {"load_plugins": "", "preload": ["aflowctl.rollout.evaluate", "helpers.gateway_worker"]}
        with RolloutPool(store, RolloutConfig(workers=2), options=opts) as pool:
            cid = pool.gateway.register(ModelConfig(model="openai/test-model", api_base=sys.argv[2]),
                                        llm_cfg=LLMConfig(concurrency_per_model=4))
            print("pids", *pool.backend.worker_pids(), flush=True)
            pool.run([TaskSpec({"tag": f"t{k}", "calls": 50}, context={"gateway_client": cid},
                               worker="helpers.gateway_worker:generate") for k in range(4)])
    """
)


def test_kill_9_of_the_parent_leaves_no_worker_sending_calls(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    tests_dir = str(Path(__file__).parent)
    with OpenAIServer(lambda m, b: "ok", latency_s=0.2) as srv:
        proc = subprocess.Popen([sys.executable, str(driver), str(tmp_path / "k.db"), srv.url, tests_dir],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = proc.stdout.readline()
        assert line.startswith("pids"), proc.stderr.read()
        pids = [int(p) for p in line.split()[1:]]
        deadline = time.monotonic() + 60
        while srv.count < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.count >= 8
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.5)  # requests already on the wire arrive
        settled = srv.count
        time.sleep(1.5)
        assert srv.count == settled  # nobody sends anything after the kill
        for pid in pids:  # the workers died with their parent
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_hostile_code_in_a_confined_worker_touches_nothing(tmp_path, secret_env):
    """What graph.py code could try, run in a real confined worker: it reads no key,
    cannot read or write the store, delete a home file, allocate 10 GiB, start sh,
    reach the network, open a socket or connect to another unix socket, or write
    outside its scratch directory."""
    import socket

    from aflowctl.sandbox.confine import capabilities

    if capabilities()["problems"]:
        pytest.skip(f"the sandbox cannot be set up here: {capabilities()['problems'][0]['detail']}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    other = socket.socket(socket.AF_UNIX)  # another service's socket, reachable by anyone
    other_path = tmp_path / "other.sock"
    other.bind(str(other_path))
    other_path.chmod(0o777)
    tmp_path.chmod(0o755)
    other.listen(1)
    home_file = tmp_path / "home" / "precious.txt"
    home_file.parent.mkdir()
    home_file.write_text("keep me")
    outside = tmp_path / "outside.txt"
    db = tmp_path / "s.db"
    store = open_store(db, cached=False)
    before = db.read_bytes()
    with RolloutPool(store, RolloutConfig(workers=1), options=OPTIONS) as pool:
        out = pool.run([TaskSpec({"db": str(db), "home_file": str(home_file), "port": listener.getsockname()[1],
                                  "outside": str(outside), "secret": SECRET, "unix_socket": str(other_path)},
                                 worker="helpers.gateway_worker:hostile")])
    listener.close()
    other.setblocking(False)
    with pytest.raises(BlockingIOError):
        other.accept()  # nobody connected
    other.close()
    assert out[0].status == "done", out[0].error
    res = out[0].result
    assert {"connect_unix_socket", "new_socket", "socketpair_dgram", "repoint_gateway_connection"} <= set(res)
    assert escapes(res) == [], res
    assert home_file.read_text() == "keep me" and not outside.exists()
    assert db.read_bytes()[:100] == before[:100]
    assert SECRET not in json.dumps(res)
    store.dispose()


LOOPING_GRAPH = """
class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.name = name

    async def __call__(self, problem):
        if len(problem) % 2:
            while True:  # a busy loop in synchronous code: no await for asyncio to interrupt
                pass
        return "no idea"
"""


def test_a_busy_loop_ends_that_problem_only_at_problem_timeout_s(tmp_path):
    from aflowctl import benchmarks
    from aflowctl.rollout.evaluate import evaluate_workflow
    from aflowctl.workflow.loader import WorkflowSource

    questions = [p["question"] for p in benchmarks.get("gsm8k").load("validate")[:6]]
    looping = {i for i, q in enumerate(questions) if len(q) % 2}
    assert looping and len(looping) < 6
    store = open_store(tmp_path / "s.db", cached=False)
    t0 = time.monotonic()
    res = evaluate_workflow(store, WorkflowSource(graph=LOOPING_GRAPH, prompt=""), dataset="gsm8k", split="validate",
                            executor="openai/unused", rollout_cfg=RolloutConfig(workers=1, concurrency=6,
                                                                                problem_timeout_s=1.0),
                            limit=6, scope=None)
    assert time.monotonic() - t0 < 60
    store.dispose()
    by_index = {d["index"]: d for d in res.details}
    for i, d in by_index.items():
        assert d["score"] == 0.0
        if i in looping:
            assert d["error"] == "problem timed out after 1 s"  # the workflow's fault: a wrong answer
        else:
            assert d["error"] is None and d["prediction"] == "no idea"  # the others were not disturbed


def test_calls_in_flight_when_the_run_stops_are_logged(tmp_path):
    """Ctrl-C / an error: the pool closes with kill=True while calls are in flight;
    every call the server received has a row (answered, or failed as interrupted)."""
    import threading

    with OpenAIServer(lambda m, b: "ok", latency_s=2.0) as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        pool = RolloutPool(store, RolloutConfig(workers=1), options=OPTIONS)
        pool.start()
        cid = pool.gateway.register(ModelConfig(model="openai/test-model", api_base=srv.url))

        def run() -> None:
            try:
                pool.run([TaskSpec({"tag": "i", "calls": 5}, context={"gateway_client": cid},
                                   worker="helpers.gateway_worker:generate")])
            except Exception:  # noqa: BLE001 - the pool was closed under it, as Ctrl-C does
                pass

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 30
        while srv.count < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.count == 5
        pool.close(kill=True)  # the runner thread (a daemon) may fail or wait: only the rows matter here
        store.dispose()
        rows = _rows(tmp_path / "s.db", "SELECT error FROM llm_calls")
    assert len(rows) == 5
    assert all(r[0] and r[0].startswith("interrupted") for r in rows)


def test_the_budget_is_not_overshot_by_calls_in_flight_in_several_workers(tmp_path):
    """Each call costs exactly its worst case ($0.01); with a $0.05 cap, two workers
    asking for 10 calls each at once get 5 answers in all, not 5 each."""
    from aflowctl.errors import BudgetExceeded

    with OpenAIServer(lambda m, b: {"content": "ok", "completion_tokens": 10, "prompt_tokens": 0}, latency_s=0.3) as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        prices = {"openai/priced-model": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}
        with RolloutPool(store, RolloutConfig(workers=2, max_attempts=1), options=OPTIONS) as pool:
            cid = pool.gateway.register(ModelConfig(model="openai/priced-model", api_base=srv.url, max_tokens=10),
                                        llm_cfg=LLMConfig(budget_usd=0.05, prices=prices, concurrency_per_model=32))
            out = pool.run([TaskSpec({"tag": f"b{k}", "calls": 10}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:generate") for k in range(2)])
        store.dispose()
    assert all(o.status == "failed" for o in out)
    assert all(isinstance(o.exception(), BudgetExceeded) for o in out)
    assert 1 <= srv.count <= 5
    spent = _rows(tmp_path / "s.db", "SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls")[0][0]
    assert spent <= 0.05 + 1e-9


def test_a_worker_whose_gateway_connection_drops_is_replaced_and_its_task_retried(tmp_path):
    """The connection drops under a task: an infrastructure failure (the task is retried
    on a new worker, never scored), and the worker, which cannot reconnect, is replaced."""
    with OpenAIServer(lambda m, b: "ok") as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        with RolloutPool(store, RolloutConfig(workers=1, max_attempts=3), options=OPTIONS) as pool:
            cid = pool.gateway.register(ModelConfig(model="openai/test-model", api_base=srv.url))
            first = pool.backend.worker_pids()[0]
            out = pool.run([TaskSpec({"tag": "d", "drop_in": first}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:drop_gateway")])
            after = pool.run([TaskSpec({"tag": "e", "drop_in": first}, context={"gateway_client": cid},
                                       worker="helpers.gateway_worker:drop_gateway")])
        store.dispose()
    assert out[0].status == "done" and out[0].attempts == 2, out[0].error
    assert out[0].result["pid"] != first and out[0].result["texts"] == ["ok"]
    assert after[0].status == "done" and after[0].attempts == 1  # the new worker serves the next task
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
