"""The Ray backend on a local Ray instance: the same tasks and the same worker function."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

ray = pytest.importorskip("ray")

from helpers.openai_server import OpenAIServer  # noqa: E402

from aflowctl import benchmarks  # noqa: E402
from aflowctl.config import ModelConfig, RolloutConfig  # noqa: E402
from aflowctl.rollout.evaluate import evaluate_workflow  # noqa: E402
from aflowctl.rollout.pool import RolloutPool, TaskSpec  # noqa: E402
from aflowctl.store import open_store  # noqa: E402
from aflowctl.workflow.seeds import seed_workflow  # noqa: E402

pytestmark = [pytest.mark.ray]  # ~20 s with Ray start-up
SELFTEST = "aflowctl.rollout.worker:selftest"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_runs_tasks_durably_and_retries_a_dead_worker(local_ray, tmp_path):
    store = open_store(tmp_path / "ray.db", cached=False)
    cfg = RolloutConfig(executor="ray", workers=2, max_attempts=2)
    log = tmp_path / "log.txt"
    specs = [TaskSpec({"echo": i, "log": str(log), "tag": f"t{i}"}, worker=SELFTEST) for i in range(4)]
    specs.append(TaskSpec({"echo": "once", "crash": "kill", "crash_once": str(tmp_path / "m"), "log": str(log), "tag": "once"},
                          worker=SELFTEST))
    specs.append(TaskSpec({"crash": "error"}, worker=SELFTEST))
    with RolloutPool(store, cfg, options={"load_plugins": ""}) as pool:
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
    opts = {"load_plugins": ""}  # AFLOWCTL_DATA_PATH and AFLOWCTL_HOME are forwarded to the Ray workers
    with OpenAIServer(responder) as srv, RolloutPool(store, cfg, options=opts) as pool:
        res = evaluate_workflow(store, seed_workflow("gsm8k"), dataset="gsm8k", split="validate",
                                executor=ModelConfig(model="openai/m", api_base=srv.url), limit=4, repeats=2, pool=pool)
        assert srv.count == 8
    assert res.scores == [1.0, 1.0] and res.tasks == 2
    details = json.loads(sqlite3.connect(store.path).execute("SELECT details_json FROM evaluations WHERE repeat = 1").fetchone()[0])
    assert [d["score"] for d in details] == [1.0] * 4
    store.dispose()
