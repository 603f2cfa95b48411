"""HotpotQA: multi-hop questions over given paragraphs, scored by token F1 (as AFlow)."""

from __future__ import annotations

from typing import Any

from aflowctl.benchmarks.base import Benchmark
from aflowctl.benchmarks.scoring import f1_score


class HotpotQA(Benchmark):
    """The workflow sees AFlow's input: the context paragraphs, then the question.

    Score: SQuAD-normalised token F1 between the prediction and ``answer``."""

    name = "hotpotqa"
    kind = "qa"
    required_fields = ("question", "answer", "context")
    id_field = "_id"

    def inputs(self, problem: dict) -> tuple:
        paragraphs = [item[1] for item in problem["context"] if isinstance(item[1], list)]
        context = "\n".join(" ".join(p) for p in paragraphs)
        return (f"Context: {context}\n\nQuestion: {problem['question']}\n\nAnswer:",)

    def expected(self, problem: dict) -> str:
        return str(problem["answer"])

    def score(self, prediction: Any, problem: dict) -> float:
        return f1_score(str(prediction), str(problem["answer"]))
