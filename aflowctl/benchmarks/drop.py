"""DROP: discrete reasoning over paragraphs, scored by token F1 (as AFlow)."""

from __future__ import annotations

from typing import Any

from aflowctl.benchmarks.base import Benchmark
from aflowctl.benchmarks.scoring import drop_f1


class DROP(Benchmark):
    """The workflow sees ``context`` (passage, question and "Answer:" already joined).

    Score: the best SQuAD-normalised token F1 over the ``|``-separated gold answers of
    ``ref_text`` and the ``|``-separated parts of the prediction."""

    name = "drop"
    kind = "qa"
    required_fields = ("context", "ref_text")
    id_field = "id"

    def inputs(self, problem: dict) -> tuple:
        return (problem["context"],)

    def expected(self, problem: dict) -> str:
        return str(problem["ref_text"])

    def score(self, prediction: Any, problem: dict) -> float:
        return drop_f1(str(prediction), str(problem["ref_text"]))
