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
import json
import random
import re
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

from aflowctl.workflow import sandbox

# --------------------------------------------------------------------------- parsing


def parse_fields(text: str, fields: Sequence[str]) -> dict[str, str]:
    """Read ``fields`` from a reply: ``<field>...</field>`` tags (an unclosed last tag
    runs to the end), else a JSON object (fenced or bare). Missing fields are absent."""
    text = text or ""
    out: dict[str, str] = {}
    for f in fields:
        m = list(re.finditer(rf"<{re.escape(f)}\s*>(.*?)</\s*{re.escape(f)}\s*>", text, re.S | re.I))
        if m:
            out[f] = m[-1].group(1).strip()
            continue
        m2 = re.search(rf"<{re.escape(f)}\s*>(.*)$", text, re.S | re.I)
        if m2:
            val = m2.group(1)
            nxt = re.search(r"<(?!/)(\w+)\s*>", val)
            if nxt and nxt.group(1) in fields:
                val = val[: nxt.start()]
            out[f] = val.strip()
    if len(out) < len(fields):
        obj = _json_object(text)
        if isinstance(obj, dict):
            lower = {str(k).lower(): v for k, v in obj.items()}
            for f in fields:
                if f not in out and f.lower() in lower:
                    v = lower[f.lower()]
                    out[f] = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return out


def _json_object(text: str) -> Any:
    for m in re.finditer(r"```(?:json)?\s*\n(.*?)```", text, re.S | re.I):
        try:
            return json.loads(m.group(1))
        except ValueError:
            pass
    start = text.find("{")
    end = text.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(text[start : end + 1])
        except ValueError:
            return None
    return None


def parse_bool(text: Any) -> Optional[bool]:
    """``True``/``False`` from a reply word (true/yes/correct/pass...), else None."""
    if isinstance(text, bool):
        return text
    s = str(text or "").strip().strip("*`'\".").lower()
    if not s:
        return None
    first = re.split(r"[\s,.;:!]+", s)[0]
    if first in ("true", "yes", "correct", "pass", "passed", "valid", "right", "1"):
        return True
    if first in ("false", "no", "incorrect", "wrong", "fail", "failed", "invalid", "0"):
        return False
    return None


def labels(n: int) -> list[str]:
    """Letters for ``n`` candidates: A..Z, then AA, AB, ..."""
    out = []
    for i in range(n):
        s, k = "", i
        while True:
            s = chr(65 + k % 26) + s
            k = k // 26 - 1
            if k < 0:
                break
        out.append(s)
    return out


def parse_letter(reply: str, n: int) -> Optional[int]:
    """The index chosen in a reply (``<solution_letter>B</solution_letter>``, JSON, or
    a lone letter), or None when absent or out of range."""
    names = labels(n)
    fields = parse_fields(reply, ["solution_letter"])
    cands = [fields["solution_letter"]] if "solution_letter" in fields else []
    cands.append(reply or "")
    for c in cands:
        s = c.strip().strip("*`'\"()[]. ").upper()
        if s in names:
            return names.index(s)
        m = re.search(r"\b(?:LETTER|CANDIDATE|SOLUTION|ANSWER)\s*(?:IS|:)?\s*\(?([A-Z]{1,2})\)?\b", s)
        if m and m.group(1) in names:
            return names.index(m.group(1))
    return None


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)```", re.S)
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)", re.M)


def _parses(code: str) -> bool:
    import ast

    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str, entry_point: Optional[str] = None) -> str:
    """Python code from an LLM reply: the fenced block that defines ``entry_point``
    (else the longest Python block), or the reply itself trimmed to what parses."""
    text = text or ""
    blocks = _FENCE.findall(text)
    if not blocks:
        m = re.search(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*)$", text, re.S | re.I)
        if m:
            blocks = [("python", m.group(1))]
    pyblocks = [b for lang, b in blocks if lang.lower() in ("", "python", "py", "python3")] or [b for _, b in blocks]
    code = ""
    if pyblocks:
        if entry_point:
            defines = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
            defining = [b for b in pyblocks if defines.search(b)]
            if defining:
                pyblocks = defining
        code = max(pyblocks, key=len)
    else:
        code = text
    code = code.strip("\n")
    if _parses(code):
        return code + "\n" if code else ""
    m = _CODE_START.search(code)
    if m:
        code = code[m.start() :]
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):  # drop trailing prose until it parses
        cand = "\n".join(lines[:end])
        if _parses(cand):
            return cand + "\n"
    return ""


def final_answer_key(solution: Any) -> str:
    """What two solutions must share to count as the same answer in a vote: for code,
    the code itself (formatting and comments ignored); else the last ``\\boxed{}``,
    else the last number, else the normalised text."""
    s = str(solution or "")
    code_key = _code_key(s)
    if code_key is not None:
        return code_key
    boxed = _last_boxed(s)
    if boxed is not None:
        return re.sub(r"\s+", "", boxed)
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", s)
    if nums:
        n = nums[-1].replace(",", "")
        try:
            f = float(n)
            return str(int(f)) if f.is_integer() else str(f)
        except ValueError:
            return n
    return re.sub(r"\s+", " ", s.strip().lower())


def _code_key(s: str) -> Optional[str]:
    if not re.search(r"^\s*(async\s+)?(def|class)\s", s, re.M):
        return None
    import ast

    code = extract_code(s) if "```" in s else s
    try:
        return "code:" + ast.dump(ast.parse(code))
    except (SyntaxError, ValueError):
        return None


def _last_boxed(s: str) -> Optional[str]:
    i = s.rfind("\\boxed")
    if i < 0:
        return None
    j = s.find("{", i)
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return s[j + 1 : k]
    return None


def majority_index(solutions: Sequence[Any]) -> int:
    """Index of the first solution whose final answer is the most common one."""
    if not solutions:
        return 0
    keys = [final_answer_key(s) for s in solutions]
    counts = Counter(keys)
    best = max(counts.values())
    for i, k in enumerate(keys):
        if counts[k] == best:
            return i
    return 0


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


# --------------------------------------------------------------------------- public tests

_row_index: dict[str, dict[str, list[dict]]] = {}


def public_tests_for(problem_text: str, entry_point: str, llm: Any = None) -> Optional[list[str]]:
    """The public tests the Test operator may run for this problem, or None.

    First the current :func:`~aflowctl.workflow.api.problem_context` (set by the
    rollout worker); else the benchmark named in the LLM's context (the workflow's
    dataset): the problem row is found by entry point (and prompt text, when the
    name is used twice) and ``benchmark.public_tests(row)`` gives its asserts. The
    evaluation ``test`` field is never read.
    """
    from aflowctl.workflow.api import current_problem

    scope = current_problem()
    if scope is not None and scope.public_tests is not None:
        return list(scope.public_tests)
    dataset = (scope.dataset if scope is not None else None) or (getattr(llm, "context", None) or {}).get("dataset")
    if not dataset:
        return None
    try:
        from aflowctl import benchmarks

        bench = benchmarks.get(str(dataset))
    except Exception:  # noqa: BLE001 - unknown benchmark: no public tests
        return None
    getter = getattr(bench, "public_tests", None)
    if not callable(getter):
        return None
    rows = _rows_by_entry(bench).get(entry_point, [])
    if len(rows) > 1:
        same = [r for r in rows if str(r.get("prompt", "")).strip() == problem_text.strip()]
        rows = same or [r for r in rows if str(r.get("prompt", "")).strip() in problem_text] or rows[:1]
    row = rows[0] if rows else {"entry_point": entry_point, "prompt": problem_text}
    try:
        return [str(t) for t in (getter(row) or [])]
    except Exception:  # noqa: BLE001
        return None


def _rows_by_entry(bench: Any) -> dict[str, list[dict]]:
    name = str(getattr(bench, "name", ""))
    if name not in _row_index:
        index: dict[str, list[dict]] = {}
        for split in getattr(bench, "splits", ("validate", "test")):
            try:
                rows = bench.load(split)
            except Exception:  # noqa: BLE001 - a split that is not present
                continue
            for r in rows:
                if isinstance(r, dict) and r.get("entry_point"):
                    index.setdefault(str(r["entry_point"]), []).append(r)
        _row_index[name] = index
    return _row_index[name]
