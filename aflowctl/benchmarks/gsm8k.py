"""GSM8K: grade-school math word problems, scored on the last number (as AFlow)."""

from __future__ import annotations

from typing import Any

from aflowctl.benchmarks.base import Benchmark
from aflowctl.benchmarks.scoring import last_number, score_last_number


class GSM8K(Benchmark):
    """The prediction's last number (commas stripped) against the answer's, within 1e-6.

    AFlow's rows hold the bare answer (``"65,960"``); Hugging Face rows end with
    ``#### 65960``: both work, as the last number of ``answer`` is the gold value.
    """

    name = "gsm8k"
    kind = "math"
    required_fields = ("question", "answer")
    id_field = "id"

    def inputs(self, problem: dict) -> tuple:
        return (problem["question"],)

    def expected(self, problem: dict) -> str:
        value = last_number(problem["answer"])
        if value is None:
            return str(problem["answer"])
        return str(int(value)) if value == int(value) else str(value)

    def score(self, prediction: Any, problem: dict) -> float:
        return score_last_number(prediction, problem["answer"], tol=1e-6)
