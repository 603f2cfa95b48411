"""HumanEval: write the function; scored by running ``check(candidate)`` (as AFlow)."""

from __future__ import annotations

import ast
from typing import Optional

from aflowctl.benchmarks.code_answers import CODE_PREAMBLE
from aflowctl.benchmarks.coding import CodeBenchmark, top_level_functions

# AFlow adds the helper the test needs for these problems (the test calls it, and a
# solution may not define it). aflowctl takes the helper from the problem's prompt.
_NEEDS_PROMPT_HELPERS = {"decode_cyclic", "decode_shift", "find_zero"}


class HumanEval(CodeBenchmark):
    name = "humaneval"
    required_fields = ("task_id", "prompt", "entry_point", "test")
    id_field = "task_id"

    def prelude(self, problem: dict) -> str:
        """AFlow's preamble plus, for the problems whose test calls a helper of the
        prompt (``encode_cyclic``, ``poly``...), that helper and the prompt's imports."""
        entry = problem["entry_point"]
        helpers = ""
        if entry in _NEEDS_PROMPT_HELPERS:
            prompt = problem["prompt"]
            funcs = top_level_functions(prompt)
            imports = []
            try:
                imports = [
                    ast.unparse(n) for n in ast.parse(prompt).body if isinstance(n, (ast.Import, ast.ImportFrom))
                ]
            except SyntaxError:
                pass
            helpers = "\n".join(imports + [src for name, src in funcs.items() if name != entry]) + "\n"
        return CODE_PREAMBLE + "\n" + helpers

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
                return _usable_public_tests(task_id, [str(t) for t in row["test"]])
        return []


# Deviation from AFlow: asserts of AFlow's humaneval_public_test.jsonl that the reference
# solution fails (wrong expected values, or written for another problem's function) are
# not shown to the Test operator, which would otherwise "repair" correct code. Found by
# running every public assert against every reference solution
# (tests/test_benchmarks_code.py::test_every_humaneval_public_test_passes_with_the_reference_solution).
WRONG_PUBLIC_ASSERTS: dict[str, set[int]] = {
    "HumanEval/41": {0, 1, 2, 3},  # car_race_collision(n) is n*n, not 0
    "HumanEval/47": {1},  # median of that list is 8.0
    "HumanEval/53": {0, 1},  # add(x, y) called with one list
    "HumanEval/116": {0, 1, 2},  # expectations of another sort order
    "HumanEval/148": {1},  # ('Venus') is a string, the function returns a tuple
}


def _usable_public_tests(task_id: Optional[str], tests: list[str]) -> list[str]:
    """Drop known-wrong asserts and asserts that do not parse (HumanEval/33 is cut off)."""
    import ast

    wrong = WRONG_PUBLIC_ASSERTS.get(task_id, set()) if task_id is not None else set()
    out = []
    for i, t in enumerate(tests):
        if i in wrong:
            continue
        try:
            ast.parse(t)
        except SyntaxError:
            continue
        out.append(t)
    return out
