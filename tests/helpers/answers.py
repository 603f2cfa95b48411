"""A responder for :class:`helpers.openai_server.OpenAIServer` that knows the answers of
benchmark problems and answers a chosen subset of them correctly."""

from __future__ import annotations

from collections.abc import Callable


def benchmark_answers(name: str, n: int, split: str = "validate") -> dict[str, tuple[int, str]]:
    """question -> (index, expected answer) of the first ``n`` problems of a split."""
    from aflowctl import benchmarks

    bench = benchmarks.get(name)
    return {p["question"]: (i, bench.expected(p)) for i, p in enumerate(bench.load(split)[:n])}


def answering(
    answers: dict[str, tuple[int, str]], correct: Callable[[int], bool], *, right: str, wrong: str, unknown: str
):
    """Reply ``right`` (formatted with ``expected``) to the problems whose index ``correct``
    accepts, ``wrong`` to the other known ones, ``unknown`` to anything else."""

    def responder(messages, body):
        text = "\n".join(m.get("content") or "" for m in messages)
        for q, (i, expected) in answers.items():
            if q in text:
                return right.format(expected=expected) if correct(i) else wrong
        return unknown

    return responder
