"""HumanEval: write the function; scored by running ``check(candidate)`` (as AFlow)."""

from __future__ import annotations

import ast
from typing import Any

from aflowctl.benchmarks.coding import CodeBenchmark, top_level_functions
from aflowctl.benchmarks.scoring import CODE_PREAMBLE, sanitize

# AFlow adds the helper the test needs for these problems (the test calls it, and a
# solution may not define it). aflowctl takes the helper from the problem's prompt.
_NEEDS_PROMPT_HELPERS = {"decode_cyclic", "decode_shift", "find_zero"}


class HumanEval(CodeBenchmark):
    name = "humaneval"
    required_fields = ("task_id", "prompt", "entry_point", "test")
    id_field = "task_id"

    def program(self, prediction: Any, problem: dict) -> str:
        entry = problem["entry_point"]
        helpers = ""
        if entry in _NEEDS_PROMPT_HELPERS:
            prompt = problem["prompt"]
            funcs = top_level_functions(prompt)
            imports = []
            try:
                imports = [ast.unparse(n) for n in ast.parse(prompt).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            except SyntaxError:
                pass
            helpers = "\n".join(imports + [src for name, src in funcs.items() if name != entry]) + "\n"
        return CODE_PREAMBLE + "\n" + helpers + "\n" + sanitize(str(prediction or ""), entry) + "\n"

    def expected(self, problem: dict) -> str:
        return self.reference_solution(problem)

    def reference_solution(self, problem: dict) -> str:
        return problem["prompt"] + problem.get("canonical_solution", "")

    def public_tests(self, problem: dict) -> list[str]:
        """Public asserts from ``humaneval_public_test.jsonl``, matched by task id.

        AFlow matched by entry point and so gave none for names used twice (``add``,
        ``solve``...); the five problems absent from the file get none, as in AFlow.
        """
        task_id = problem.get("task_id")
        for row in self.public_rows():
            if row.get("problem_id") == task_id:
                return [str(t) for t in row["test"]]
        return []
