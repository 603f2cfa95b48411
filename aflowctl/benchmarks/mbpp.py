"""MBPP: write the function; scored by running the problem's ``check()`` (as AFlow)."""

from __future__ import annotations

import re

from aflowctl.benchmarks.coding import CodeBenchmark


class MBPP(CodeBenchmark):
    """AFlow's MBPP harness: the ``test`` field defines ``check()`` with the asserts of
    ``test_list`` calling the function by name; it runs after the solution."""

    name = "mbpp"
    required_fields = ("task_id", "prompt", "entry_point", "test")
    id_field = "task_id"

    def expected(self, problem: dict) -> str:
        return self.reference_solution(problem)

    def reference_solution(self, problem: dict) -> str:
        return str(problem.get("code", ""))

    def public_tests(self, problem: dict) -> list[str]:
        """Public asserts from ``mbpp_public_test.jsonl`` (``candidate`` for the function).

        That file is keyed by entry point only. AFlow gave no public test for the
        eight names used by two problems, and five rows of the file are garbled
        (``set(f(x))`` became ``candidate(f(x))``). aflowctl picks the row whose
        asserts belong to this problem's ``test_list``; when none does, it derives
        the public test from the first assert of ``test_list``, as the file intends.
        """
        entry = problem["entry_point"]
        tests = [str(t) for t in problem.get("test_list", [])]
        call = re.compile(r"\bcandidate\(")
        for row in self.public_rows():
            if row.get("entry_point") != entry:
                continue
            asserts = [str(t) for t in row["test"]]
            if not tests or all(call.sub(f"{entry}(", a) in tests for a in asserts):
                return asserts
        if tests:
            return [re.sub(rf"\b{re.escape(entry)}\(", "candidate(", tests[0])]
        return []
