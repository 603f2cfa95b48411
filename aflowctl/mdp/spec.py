"""The pipeline spec behind the edit language: read it from a workflow, compile it to code.

A workflow written by an edit (or by ``mutate``) is generated from a small pipeline
description, kept as the ``WORKFLOW_SPEC`` literal in graph.py so that the next edit
can read it back:

    answer step (Custom | AnswerGenerate | CustomCodeGenerate, with an instruction)
    -> optional k-sample self-consistency ensemble (ScEnsemble)
    -> optional Programmer step (math)          -> optional Test step (code)
    -> optional Review/Revise step

:func:`render` compiles a spec deterministically into an ordinary graph.py/prompt.py
(the import lines are the parent's own). A parent without ``WORKFLOW_SPEC`` (a seed,
or an LLM-written workflow) is read as the plain answer step of its kind, with its
first prompt constant as the instruction (:func:`read_spec`); :func:`spec_literal`
says whether a workflow carries a spec at all.
"""

from __future__ import annotations

import ast
import pprint
from collections.abc import Sequence
from dataclasses import asdict, dataclass

INSTRUCTIONS: dict[str, list[str]] = {
    "math": [
        "Solve the problem. Give the final answer as a number at the end.",
        "Think step by step, then state the final answer as a single number on the last line.",
        "Compute the answer carefully. Reply with only the final number.",
        "Work out the arithmetic one operation at a time and finish with 'The answer is <number>'.",
        "Read the question, write the expression it asks for, evaluate it, and end with the result.",
    ],
    "qa": [
        "Answer the question using the context. Give a short answer span.",
        "Find the sentences in the context that answer the question, then give the shortest exact answer.",
        "Reason over the passages step by step, then give only the final short answer.",
        "Answer with the exact words from the context that answer the question; no explanation.",
    ],
    "code": [
        "Write the complete Python function. Return only code.",
        "Implement the function so that it passes the examples in its docstring. Return only the code.",
        "Think about edge cases first, then write a correct and complete Python implementation.",
        "Write a clear, correct Python solution with the exact function signature given.",
    ],
}
ENSEMBLE_SIZES = (3, 5)


@dataclass(frozen=True)
class Spec:
    kind: str  # math | qa | code
    answer_op: str  # Custom | AnswerGenerate | CustomCodeGenerate
    instruction: str
    ensemble: int = 1
    programmer: bool = False
    test: bool = False
    review: bool = False


def default_answer_op(kind: str) -> str:
    return "CustomCodeGenerate" if kind == "code" else "Custom"


# ---------------------------------------------------------------- reading a parent


def import_lines(graph: str) -> list[str]:
    tree = ast.parse(graph)
    lines = graph.splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(lines[node.lineno - 1 : node.end_lineno])
    return out


def _first_prompt_constant(prompt: str) -> str | None:
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            text = node.value.value.strip()
            if text.endswith(":"):  # "...\n\nProblem:" — keep the instruction, not the label
                head = text.rsplit("\n", 1)[0].strip()
                text = head or text
            if text:
                return text
    return None


def spec_literal(graph: str) -> dict | None:
    """The ``WORKFLOW_SPEC`` dict of graph.py, or None when it has none (or graph.py does not parse)."""
    try:
        tree = ast.parse(graph)
    except SyntaxError:
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "WORKFLOW_SPEC"
        ):
            try:
                data = ast.literal_eval(node.value)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def read_spec(graph: str, prompt: str, kind: str) -> Spec:
    """The parent's pipeline: its WORKFLOW_SPEC, or the plain answer step of its kind."""
    data = spec_literal(graph)
    if data is not None:
        try:
            return Spec(**data)
        except TypeError:
            pass
    instruction = _first_prompt_constant(prompt) or INSTRUCTIONS.get(kind, INSTRUCTIONS["math"])[0]
    return Spec(kind=kind, answer_op=default_answer_op(kind), instruction=instruction)


# ---------------------------------------------------------------- writing a workflow


def _answer_call(spec: Spec) -> tuple[str, str]:
    """(await-expression, key of its output holding the answer)."""
    if spec.answer_op == "AnswerGenerate":
        return "await self.answer_generate(input=problem + '\\n' + prompt_custom.ANSWER_PROMPT)", "answer"
    if spec.answer_op == "CustomCodeGenerate":
        return (
            "await self.custom_code_generate(problem=problem, entry_point=entry_point, "
            "instruction=prompt_custom.ANSWER_PROMPT)",
            "response",
        )
    return "await self.custom(input=problem, instruction=prompt_custom.ANSWER_PROMPT)", "response"


_ATTR = {
    "Custom": "custom",
    "AnswerGenerate": "answer_generate",
    "CustomCodeGenerate": "custom_code_generate",
    "ScEnsemble": "sc_ensemble",
    "Programmer": "programmer",
    "Test": "test",
    "Review": "review",
    "Revise": "revise",
}


def operators_used(spec: Spec) -> list[str]:
    ops = [spec.answer_op]
    if spec.ensemble > 1:
        ops.append("ScEnsemble")
    if spec.programmer:
        ops.append("Programmer")
    if spec.test:
        ops.append("Test")
    if spec.review:
        ops += ["Review", "Revise"]
    return ops


def render(spec: Spec, import_lines: Sequence[str]) -> tuple[str, str]:
    """graph.py and prompt.py for ``spec``."""
    args = "problem, entry_point" if spec.kind == "code" else "problem"
    call, key = _answer_call(spec)
    body: list[str] = []
    if spec.ensemble > 1:
        body += [
            "candidates = []",
            f"for _ in range({spec.ensemble}):",
            f"    solution = {call}",
            f"    candidates.append(solution[{key!r}])",
            "answer = (await self.sc_ensemble(solutions=candidates, problem=problem))['response']",
        ]
    else:
        body += [f"solution = {call}", f"answer = solution[{key!r}]"]
    if spec.programmer:
        body += [
            "program = await self.programmer(problem=problem, analysis=answer)",
            "if str(program.get('output', '')).strip():",
            "    answer = f\"{answer}\\nProgram output: {program['output']}\"",
        ]
    if spec.test:
        body += [
            "tested = await self.test(problem=problem, solution=answer, entry_point=entry_point)",
            "answer = tested['solution']",
        ]
    if spec.review:
        body += [
            "review = await self.review(problem=problem, solution=answer)",
            "if not review['review_result']:",
            "    answer = (await self.revise(problem=problem, solution=answer, "
            "feedback=review['feedback']))['solution']",
        ]
    body.append("return answer, self.llm.get_usage_summary()['total_cost']")
    init = ["self.name = name", "self.dataset = dataset", "self.llm = create_llm_instance(llm_config)"]
    init += [f"self.{_ATTR[op]} = operator.{op}(self.llm)" for op in dict.fromkeys(operators_used(spec))]
    spec_literal = pprint.pformat(asdict(spec), width=100, sort_dicts=True)
    graph = (
        "\n".join(
            list(import_lines)
            + ["", f"WORKFLOW_SPEC = {spec_literal}", "", "", "class Workflow:"]
            + ["    def __init__(self, name, llm_config, dataset) -> None:"]
            + [f"        {line}" for line in init]
            + ["", f"    async def __call__(self, {args}):"]
            + [f"        {line}" for line in body]
        )
        + "\n"
    )
    # Custom sends instruction + input with nothing between them: end the instruction with a blank line
    prompt = f"ANSWER_PROMPT = {spec.instruction.rstrip() + chr(10) * 2!r}\n"
    return graph, prompt
