"""What HumanEval and MBPP share: AFlow's code check, run in aflowctl's sandbox."""

from __future__ import annotations

import ast
from typing import Any

from aflowctl.benchmarks import data
from aflowctl.benchmarks.base import Benchmark
from aflowctl.benchmarks.code_answers import CODE_PREAMBLE, sanitize
from aflowctl.errors import BenchmarkError

PUBLIC = "public_test"


class CodeBenchmark(Benchmark):
    """A solution passes when the problem's ``test``, run by the judge against it, passes.

    As in AFlow, the prediction is first sanitised (the longest block of lines that
    parses, reduced to the imports and the definitions reachable from the entry
    point) and runs in a namespace that already has ``math``, ``hashlib``, ``re`` and
    ``typing``'s ``List, Dict, Tuple, Optional, Any``; the wall-clock limit is
    AFlow's 15 s.
    """

    kind = "code"
    timeout_s: float = 15.0
    memory_mb: int = 1024

    def __init__(self) -> None:
        super().__init__()
        self._public: list[dict] | None = None

    def all_splits(self) -> tuple[str, ...]:
        """The problem splits plus ``public_test`` (the public asserts file)."""
        return tuple(self.splits) + (PUBLIC,)

    def validate_rows(self, rows: list[dict], split: str, where: str) -> None:
        if split != PUBLIC:
            return super().validate_rows(rows, split, where)
        if not rows:
            raise BenchmarkError(f"{where} holds no public tests", f"fetch the {PUBLIC} file of {self.name} again")
        for i, row in enumerate(rows, 1):
            if "test" not in row or "entry_point" not in row:
                raise BenchmarkError(
                    f"{where}: row {i} lacks 'test' or 'entry_point'",
                    f"is this really {data.file_name(self.name, PUBLIC)}?",
                )

    def public_rows(self) -> list[dict]:
        """Rows of ``<name>_public_test.jsonl`` ([] when the file is not present)."""
        if self._public is None:
            found = data.find_file(data.file_name(self.name, PUBLIC), self.package_dir)
            if found is None:
                return []
            rows = data.read_jsonl(found[0])
            self.validate_rows(rows, PUBLIC, str(found[0]))
            self._public = rows
        return self._public

    # ------------------------------------------------------------------ checks

    def inputs(self, problem: dict) -> tuple:
        return (problem["prompt"], problem["entry_point"])

    def prelude(self, problem: dict) -> str:
        """Trusted code both sides of the check run first: AFlow's preamble (imports)."""
        return CODE_PREAMBLE

    def program(self, prediction: Any, problem: dict) -> str:
        """The code that is run: the prelude plus the sanitised prediction."""
        return self.prelude(problem) + "\n" + sanitize(str(prediction or ""), problem["entry_point"]) + "\n"

    def check(self, prediction: Any, problem: dict, *, timeout_s: float | None = None):
        """Run the evaluation test on ``prediction``; a sandbox ``SandboxResult``.

        The test runs in the judge process with the trusted prelude, never in the
        process that runs the prediction (docs/sandbox.md), so a prediction that
        redefines a helper the test uses changes only its own copy. Raises
        ``SandboxError`` when the sandbox itself fails (not a wrong answer).
        """
        from aflowctl.sandbox.harness import check_solution

        return check_solution(
            self.program(prediction, problem),
            problem["test"],
            problem["entry_point"],
            timeout_s=timeout_s or self.timeout_s,
            memory_mb=self.memory_mb,
            prelude=self.prelude(problem),
        )

    def score(self, prediction: Any, problem: dict) -> float:
        """1.0 when the check passes, 0.0 when it fails; ``SandboxError`` propagates."""
        return 1.0 if self.check(prediction, problem).ok else 0.0

    def reference_solution(self, problem: dict) -> str:
        raise NotImplementedError


def top_level_functions(source: str) -> dict[str, str]:
    """Top-level function definitions of ``source`` by name (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    return {n.name: ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
