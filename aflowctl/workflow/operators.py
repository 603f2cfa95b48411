"""The built-in operators, with AFlow's call interfaces and output keys.

An operator is constructed with the executor LLM (``operator.Custom(self.llm)``)
and awaited with keyword arguments; it returns a dict. The LLM is anything with
``async generate(prompt, **overrides) -> Sample`` (normally the
:class:`~aflowctl.workflow.api.WorkflowLLM` from ``create_llm_instance``) or an
async ``__call__(prompt) -> str``.

Differences from AFlow's operators (see docs/workflows.md):

* Programmer runs the generated ``solve()`` in the sandbox and returns its result
  (AFlow read the wrong key and reported "No code generated").
* ScEnsemble and MdEnsemble never fail on a missing or out-of-range letter: they
  fall back to a majority vote over the candidates' final answers, then the first.
  ScEnsemble makes no LLM call when there is nothing to choose (one candidate, or
  all candidates share the same final answer).
* Test runs only the problem's *public* tests (from the rollout worker's
  :func:`~aflowctl.workflow.api.problem_context`, else from the benchmark), in the
  sandbox, never the evaluation tests and never ``exec`` in the worker.
* Structured replies are parsed from XML-like tags, then JSON, then plain text;
  parsing never raises.
* Format returns its answer under both ``response`` and ``solution``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

from aflowctl.workflow import sandbox
from aflowctl.workflow.public_tests import public_tests_for
from aflowctl.workflow.replies import (
    extract_code,
    final_answer_key,
    labels,
    majority_index,
    parse_bool,
    parse_fields,
    parse_letter,
)

# --------------------------------------------------------------------------- base


class Operator:
    """Base class: holds the LLM and a name; subclasses define ``async __call__``."""

    def __init__(self, llm: Any, name: Optional[str] = None):
        self.llm = llm
        self.name = name or type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.llm!r})"

    async def _ask(self, prompt: str, **overrides: Any) -> str:
        gen = getattr(self.llm, "generate", None)
        if gen is not None:
            sample = await gen(prompt, **overrides)
            return str(getattr(sample, "text", sample) or "")
        return str(await self.llm(prompt) or "")

    def _limits(self) -> dict:
        lim = getattr(self.llm, "sandbox_limits", None)
        if isinstance(lim, dict):
            return {"timeout_s": float(lim.get("timeout_s", 10.0)), "memory_mb": int(lim.get("memory_mb", 1024))}
        return {"timeout_s": 10.0, "memory_mb": 1024}

    async def __call__(self, *args: Any, **kwargs: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- prompts (aflowctl's own wording)

ANSWER_PROMPT = """{input}

Think the problem through step by step, then state the final answer by itself.
Reply in exactly this layout:
<thought>your reasoning, step by step</thought>
<answer>only the final answer, as short as it can be</answer>"""

CODE_FORMAT_NOTE = """

Write the complete Python implementation of the function `{entry_point}`, with every import and helper it needs. \
Do not include tests, examples or input() calls. Return the code in one ```python code block."""

SC_PROMPT = """Below are several candidate answers to the same question. Work out which final answer the candidates \
agree on most often, and choose a candidate that gives that answer.

Question:
{problem}

Candidates:
{candidates}
Reply with a brief comparison in <thought></thought>, then only the letter of the chosen candidate in \
<solution_letter></solution_letter>."""

MD_PROMPT = """Several candidate solutions to a problem follow. Judge which one is most likely correct, considering \
the reasoning as well as the result.

Problem:
{problem}

Candidates:
{candidates}
Give your reasoning in <thought></thought>, then only the letter of the best candidate in \
<solution_letter></solution_letter>."""

PROGRAMMER_PROMPT = """Solve the problem below by writing Python code.

Problem:
{problem}

Notes from earlier analysis:
{analysis}
{feedback}
Define a function `solve()` with no parameters that computes and returns the final answer. You may use the \
standard library (math, fractions, itertools...) and sympy. Do not read input and do not call solve() yourself. \
Return the code in one ```python code block."""

PROGRAMMER_FEEDBACK = """
Your previous attempt failed.
Code:
```python
{code}
```
What happened: {error}
Fix the problem and write the whole program again.
"""

TEST_REPAIR_PROMPT = """The Python solution below fails a test.

Problem:
{problem}

Current solution:
```python
{solution}
```

Test result: {failure}

Find the bug and write the corrected, complete implementation of `{entry_point}` (with its imports) in one \
```python code block."""

FORMAT_PROMPT = """Question:
{problem}

Worked solution:
{solution}

Extract the final answer from the worked solution in the shortest form that answers the question (a number, a \
name, a short phrase), without explanation. Reply as <response>the final answer</response>."""

REVIEW_PROMPT = """Check the following solution carefully and critically.

Problem:
{problem}

Solution:
{solution}

Decide whether the solution is correct and complete. Reply as
<review_result>true or false</review_result>
<feedback>what is wrong and how to fix it (or why it is right)</feedback>"""

REVISE_PROMPT = """Improve the solution using the feedback.

Problem:
{problem}

Solution:
{solution}

Feedback:
{feedback}

Write the full revised solution as <solution>the revised solution</solution>."""


def _candidates(solutions: Sequence[Any], names: Sequence[str]) -> str:
    return "".join(f"{n}:\n{s}\n\n" for n, s in zip(names, solutions))


# --------------------------------------------------------------------------- operators


class Custom(Operator):
    """``instruction + input`` to the LLM; the reply as ``response``."""

    async def __call__(self, input: Any, instruction: Any = "") -> dict:
        return {"response": await self._ask(f"{instruction or ''}{input}")}


class AnswerGenerate(Operator):
    """Step-by-step reasoning and a short final answer."""

    async def __call__(self, input: Any) -> dict:
        reply = await self._ask(ANSWER_PROMPT.format(input=input))
        f = parse_fields(reply, ["thought", "answer"])
        thought = f.get("thought") or reply.strip()
        answer = f.get("answer")
        if not answer:
            lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
            answer = re.sub(r"^(final\s+)?answer\s*[:：]\s*", "", lines[-1], flags=re.I) if lines else ""
        return {"thought": thought, "answer": answer}


class CustomCodeGenerate(Operator):
    """A Python function named ``entry_point``; the code as ``response``."""

    async def __call__(self, problem: Any, entry_point: str, instruction: Any = "") -> dict:
        prompt = f"{instruction or ''}{problem}" + CODE_FORMAT_NOTE.format(entry_point=entry_point)
        reply = await self._ask(prompt)
        return {"response": extract_code(reply, entry_point) or reply}


class ScEnsemble(Operator):
    """Self-consistency over candidate solutions; never fails on the LLM's choice."""

    async def __call__(self, solutions: Sequence[Any], problem: Any) -> dict:
        sols = list(solutions or [])
        if not sols:
            return {"response": ""}
        if len(sols) == 1 or len({final_answer_key(s) for s in sols}) == 1:
            return {"response": sols[0]}  # nothing to choose: no call
        names = labels(len(sols))
        reply = await self._ask(SC_PROMPT.format(problem=problem, candidates=_candidates(sols, names)))
        idx = parse_letter(reply, len(sols))
        if idx is None:
            idx = majority_index(sols)
        return {"response": sols[idx]}


class Programmer(Operator):
    """Writes ``solve()``, runs it in the sandbox, returns the code and its result."""

    attempts = 3

    async def __call__(self, problem: Any, analysis: Any = "None") -> dict:
        feedback = ""
        code, output = "", "No code generated"
        for _ in range(self.attempts):
            reply = await self._ask(PROGRAMMER_PROMPT.format(problem=problem, analysis=analysis, feedback=feedback))
            new_code = extract_code(reply, "solve")
            if not new_code:
                output = "No code generated"
                feedback = PROGRAMMER_FEEDBACK.format(code=reply.strip()[:2000], error="no Python code block was found")
                continue
            code = new_code
            ok, output = await self.run(code)
            if ok:
                return {"code": code, "output": output}
            feedback = PROGRAMMER_FEEDBACK.format(code=code, error=output)
        return {"code": code, "output": output}

    async def run(self, code: str) -> tuple[bool, str]:
        """Run ``code`` + a call of ``solve()`` in the sandbox: (ok, result or error)."""
        mark = "@@aflowctl-result-" + secrets.token_hex(8) + "@@"
        program = (
            code
            + "\n\nif __name__ == '__main__':\n"
            + "    import sys as _aflowctl_sys\n"
            + "    if 'solve' not in globals() or not callable(globals()['solve']):\n"
            + "        raise NameError('the code defines no function solve()')\n"
            + "    _aflowctl_r = solve()\n"
            + f"    _aflowctl_sys.stdout.write('\\n' + {mark!r} + str(_aflowctl_r))\n"
        )
        res = await sandbox.run_python_async(program, **self._limits())
        if res.ok and mark in res.stdout:
            return True, res.stdout.rsplit(mark, 1)[1].strip()
        detail = res.reason
        tail = res.stderr.strip().splitlines()[-6:]
        if tail and res.kind in ("exception", "exit", "memory"):
            detail += "\n" + "\n".join(tail)
        return False, f"Error: {detail}"


class Test(Operator):
    """Runs the public tests in the sandbox; repairs the code on failure."""

    __test__ = False  # not a pytest test class

    async def __call__(self, problem: Any, solution: Any, entry_point: str, test_loop: int = 3) -> dict:
        tests = public_tests_for(str(problem), entry_point, self.llm)
        solution = str(solution or "")
        for _ in range(max(int(test_loop), 0)):
            verdict = await self.run_tests(solution, tests, entry_point)
            if verdict.ok:
                return {"result": True, "solution": solution}
            reply = await self._ask(
                TEST_REPAIR_PROMPT.format(
                    problem=problem, solution=solution, failure=verdict.reason, entry_point=entry_point
                )
            )
            fixed = extract_code(reply, entry_point)
            if fixed:
                solution = fixed
        verdict = await self.run_tests(solution, tests, entry_point)
        return {"result": bool(verdict.ok), "solution": solution}

    async def run_tests(self, solution: str, tests: Optional[list[str]], entry_point: str) -> sandbox.SandboxResult:
        """One sandboxed run of ``tests`` (assert lines using ``candidate``) against the solution;
        with no public tests, it only checks that the solution runs and defines entry_point."""
        body = "".join(_explained_assert(str(t).strip()) for t in (tests or []) if str(t).strip())
        test_src = "def check(candidate):\n" + (body or "    pass\n")
        return await sandbox.check_solution_async(solution, test_src, entry_point, **self._limits())


def _explained_assert(line: str) -> str:
    """One public test as the body of ``check(candidate)``; ``assert X == Y`` reports
    the value it got, so the repair prompt says what the code returned."""
    import ast

    try:
        tree = ast.parse(line)
    except SyntaxError:
        return f"    {line}\n"
    node = tree.body[0] if len(tree.body) == 1 else None
    if (
        isinstance(node, ast.Assert)
        and node.msg is None
        and isinstance(node.test, ast.Compare)
        and len(node.test.ops) == 1
        and isinstance(node.test.ops[0], ast.Eq)
    ):
        left = ast.unparse(node.test.left)
        right = ast.unparse(node.test.comparators[0])
        return f"    _got = {left}\n    assert _got == {right}, {('failed: ' + line)!r} + '; got ' + repr(_got)[:300]\n"
    return "".join(f"    {ln}\n" for ln in line.splitlines())


class Format(Operator):
    """The final answer in the form the question asks for."""

    async def __call__(self, problem: Any, solution: Any, mode: Any = None) -> dict:
        reply = await self._ask(FORMAT_PROMPT.format(problem=problem, solution=solution))
        answer = parse_fields(reply, ["response", "solution", "answer"])
        text = answer.get("response") or answer.get("solution") or answer.get("answer") or reply.strip()
        return {"response": text, "solution": text}


class Review(Operator):
    """A verdict (bool) and feedback on a solution."""

    async def __call__(self, problem: Any, solution: Any, mode: Any = None) -> dict:
        reply = await self._ask(REVIEW_PROMPT.format(problem=problem, solution=solution))
        f = parse_fields(reply, ["review_result", "feedback"])
        verdict = parse_bool(f.get("review_result"))
        if verdict is None:
            low = reply.lower()
            verdict = bool(re.search(r"\b(is|looks) (correct|right)\b", low)) and "incorrect" not in low
        return {"review_result": verdict, "feedback": f.get("feedback") or reply.strip()}


class Revise(Operator):
    """A solution rewritten according to feedback."""

    async def __call__(self, problem: Any, solution: Any, feedback: Any, mode: Any = None) -> dict:
        reply = await self._ask(REVISE_PROMPT.format(problem=problem, solution=solution, feedback=feedback))
        f = parse_fields(reply, ["solution"])
        return {"solution": f.get("solution") or reply.strip()}


class MdEnsemble(Operator):
    """Several shuffled votes over the candidates; the most voted one wins."""

    def __init__(self, llm: Any, name: Optional[str] = None, vote_count: int = 5):
        super().__init__(llm, name)
        self.vote_count = max(1, int(vote_count))

    async def __call__(self, solutions: Sequence[Any], problem: Any, mode: Any = None) -> dict:
        sols = list(solutions or [])
        if not sols:
            return {"solution": ""}
        if len(sols) == 1:
            return {"solution": sols[0]}
        seed = int(hashlib.sha256(repr((str(problem), [str(s) for s in sols])).encode()).hexdigest()[:12], 16)
        rng = random.Random(seed)  # reproducible shuffles: same inputs, same prompts (cache hits on resume)
        orders = []
        for _ in range(self.vote_count):
            order = list(range(len(sols)))
            rng.shuffle(order)
            orders.append(order)
        names = labels(len(sols))

        async def vote(order: list[int]) -> Optional[int]:
            shown = [sols[i] for i in order]
            reply = await self._ask(MD_PROMPT.format(problem=problem, candidates=_candidates(shown, names)))
            pick = parse_letter(reply, len(sols))
            return None if pick is None else order[pick]

        votes = [v for v in await asyncio.gather(*(vote(o) for o in orders)) if v is not None]
        if not votes:
            return {"solution": sols[majority_index(sols)]}
        counts = Counter(votes)
        best = max(counts.values())
        winner = next(v for v in votes if counts[v] == best)
        return {"solution": sols[winner]}


BUILTIN_OPERATORS: tuple[type, ...] = (
    Custom,
    AnswerGenerate,
    CustomCodeGenerate,
    ScEnsemble,
    Programmer,
    Test,
    Format,
    Review,
    Revise,
    MdEnsemble,
)
