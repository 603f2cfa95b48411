"""evaluate_workflow end to end: real spawn workers, the seed workflow, a loopback
OpenAI-compatible server as the executor, the real store."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers.answers import answering, benchmark_answers
from helpers.openai_server import OpenAIServer

from aflowctl import benchmarks
from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
from aflowctl.errors import BenchmarkError, WorkflowError
from aflowctl.rollout.evaluate import evaluate_workflow, plan_items
from aflowctl.rollout.pool import RolloutPool
from aflowctl.store import Run, open_store, utcnow
from aflowctl.workflow.loader import WorkflowSource
from aflowctl.workflow.seeds import seed_workflow

N = 6


def gsm8k_answers() -> dict[str, tuple[int, str]]:
    return benchmark_answers("gsm8k", N)


def correct_for_even(answers):
    """Answers the problems with an even index correctly, the others wrongly."""
    return answering(
        answers,
        lambda i: i % 2 == 0,
        right="Reasoning... the answer is {expected}",
        wrong="the answer is -12345",
        unknown="I do not know",
    )


@pytest.fixture
def store(tmp_path):
    st = open_store(tmp_path / "e.db", cached=False)
    yield st
    st.dispose()


def _run_row(store, rid):
    with store.write() as s:
        s.add(Run(id=rid, kind="evaluate", created_at=utcnow(), updated_at=utcnow()))


def test_plan_items_balances_workers_and_keeps_every_item():
    for n, r, w, c in [(200, 1, 1, 32), (200, 1, 2, 16), (50, 5, 2, 32), (7, 3, 4, 2), (1, 1, 2, 8), (1000, 2, 3, 4)]:
        chunks = plan_items(range(n), r, w, c)
        flat = [it for ch in chunks for it in ch]
        assert flat == [(rep, i) for rep in range(r) for i in range(n)]
        assert len(chunks) >= min(w, n * r)
        assert max(len(ch) for ch in chunks) <= max(c * 8, -(-n * r // w))
    assert len(plan_items(range(200), 1, 1, 32)) == 1  # one task: no tail between tasks
    assert [len(c) for c in plan_items(range(200), 1, 2, 16)] == [100, 100]
    assert plan_items(range(10), 1, 1, 2, chunk_size=3)[-1] == [(0, 9)]


def test_seed_workflow_end_to_end(store):
    answers = gsm8k_answers()
    _run_row(store, "eval-e2e")
    with OpenAIServer(correct_for_even(answers), latency_s=0.02) as srv:
        seen = []
        res = evaluate_workflow(
            store, seed_workflow("gsm8k"), dataset="gsm8k", split="validate",
            executor=ModelConfig(model="openai/test-model", api_base=srv.url), llm_cfg=LLMConfig(),
            rollout_cfg=RolloutConfig(workers=2, concurrency=4), repeats=2, limit=N, run_id="eval-e2e", seed=7,
            progress=seen.append,
        )
        requests = list(srv.requests)
    assert res.scores == [0.5, 0.5] and res.mean_score == 0.5 and res.std == 0.0 and res.n == N
    assert len(res.details) == 2 * N and res.errors == 0
    by_index = {(d["repeat"], d["index"]): d for d in res.details}
    for (rep, i), d in by_index.items():
        assert d["score"] == (1.0 if i % 2 == 0 else 0.0)
        assert d["tokens"] > 0 and d["calls"] == 1 and d["error"] is None
        assert d["id"] == benchmarks.get("gsm8k").problem_id(benchmarks.get("gsm8k").load("validate")[i], i)
    assert res.tokens == sum(d["tokens"] for d in res.details)
    assert res.cost_usd is None  # the loopback model has no price: unknown, never a silent 0
    # repeats sample with different seeds (one seed per repeat)
    assert len(requests) == 2 * N
    assert len({r.get("seed") for r in requests}) == 2
    # one evaluations row per repeat, with per-problem details
    conn = sqlite3.connect(store.path)
    rows = conn.execute("SELECT id, run_id, dataset, split, repeat, score, n, tokens, details_json FROM evaluations ORDER BY repeat").fetchall()
    assert [r[0] for r in rows] == res.evaluation_ids
    assert [(r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows] == [("eval-e2e", "gsm8k", "validate", k, 0.5, N) for k in range(2)]
    details = json.loads(rows[0][8])
    assert [d["index"] for d in details] == list(range(N)) and "prediction" in details[0]
    # the executor's calls were logged by the LLM layer inside the workers
    calls = conn.execute("SELECT role, run_id, COUNT(*) FROM llm_calls GROUP BY role, run_id").fetchall()
    assert calls == [("executor", "eval-e2e", 2 * N)]
    tasks = conn.execute("SELECT status, attempts, run_id FROM rollout_tasks").fetchall()
    assert len(tasks) == res.tasks >= 2 and all(t == ("done", 1, "eval-e2e") for t in tasks)
    conn.close()
    assert seen[-1].done == seen[-1].total == 2 * N and seen[-1].mean_so_far == 0.5


RAISING_GRAPH = '''
import workspace.GSM8K.workflows.template.operator as operator
import workspace.GSM8K.workflows.round_1.prompt as prompt_custom
from scripts.async_llm import create_llm_instance


class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.llm = create_llm_instance(llm_config)
        self.custom = operator.Custom(self.llm)

    async def __call__(self, problem):
        if len(problem) % 3 == 0:
            raise RuntimeError("boom on this problem")
        out = await self.custom(input=problem, instruction=prompt_custom.SOLVE_PROMPT)
        return out["response"], self.llm.get_usage_summary()["total_cost"]
'''


def test_a_workflow_exception_scores_that_problem_zero(store):
    answers = gsm8k_answers()
    src = WorkflowSource(graph=RAISING_GRAPH, prompt=seed_workflow("gsm8k").prompt)
    with OpenAIServer(correct_for_even(answers), latency_s=0.0) as srv, RolloutPool(store, RolloutConfig(workers=1, concurrency=3)) as pool:
        res = evaluate_workflow(store, src, dataset="gsm8k", split="validate", executor=ModelConfig(model="openai/m", api_base=srv.url),
                                limit=N, pool=pool, store_rows=False)
        # the same pool serves a second evaluation (the optimizer reuses one pool per run)
        again = evaluate_workflow(store, src, dataset="gsm8k", split="validate", executor=ModelConfig(model="openai/m", api_base=srv.url),
                                  indices=[0, 1], pool=pool, seed=1, store_rows=False)
    problems = benchmarks.get("gsm8k").load("validate")[:N]
    boom = {i for i, p in enumerate(problems) if len(p["question"]) % 3 == 0}
    for d in res.details:
        if d["index"] in boom:
            assert d["score"] == 0.0 and d["error"] == "RuntimeError: boom on this problem" and d["calls"] == 0
        else:
            assert d["error"] is None and d["score"] == (1.0 if d["index"] % 2 == 0 else 0.0)
    assert res.errors == len(boom)
    assert res.evaluation_ids == [] and again.n == 2
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 0


def test_bad_inputs_raise_before_anything_runs(store):
    ex = ModelConfig(model="openai/m", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'.*gsm8k"):
        evaluate_workflow(store, seed_workflow("gsm8k"), dataset="nope", split="validate", executor=ex)
    with pytest.raises(BenchmarkError, match="aflowctl data fetch hotpotqa"):
        evaluate_workflow(store, seed_workflow("hotpotqa"), dataset="hotpotqa", split="test", executor=ex)
    with pytest.raises(BenchmarkError, match=r"problem index 99999 is out of range for gsm8k/validate"):
        evaluate_workflow(store, seed_workflow("gsm8k"), dataset="gsm8k", split="validate", executor=ex, indices=[0, 99999])
    with pytest.raises(WorkflowError, match="syntax error"):
        evaluate_workflow(store, WorkflowSource(graph="class Workflow(:\n", prompt=""), dataset="gsm8k", split="validate", executor=ex)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT COUNT(*) FROM rollout_tasks").fetchone()[0] == 0
    conn.close()


def test_code_that_fails_to_load_in_the_worker_fails_the_evaluation(store):
    # passes the AST check in the parent, fails when the worker executes it
    src = WorkflowSource(graph="import json\nclass Workflow:\n    def __init__(self, name, llm_config, dataset):\n        pass\n"
                               "    async def __call__(self, problem):\n        return problem, 0.0\n1/0\n", prompt="")
    with pytest.raises(WorkflowError, match="ZeroDivisionError"):
        evaluate_workflow(store, src, dataset="gsm8k", split="validate", executor=ModelConfig(model="openai/m"), limit=2,
                          rollout_cfg=RolloutConfig(workers=1))
    row = sqlite3.connect(store.path).execute("SELECT status, attempts, error FROM rollout_tasks").fetchone()
    assert row[0] == "failed" and row[1] == 1 and "ZeroDivisionError" in row[2]


def test_finished_tasks_are_reused_within_a_run_not_across_runs(store):
    answers = gsm8k_answers()
    for rid in ("run-a", "run-b"):
        _run_row(store, rid)
    ex_cfg = dict(dataset="gsm8k", split="validate", limit=3, rollout_cfg=RolloutConfig(workers=1, concurrency=3))
    with OpenAIServer(correct_for_even(answers)) as srv, RolloutPool(store, RolloutConfig(workers=1, concurrency=3)) as pool:
        ex = ModelConfig(model="openai/m", api_base=srv.url)
        a = evaluate_workflow(store, seed_workflow("gsm8k"), executor=ex, run_id="run-a", workflow_id=None, pool=pool, **ex_cfg)
        assert srv.count == 3 and a.tasks_reused == 0
        b = evaluate_workflow(store, seed_workflow("gsm8k"), executor=ex, run_id="run-b", pool=pool, **ex_cfg)
        assert srv.count == 6 and b.tasks_reused == 0  # another run pays for (and logs) its own calls
        a2 = evaluate_workflow(store, seed_workflow("gsm8k"), executor=ex, run_id="run-a", pool=pool, **ex_cfg)
        assert srv.count == 6 and a2.tasks_reused == a2.tasks == 1  # the same run (resumed) reuses its work
    assert a.scores == b.scores == a2.scores == [pytest.approx(2 / 3)]
    conn = sqlite3.connect(store.path)
    assert dict(conn.execute("SELECT run_id, COUNT(*) FROM llm_calls GROUP BY run_id").fetchall()) == {"run-a": 3, "run-b": 3}
    conn.close()
