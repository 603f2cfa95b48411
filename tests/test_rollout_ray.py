"""The Ray backend on a local Ray instance: the same tasks and the same worker function,
and the same gateway: Ray workers hold no key, every call goes through the driver.

One Ray instance for the module (start-up is slow on 2 cores), started while the
driver's environment holds a key, as a user's would."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from helpers.openai_server import OpenAIServer  # noqa: E402

from aflowctl import benchmarks  # noqa: E402
from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig  # noqa: E402
from aflowctl.rollout.evaluate import evaluate_workflow  # noqa: E402
from aflowctl.rollout.pool import PRELOAD, RolloutPool, TaskSpec  # noqa: E402
from aflowctl.store import open_store  # noqa: E402
from aflowctl.workflow.seeds import seed_workflow  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~60 s with Ray start-up on 2 cores
SELFTEST = "aflowctl.rollout.worker:selftest"
TESTS = str(Path(__file__).parent)
SECRET = "zq-not-a-pattern-" + "5e0c7d19a3b84f62"
KEY_VAR = "MY_EXECUTOR_CRED"  # a model's api_key_env
# the children import the test helpers (tests/ on their path) before they confine themselves
OPTIONS = {"load_plugins": "", "preload": [*PRELOAD, "helpers.gateway_worker"], "env": {"PYTHONPATH": TESTS}}


def _rows(db: Path, sql: str) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance that inherits a driver environment holding keys."""
    saved = {k: os.environ.get(k) for k in (KEY_VAR, "OPENAI_API_KEY")}
    os.environ[KEY_VAR] = SECRET
    os.environ["OPENAI_API_KEY"] = "sk-driver-" + "b" * 24
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_ray_backend_runs_tasks_durably_and_retries_a_dead_worker(local_ray, tmp_path):
    store = open_store(tmp_path / "ray.db", cached=False)
    cfg = RolloutConfig(executor="ray", workers=2, max_attempts=2)
    log = tmp_path / "log.txt"
    specs = [TaskSpec({"echo": i, "log": str(log), "tag": f"t{i}"}, worker=SELFTEST) for i in range(4)]
    specs.append(TaskSpec({"echo": "once", "crash": "kill", "crash_once": str(tmp_path / "m"), "log": str(log), "tag": "once"},
                          worker=SELFTEST))
    specs.append(TaskSpec({"crash": "error"}, worker=SELFTEST))
    with RolloutPool(store, cfg, options={"load_plugins": "", "confine": False}) as pool:  # writes tmp_path
        assert pool.startup_s is not None
        out = pool.run(specs)
        assert [o.status for o in out] == ["done"] * 5 + ["failed"]
        assert [o.result["echo"] for o in out[:5]] == [0, 1, 2, 3, "once"]
        assert {o.result["pid"] for o in out[:5]}.isdisjoint({os.getpid()})  # ran in Ray workers
        assert out[4].attempts == 2 and "Ray worker died" not in (out[4].error or "")
        assert out[5].error.startswith("selftest asked to fail") and out[5].attempts == 1
        again = pool.run(specs[:5])
        assert all(o.reused for o in again)
    assert ray.is_initialized()  # a Ray instance the pool did not start is left running
    tags = [line.split()[1] for line in log.read_text().splitlines()]
    assert sorted(tags) == ["once", "once", "t0", "t1", "t2", "t3"]
    rows = sqlite3.connect(store.path).execute("SELECT status, COUNT(*) FROM rollout_tasks GROUP BY status").fetchall()
    assert dict(rows) == {"done": 5, "failed": 1}
    store.dispose()


def test_evaluate_on_ray(local_ray, tmp_path):
    bench = benchmarks.get("gsm8k")
    probs = bench.load("validate")[:4]
    answers = {p["question"]: bench.expected(p) for p in probs}

    def responder(messages, body):
        text = "\n".join(m.get("content") or "" for m in messages)
        return next((f"answer {a}" for q, a in answers.items() if q in text), "?")

    store = open_store(tmp_path / "ray_eval.db", cached=False)
    cfg = RolloutConfig(executor="ray", workers=2, concurrency=2)
    # the path of a node other than the driver's: relay -> proxy actor -> gateway (forced on this one node)
    opts = {"load_plugins": "", "ray_relay": True}
    with OpenAIServer(responder) as srv, RolloutPool(store, cfg, options=opts) as pool:
        res = evaluate_workflow(store, seed_workflow("gsm8k"), dataset="gsm8k", split="validate",
                                executor=ModelConfig(model="openai/m", api_base=srv.url), limit=4, repeats=2, pool=pool)
        assert srv.count == 8
        assert ray.get(pool.backend.proxy.count.remote()) >= 8  # every call went through the proxy actor
    assert res.scores == [1.0, 1.0] and res.tasks == 2
    rows = _rows(store.path, "SELECT model, error FROM llm_calls")
    assert len(rows) == srv.count and all(e is None for _, e in rows)  # each call logged once, by the driver
    details = json.loads(sqlite3.connect(store.path).execute("SELECT details_json FROM evaluations WHERE repeat = 1").fetchone()[0])
    assert [d["score"] for d in details] == [1.0] * 4
    store.dispose()


def test_ray_workers_share_the_drivers_budget(local_ray, tmp_path):
    """Each call costs exactly its worst case ($0.01); with a $0.05 cap, two Ray
    workers asking for 10 calls each at once get 5 answers in all, not 5 each."""
    from aflowctl.errors import BudgetExceeded

    with OpenAIServer(lambda m, b: {"content": "ok", "completion_tokens": 10, "prompt_tokens": 0}, latency_s=0.3) as srv:
        store = open_store(tmp_path / "s.db", cached=False)
        prices = {"openai/priced-model": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}
        cfg = RolloutConfig(executor="ray", workers=2, max_attempts=1)
        with RolloutPool(store, cfg, options={**OPTIONS, "ray_relay": True}) as pool:  # through the proxy actor
            cid = pool.gateway.register(ModelConfig(model="openai/priced-model", api_base=srv.url, max_tokens=10),
                                        llm_cfg=LLMConfig(budget_usd=0.05, prices=prices, concurrency_per_model=32))
            out = pool.run([TaskSpec({"tag": f"b{k}", "calls": 10}, context={"gateway_client": cid},
                                     worker="helpers.gateway_worker:generate") for k in range(2)])
            assert ray.get(pool.backend.proxy.count.remote()) >= srv.count
        store.dispose()
    assert all(o.status == "failed" for o in out), [o.error for o in out]
    assert all(isinstance(o.exception(), BudgetExceeded) for o in out)
    assert 1 <= srv.count <= 5
    assert _rows(tmp_path / "s.db", "SELECT COUNT(*) FROM llm_calls")[0][0] == srv.count
    spent = _rows(tmp_path / "s.db", "SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls")[0][0]
    assert spent <= 0.05 + 1e-9


def test_workflow_code_on_ray_reads_no_key_and_is_confined(local_ray, tmp_path):
    """What graph.py code sees on a Ray node: no key in os.environ or /proc/self/environ,
    no store path; confined (no /proc, no network, no sh, no writes outside scratch).
    The key reaches the server through the driver's gateway only."""
    from aflowctl.sandbox.confine import capabilities

    confined = not capabilities()["problems"]
    db = tmp_path / "s.db"
    store = open_store(db, cached=False)
    home_file = tmp_path / "home" / "precious.txt"
    home_file.parent.mkdir()
    home_file.write_text("keep me")
    outside = tmp_path / "outside.txt"
    cfg = RolloutConfig(executor="ray", workers=1, allow_unsandboxed=not confined)
    with OpenAIServer(lambda m, b: "ok", api_key=SECRET) as srv:
        model = ModelConfig(model="openai/test-model", api_base=srv.url, api_key_env=KEY_VAR)
        with RolloutPool(store, cfg, options=OPTIONS) as pool:
            cid = pool.gateway.register(model)
            specs = [TaskSpec({}, worker="helpers.gateway_worker:environ"),
                     TaskSpec({"tag": "k", "calls": 2}, context={"gateway_client": cid},
                              worker="helpers.gateway_worker:generate")]
            if confined:
                specs.append(TaskSpec({"db": str(db), "home_file": str(home_file), "port": 9, "outside": str(outside),
                                       "secret": SECRET}, worker="helpers.gateway_worker:hostile"))
            out = pool.run(specs)
            runtime_env = pool.backend.runtime_env
            assert ray.get(pool.backend.proxy.count.remote()) == 0  # the driver's node: straight to the gateway
        assert srv.count == 2 and all(h == f"Bearer {SECRET}" for h in srv.auth_headers)
    store.dispose()
    assert [o.status for o in out] == ["done"] * len(specs), [o.error for o in out]
    env, proc = out[0].result["environ"], out[0].result["proc"]
    blob = json.dumps(env) + proc
    assert SECRET not in blob and "sk-driver-" not in blob and str(tmp_path) not in blob
    assert KEY_VAR not in env and "OPENAI_API_KEY" not in env
    if confined:
        assert proc.startswith("unreadable")  # no /proc at all once confined
        for name, outcome in out[2].result.items():
            assert outcome.startswith("ok") == (name == "write_scratch"), (name, outcome)
        assert home_file.read_text() == "keep me" and not outside.exists()
    # the Ray worker processes themselves (trusted code only) start with the key variables blanked
    assert runtime_env["env_vars"][KEY_VAR] == "" and runtime_env["env_vars"]["OPENAI_API_KEY"] == ""

    def own_environ() -> str:
        with open("/proc/self/environ", "rb") as fh:
            return fh.read().decode(errors="replace")

    seen = ray.get(ray.remote(own_environ).options(runtime_env=runtime_env).remote())
    assert SECRET not in seen and "sk-driver-" not in seen and f"{KEY_VAR}=" in seen


def test_a_node_that_cannot_confine_refuses_unless_allow_unsandboxed(local_ray, tmp_path):
    """The rule of the process backend on a Ray node: no sandbox user -> one clear line
    at start-up; with rollout.allow_unsandboxed = true the tasks run."""
    from aflowctl.rollout.backend import RolloutError

    if os.geteuid() != 0:
        pytest.skip("only root drops to a sandbox user")
    store = open_store(tmp_path / "s.db", cached=False)
    opts = {"load_plugins": "", "env": {"AFLOWCTL_SANDBOX_USER": "no-such-user-xyz"}}
    with pytest.raises(RolloutError) as err:
        with RolloutPool(store, RolloutConfig(executor="ray", workers=1), options=opts):
            pass
    text = str(err.value)
    assert "\n" not in text and "no-such-user-xyz" in text and "rollout.allow_unsandboxed" in text, text
    with RolloutPool(store, RolloutConfig(executor="ray", workers=1, allow_unsandboxed=True), options=opts) as pool:
        out = pool.run([TaskSpec({"echo": "unsandboxed"}, worker=SELFTEST)])
    assert out[0].status == "done" and out[0].result["echo"] == "unsandboxed"
    store.dispose()


def test_a_task_past_its_timeout_takes_its_sandboxed_child_with_it(local_ray, tmp_path):
    """ray.cancel(force=True) kills the Ray worker; the kernel kills the child running the
    workflow code with it (PR_SET_PDEATHSIG): nothing of the task goes on."""
    import time

    store = open_store(tmp_path / "s.db", cached=False)
    log = tmp_path / "log.txt"
    cfg = RolloutConfig(executor="ray", workers=1, max_attempts=1, task_timeout_s=8)
    with RolloutPool(store, cfg, options={"load_plugins": "", "confine": False}) as pool:  # writes tmp_path
        out = pool.run([TaskSpec({"sleep": 120, "log": str(log), "tag": "slow"}, worker=SELFTEST)])
    store.dispose()
    assert out[0].status == "failed" and "timed out after 8 s" in (out[0].error or "")
    child = int(log.read_text().split()[0])
    assert child != os.getpid()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}")  # not even a zombie: its parent died too


def test_a_ray_client_address_is_refused_in_one_line(tmp_path):
    """The gateway proxy must run on the driver's node: a ray:// client has none."""
    from aflowctl.rollout.backend import RolloutError

    store = open_store(tmp_path / "s.db", cached=False)
    pool = RolloutPool(store, RolloutConfig(executor="ray", ray_address="ray://127.0.0.1:1"), options={"load_plugins": ""})
    with pytest.raises(RolloutError) as err:
        pool.start()
    assert "ray://127.0.0.1:1" in str(err.value) and "\n" not in str(err.value)
    assert "HOST:6379" in (err.value.hint or "")
    assert pool.gateway is None  # the failed start closed the gateway it had started
    store.dispose()


BUSY_GRAPH = """
class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.name = name

    async def __call__(self, problem):
        if len(problem) % 2:
            while True:  # synchronous: only the child's SIGALRM watchdog can end it
                pass
        return "no idea"
"""


def test_problem_timeout_s_ends_a_busy_loop_in_the_ray_child(local_ray, tmp_path):
    import time

    from aflowctl.workflow.loader import WorkflowSource

    questions = [p["question"] for p in benchmarks.get("gsm8k").load("validate")[:6]]
    looping = {i for i, q in enumerate(questions) if len(q) % 2}
    assert looping and len(looping) < 6
    store = open_store(tmp_path / "s.db", cached=False)
    t0 = time.monotonic()
    res = evaluate_workflow(store, WorkflowSource(graph=BUSY_GRAPH, prompt=""), dataset="gsm8k", split="validate",
                            executor="openai/unused", limit=6, scope=None,
                            rollout_cfg=RolloutConfig(executor="ray", workers=1, concurrency=6, problem_timeout_s=1.0))
    assert time.monotonic() - t0 < 60
    store.dispose()
    for d in res.details:
        assert d["score"] == 0.0
        assert d["error"] == ("problem timed out after 1 s" if d["index"] in looping else None), d
