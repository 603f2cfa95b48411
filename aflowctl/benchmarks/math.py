"""MATH: competition problems; last ``\\boxed{}`` answer, string/numeric/sympy equivalence."""

from __future__ import annotations

from typing import Any

from aflowctl.benchmarks.base import Benchmark
from aflowctl.benchmarks.scoring import extract_math_answer, score_math


class MATH(Benchmark):
    """AFlow's MATH scorer: the answer is the last ``\\boxed{...}`` (else the last
    sentence) of the prediction and of the reference solution; they match when equal
    as strings, as numbers within 1e-3, or symbolically (sympy's LaTeX parser).
    See docs/benchmarks.md for where this deliberately differs from AFlow."""

    name = "math"
    kind = "math"
    required_fields = ("problem", "solution")

    def inputs(self, problem: dict) -> tuple:
        return (problem["problem"],)

    def expected(self, problem: dict) -> str:
        return extract_math_answer(problem["solution"])

    def score(self, prediction: Any, problem: dict) -> float:
        return score_math(prediction, problem["solution"])
