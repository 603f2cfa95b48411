"""The edit action language: one JSON object per answer, compiled into graph.py/prompt.py.

An edit names one change of the parent's pipeline spec (:mod:`aflowctl.mdp.spec`)::

    {"edit": "ensemble", "k": 5}                      sample the answer step k times, vote (ScEnsemble)
    {"edit": "add", "step": "programmer"}             add a step: programmer (math), test (code), review
    {"edit": "remove", "step": "review"}              remove a step: ensemble, programmer, test, review
    {"edit": "instruction", "step": "answer", "text": "..."}   rewrite the answer step's instruction
    {"edit": "answer_op", "op": "AnswerGenerate"}     the operator of the answer step

:func:`parse_edit` reads an answer (the object alone, or inside a fenced block; prose
around it is ignored; the first object is the answer), :func:`apply_edit` applies it to a spec or says in one
line why it does not apply, :func:`catalogue` lists the edits the LLM-free ``mutate``
policy picks from (everything it did before the language existed). The reference with
an example of each edit is docs/edits.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from aflowctl.mdp.parse import ProposalError, normalise_modification
from aflowctl.mdp.spec import ENSEMBLE_SIZES, INSTRUCTIONS, Spec

EDITS: dict[str, tuple[str, ...]] = {  # edit -> its parameters
    "ensemble": ("k",),
    "add": ("step",),
    "remove": ("step",),
    "instruction": ("step", "text"),
    "answer_op": ("op",),
}
MIN_K, MAX_K = 2, 9
MAX_INSTRUCTION_CHARS = 600
ADDABLE = {"programmer": "math", "test": "code", "review": None}  # step -> the task kind it needs (None: any)
REMOVABLE = ("ensemble", "programmer", "test", "review")
STEP_OPERATORS = {
    "programmer": ("Programmer",),
    "test": ("Test",),
    "review": ("Review", "Revise"),
    "ensemble": ("ScEnsemble",),
}
ANSWER_OPS = {
    "math": ("Custom", "AnswerGenerate"),
    "qa": ("Custom", "AnswerGenerate"),
    "code": ("CustomCodeGenerate", "Custom"),
}
EXAMPLE = '{"edit": "ensemble", "k": 3}'


class EditError(ProposalError):
    """An edit that is malformed or does not apply to the parent (the one-line reason is the message)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint)


@dataclass(frozen=True)
class Edit:
    edit: str
    k: int | None = None
    step: str | None = None
    text: str | None = None
    op: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"edit": self.edit}
        for name in EDITS[self.edit]:
            out[name] = getattr(self, name)
        return out

    def canonical(self) -> str:
        """The edit as one line of JSON: its answer text and its ``modification``."""
        return json.dumps(self.as_dict(), ensure_ascii=False)


def edit_kinds() -> tuple[str, ...]:
    """Task kinds that have an edit catalogue."""
    return tuple(INSTRUCTIONS)


# ---------------------------------------------------------------- parsing

_FENCED = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


def looks_like_edit(text: str) -> bool:
    return '"edit"' in (text or "") or "'edit'" in (text or "")


def parse_edit(text: str) -> Edit:
    """One edit from an answer; raises :class:`EditError` with the reason."""
    if not text or not text.strip():
        raise EditError("the answer is empty", f"answer with one JSON object such as {EXAMPLE}")
    body = text.strip()
    fenced = _FENCED.search(body)
    if fenced:
        body = fenced.group(1).strip()
    start = body.find("{")
    if start < 0:
        raise EditError("the answer is not JSON (no '{' found)", f"answer with one JSON object such as {EXAMPLE}")
    try:
        data, _ = json.JSONDecoder().raw_decode(body, start)  # the first object is the answer
    except json.JSONDecodeError as exc:
        raise EditError(
            f"the answer is not valid JSON: {exc.msg} at character {exc.pos}",
            f"answer with one JSON object such as {EXAMPLE}",
        ) from None
    if not isinstance(data, dict):
        raise EditError("the answer is JSON but not an object", f"answer with one JSON object such as {EXAMPLE}")
    name = data.get("edit")
    if not isinstance(name, str):
        raise EditError('the object has no "edit" name', f"name the edit, as in {EXAMPLE}")
    if name not in EDITS:
        raise EditError(f"unknown edit '{name[:40]}' (known: {', '.join(EDITS)})", "pick one of the listed edits")
    params = EDITS[name]
    extra = [k for k in data if k != "edit" and k not in params]
    if extra:
        raise EditError(
            f"unexpected key '{str(extra[0])[:40]}' for edit '{name}' (it takes: {', '.join(params)})",
            "drop the other keys",
        )
    values: dict = {}
    for p in params:
        if p not in data:
            raise EditError(f"edit '{name}' needs '{p}'", f"give {', '.join(params)}")
        v = data[p]
        if p == "k":
            if isinstance(v, bool) or not isinstance(v, int):
                raise EditError(f"'k' must be a whole number (got {json.dumps(v)[:40]})", "give k as a number, e.g. 3")
        elif not isinstance(v, str):
            raise EditError(f"'{p}' must be a string (got {json.dumps(v)[:40]})", f"give {p} as a string")
        values[p] = v
    return Edit(edit=name, **values)


# ---------------------------------------------------------------- applying


def _allowed(ops: Sequence[str], allowed: Sequence[str] | None) -> None:
    missing = [o for o in ops if allowed is not None and o not in allowed]
    if missing:
        raise EditError(
            f"the operator {missing[0]} is not allowed in this run (allowed: {', '.join(allowed or [])})",
            "pick an edit that uses the allowed operators",
        )


def _has(spec: Spec, step: str) -> bool:
    return spec.ensemble > 1 if step == "ensemble" else bool(getattr(spec, step))


def apply_edit(spec: Spec, e: Edit, allowed_ops: Sequence[str] | None = None) -> Spec:
    """The spec after ``e``; :class:`EditError` saying why when it does not apply."""
    allowed = list(allowed_ops) if allowed_ops else None
    if e.edit == "ensemble":
        k = int(e.k or 0)
        if k < MIN_K:
            raise EditError(
                f"k must be at least {MIN_K} (got {k})",
                'to drop the ensemble use {"edit": "remove", "step": "ensemble"}',
            )
        if k > MAX_K:
            raise EditError(f"k must be at most {MAX_K} (got {k})", f"pick k from {MIN_K} to {MAX_K}")
        if spec.ensemble == k:
            raise EditError(f"the ensemble already has k={k}", "pick another k or another edit")
        _allowed(STEP_OPERATORS["ensemble"], allowed)
        return replace(spec, ensemble=k)
    if e.edit == "add":
        step = str(e.step)
        if step == "ensemble":
            raise EditError("add the ensemble with the ensemble edit", EXAMPLE)
        if step not in ADDABLE:
            raise EditError(
                f"unknown step '{step[:40]}' to add (addable: {', '.join(ADDABLE)})", "pick an addable step"
            )
        need = ADDABLE[step]
        if need is not None and spec.kind != need:
            raise EditError(
                f"the {step} step applies to {need} tasks only (this is a {spec.kind} task)", "pick another step"
            )
        if _has(spec, step):
            raise EditError(f"the workflow already has a {step} step", "pick another edit")
        _allowed(STEP_OPERATORS[step], allowed)
        flags: dict[str, Any] = {step: True}  # step: one of the bool fields of Spec
        return replace(spec, **flags)
    if e.edit == "remove":
        step = str(e.step)
        if step == "answer":
            raise EditError("the answer step cannot be removed", "remove another step")
        if step not in REMOVABLE:
            raise EditError(
                f"unknown step '{step[:40]}' to remove (removable: {', '.join(REMOVABLE)})",
                "pick a step the workflow has",
            )
        if not _has(spec, step):
            raise EditError(f"the workflow has no {step} step", "remove a step it has")
        unset: dict[str, Any] = {step: False}
        return replace(spec, ensemble=1) if step == "ensemble" else replace(spec, **unset)
    if e.edit == "instruction":
        if e.step != "answer":
            raise EditError(
                f"only the answer step has an instruction (got step '{str(e.step)[:40]}')", 'use "step": "answer"'
            )
        text = str(e.text).strip()
        if not re.sub(r"[\W_]+", "", text):
            raise EditError("the instruction text is empty or a placeholder", "write the new instruction")
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise EditError(
                f"the instruction is {len(text)} characters (at most {MAX_INSTRUCTION_CHARS})", "shorten it"
            )
        if text == spec.instruction.strip():
            raise EditError("the instruction is unchanged", "write a different instruction")
        return replace(spec, instruction=text)
    # answer_op
    ops = ANSWER_OPS.get(spec.kind, ANSWER_OPS["math"])
    if e.op not in ops:
        raise EditError(
            f"answer_op '{str(e.op)[:40]}' is not available for {spec.kind} tasks (available: {', '.join(ops)})",
            "pick one of them",
        )
    if e.op == spec.answer_op:
        raise EditError(f"the answer step already uses {e.op}", "pick another operator")
    _allowed((str(e.op),), allowed)
    return replace(spec, answer_op=str(e.op))


# ---------------------------------------------------------------- what mutate picks from


def catalogue(spec: Spec, allowed_ops: Sequence[str] | None = None) -> list[Edit]:
    """Every edit the ``mutate`` policy may pick for ``spec`` (each one applies)."""
    cands: list[Edit] = [Edit("ensemble", k=k) for k in ENSEMBLE_SIZES]
    if spec.ensemble > 1:
        cands.append(Edit("remove", step="ensemble"))
    for step in ("programmer", "test", "review"):
        cands.append(Edit("remove" if _has(spec, step) else "add", step=step))
    if spec.kind == "qa":
        cands += [Edit("answer_op", op=op) for op in ANSWER_OPS["qa"]]
    cands += [Edit("instruction", step="answer", text=t) for t in INSTRUCTIONS.get(spec.kind, INSTRUCTIONS["math"])]
    out = []
    for e in cands:
        try:
            apply_edit(spec, e, allowed_ops)
        except EditError:
            continue
        out.append(e)
    return out


def available(spec: Spec, allowed_ops: Sequence[str] | None = None, tried: Sequence[str] = ()) -> list[str]:
    """Example lines of the edits that apply to ``spec`` (the edit observation's menu).

    ``tried``: modifications already tried on this workflow; an example that repeats
    one would be refused, so it is left out (the ensemble example takes an untried k).
    """
    done = {normalise_modification(t) for t in tried}

    def fresh(e: Edit) -> bool:
        return normalise_modification(e.canonical()) not in done and _ok(spec, e, allowed_ops)

    lines = []
    k = next((k for k in (3, 5, 2, 4, 7, 9, 6, 8) if fresh(Edit("ensemble", k=k))), None)
    if k is not None:
        lines.append(f'{{"edit": "ensemble", "k": {k}}}  (answer k times and vote, k {MIN_K}-{MAX_K})')
    lines += [f'{{"edit": "add", "step": "{s}"}}' for s in ADDABLE if fresh(Edit("add", step=s))]
    lines += [f'{{"edit": "remove", "step": "{s}"}}' for s in REMOVABLE if fresh(Edit("remove", step=s))]
    lines.append('{"edit": "instruction", "step": "answer", "text": "..."}  (new instruction)')
    lines += [
        f'{{"edit": "answer_op", "op": "{o}"}}' for o in ANSWER_OPS.get(spec.kind, ()) if fresh(Edit("answer_op", op=o))
    ]
    return lines


def _ok(spec: Spec, e: Edit, allowed_ops: Sequence[str] | None) -> bool:
    try:
        apply_edit(spec, e, allowed_ops)
        return True
    except EditError:
        return False
