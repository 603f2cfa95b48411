"""Descriptions of the built-in operators, as the optimizer prompt shows them.

Each entry: what the operator does, its call interface (keyword arguments, as a
graph.py calls it) and the keys of the dict it returns. Plugins pass their own
description (a string or a dict of the same shape) to ``register``.
"""

from __future__ import annotations

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "Custom": {
        "description": "Sends instruction + input to the executor LLM and returns its raw reply. The most "
        "general operator: the instruction (a prompt_custom constant) decides what it does.",
        "interface": "custom(input: str, instruction: str) -> dict with key 'response'",
    },
    "AnswerGenerate": {
        "description": "Asks the LLM to reason step by step and then state a short final answer; returns both "
        "the reasoning and the answer.",
        "interface": "answer_generate(input: str) -> dict with keys 'thought', 'answer'",
    },
    "CustomCodeGenerate": {
        "description": "Generates a complete Python function named entry_point for the problem, guided by the "
        "instruction; returns only the code.",
        "interface": "custom_code_generate(problem: str, entry_point: str, instruction: str) -> dict with key "
        "'response' (the code)",
    },
    "ScEnsemble": {
        "description": "Self-consistency: shows several candidate solutions to the LLM and returns the one most "
        "consistent with the others (falls back to a majority vote if the choice is unusable).",
        "interface": "sc_ensemble(solutions: list[str], problem: str) -> dict with key 'response'",
    },
    "Programmer": {
        "description": "Writes a Python function solve() for a (math) problem, runs it in a sandbox and returns "
        "the code and its printed result; on an error it retries with the error fed back "
        "(up to 3 attempts). Useful for exact arithmetic.",
        "interface": "programmer(problem: str, analysis: str = 'None') -> dict with keys 'code', 'output'",
    },
    "Test": {
        "description": "Runs the solution against the problem's public test cases in a sandbox; on a failure it "
        "asks the LLM to repair the code and tests again, up to test_loop times. Only public tests "
        "are used, never the evaluation tests.",
        "interface": "test(problem: str, solution: str, entry_point: str, test_loop: int = 3) -> dict with keys "
        "'result' (bool), 'solution' (the final code)",
    },
    "Format": {
        "description": "Extracts the final answer from a worked solution in the concise form the question asks "
        "for (a number, a name, a short phrase).",
        "interface": "format(problem: str, solution: str) -> dict with key 'response'",
    },
    "Review": {
        "description": "Critically checks a solution; returns whether it is judged correct and feedback "
        "explaining what is wrong.",
        "interface": "review(problem: str, solution: str) -> dict with keys 'review_result' (bool), 'feedback'",
    },
    "Revise": {
        "description": "Rewrites a solution according to the feedback (typically Review's) and returns the "
        "improved solution.",
        "interface": "revise(problem: str, solution: str, feedback: str) -> dict with key 'solution'",
    },
    "MdEnsemble": {
        "description": "Medprompt-style ensemble: several votes, each over the candidate solutions in a shuffled "
        "order; returns the most voted solution.",
        "interface": "md_ensemble(solutions: list[str], problem: str) -> dict with key 'solution'",
    },
}
