"""What a graph.py gets: create_llm_instance, per-problem scopes, usage accounting."""

from __future__ import annotations

import asyncio

import pytest

from aflowctl.errors import WorkflowError
from aflowctl.llm.types import Sample
from aflowctl.workflow import api


class FakeLLM:
    def __init__(self, cost=0.5, delay=0.0):
        self.cost, self.delay, self.kwargs = cost, delay, []

    async def generate(self, prompt, **kw):
        self.kwargs.append(kw)
        await asyncio.sleep(self.delay)
        return Sample(text=f"re: {prompt}", finish_reason="stop", prompt_tokens=2, completion_tokens=3,
                      cost_usd=self.cost, latency_s=self.delay, provider="fake", model="fake")


def test_problem_scopes_are_per_task_and_count_their_own_calls():
    shared = api.create_llm_instance(FakeLLM(delay=0.01))

    async def solve(problem, n_calls):
        with api.problem_context(problem, public_tests=[f"assert candidate({problem['i']})"]) as scope:
            await asyncio.gather(*(shared.generate(f"q{k}") for k in range(n_calls)))
            assert api.current_problem() is scope
            return scope

    async def main():
        return await asyncio.gather(solve({"i": 1, "test": "hidden", "answer": "42"}, 1), solve({"i": 2}, 3))

    a, b = asyncio.run(main())
    assert (a.calls, b.calls) == (1, 3)
    assert a.cost_usd == pytest.approx(0.5) and b.tokens == 15
    assert a.problem == {"i": 1} and a.public_tests == ["assert candidate(1)"]  # answer and eval test removed
    assert shared.calls == 4 and api.current_problem() is None


def test_problem_context_asks_the_benchmark_for_public_tests():
    class Bench:
        name = "toy"

        def public_tests(self, problem):
            return ["assert candidate(%d) == %d" % (problem["x"], problem["x"] + 1)]

    with api.problem_context({"x": 3, "test": "secret"}, benchmark=Bench()) as scope:
        assert scope.public_tests == ["assert candidate(3) == 4"] and scope.dataset == "toy"


def test_usage_summary_cost_manager_and_unknown_costs():
    llm = api.create_llm_instance(FakeLLM(cost=None))
    llm.cost_manager = api.CostManager()
    assert asyncio.run(llm("hi")) == "re: hi"
    s = llm.get_usage_summary()
    assert s["total_cost"] == 0.0 and s["unknown_cost_calls"] == 1 and s["total_tokens"] == 5
    assert llm.cost_manager.total_prompt_tokens == 2

    class W:
        def __init__(self):
            self.llm = llm

    assert api.workflow_usage(W()) == (None, 5)  # unknown cost is None, never a silent 0


def test_seed_is_applied_unless_overridden():
    fake = FakeLLM()
    llm = api.WorkflowLLM(fake, context={"seed": 11})
    asyncio.run(llm.generate("a"))
    asyncio.run(llm.generate("b", seed=2))
    assert [k.get("seed") for k in fake.kwargs] == [11, 2]


def test_callable_llms_and_bad_configs():
    async def plain(prompt):
        return prompt.upper()

    llm = api.create_llm_instance(plain)
    assert asyncio.run(llm("abc")) == "ABC" and asyncio.run(llm.aask("x", system_msgs=None)) == "X"
    again = api.create_llm_instance(llm)
    assert again is not llm and again.client is llm.client and again.calls == 0
    with pytest.raises(WorkflowError, match="cannot use a int"):
        api.create_llm_instance(42)
    with pytest.raises(WorkflowError, match="no executor model"):
        api.create_llm_instance({"kind": "aflowctl.executor"})


def test_api_module_exposes_operators_by_name():
    from aflowctl.workflow.api import Custom, operator  # noqa: F401  (module __getattr__)

    assert Custom.__name__ == "Custom" and operator.ScEnsemble.__name__ == "ScEnsemble"


def test_repeated_identical_requests_get_distinct_seeds():
    """A k-sample ensemble written as a loop must not get the cached first sample k times."""
    import asyncio

    from aflowctl.workflow.api import OCCURRENCE_SEED_STRIDE, WorkflowLLM, problem_context

    seen = []

    class Client:
        model = "fake/x"

        async def generate(self, prompt, **kw):
            seen.append((prompt, kw.get("seed")))

            class S:
                text, prompt_tokens, completion_tokens, cost_usd = "ok", 1, 1, 0.0

            return S()

    llm = WorkflowLLM(Client(), context={"seed": 5})

    async def solve(problem):
        with problem_context({"question": problem}):
            for _ in range(3):
                await llm.generate(f"solve {problem}")

    async def main():
        await asyncio.gather(solve("a"), solve("b"))

    asyncio.run(main())
    by_prompt = {}
    for prompt, seed in seen:
        by_prompt.setdefault(prompt, []).append(seed)
    assert by_prompt["solve a"] == [5, 5 + OCCURRENCE_SEED_STRIDE, 5 + 2 * OCCURRENCE_SEED_STRIDE]
    assert by_prompt["solve b"] == by_prompt["solve a"]  # counted per problem, not across problems
