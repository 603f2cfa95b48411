"""The problem being solved in the current asyncio task (a ``ContextVar``): what operators
may see of it (answers and evaluation tests removed), its public tests, and the calls,
tokens and cost spent on it; and :func:`worker_view`, all that a rollout worker is
given of a problem."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from aflowctl.llm.types import Usage

#: problem fields never shown to operators (answers and evaluation tests)
HIDDEN_FIELDS = frozenset(
    {
        "test",
        "test_list",
        "challenge_test_list",
        "canonical_solution",
        "code",
        "answer",
        "solution",
        "cot",
        "completion",
        "ref_text",
        "supporting_facts",
        "expected",
        "target",
    }
)


@dataclass
class ProblemScope:
    """The problem being solved in the current asyncio task (see :func:`problem_context`).

    ``problem`` has the answer and evaluation-test fields removed (in a rollout
    worker it is ``{"id", "inputs"}`` only, see :func:`worker_view`); ``public_tests``
    are the assert lines the Test operator may run. LLM calls made inside the scope
    add to its counters, whatever workflow instance makes them.
    """

    problem: dict | None = None
    public_tests: Optional[list[str]] = None
    dataset: Optional[str] = None
    usage: Usage = field(default_factory=Usage)  # the calls made while solving this problem
    occurrences: dict = field(default_factory=dict)  # request key -> times asked (see WorkflowLLM)

    # the counters, read through ``usage``
    calls = property(lambda self: self.usage.calls)
    prompt_tokens = property(lambda self: self.usage.prompt_tokens)
    completion_tokens = property(lambda self: self.usage.completion_tokens)
    cost_usd = property(lambda self: self.usage.cost_usd)
    unknown_cost_calls = property(lambda self: self.usage.unknown_cost_calls)
    tokens = property(lambda self: self.usage.tokens)


_scope: contextvars.ContextVar[Optional[ProblemScope]] = contextvars.ContextVar("aflowctl_problem", default=None)


@contextmanager
def problem_context(
    problem: dict | None = None,
    *,
    public_tests: Optional[list[str]] = None,
    benchmark: Any = None,
    dataset: Optional[str] = None,
) -> Iterator[ProblemScope]:
    """Tell operators which problem the current task is solving.

    The worker wraps each workflow call in it. ``public_tests`` (or, if omitted,
    ``benchmark.public_tests(problem)``, computed here on the trusted side) are what
    the Test operator runs; the evaluation ``test`` field is stripped and never
    reaches an operator. Works per asyncio task (a ``ContextVar``).
    """
    if public_tests is None and benchmark is not None and problem is not None:
        getter = getattr(benchmark, "public_tests", None)
        if callable(getter):
            public_tests = [str(t) for t in (getter(problem) or [])]
    visible = {k: v for k, v in (problem or {}).items() if k not in HIDDEN_FIELDS} if problem is not None else None
    scope = ProblemScope(
        problem=visible,
        public_tests=list(public_tests) if public_tests is not None else None,
        dataset=dataset or getattr(benchmark, "name", None),
    )
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_problem() -> Optional[ProblemScope]:
    return _scope.get()


def worker_view(benchmark: Any, problem: dict, index: int) -> dict:
    """All that a rollout worker, and the workflow code in it, is given of a problem;
    computed by the parent, which keeps the row and scores the answer.

    ``{"index", "id", "inputs", "public_tests"}``: the arguments the workflow is called
    with (``benchmark.inputs``), and the asserts the Test operator may run (none but
    for code benchmarks). Never the row itself: a benchmark's row may hold its answer
    in a field aflowctl cannot know (the arith plugin's ``expression``), and the
    worker cannot read the split's file either (:mod:`aflowctl.sandbox.readable`).
    """
    try:
        pid = str(benchmark.problem_id(problem, index))
    except Exception:  # noqa: BLE001 - a plugin's id function failing is no reason to stop
        pid = str(index)
    getter = getattr(benchmark, "public_tests", None)
    tests = [str(t) for t in (getter(problem) or [])] if callable(getter) else []
    return {"index": int(index), "id": pid, "inputs": list(benchmark.inputs(problem)), "public_tests": tests}
