"""Observations: a search state rendered as the chat messages the optimizer (or policy) sees.

Two renderings, one per action format, used alike by ``aflowctl optimize`` and by the
trainer: :func:`render_optimize_prompt` (code format: AFlow's prompt with the parent's
full graph.py/prompt.py) and :func:`render_edit_prompt` (edit format: the pipeline as
a short spec, the edits that apply, what was tried and how it went; short enough for
a 135M model: under ~600 tokens).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

from aflowctl.mdp.experience import Tried, render_experience

SYSTEM = (
    "You improve agentic workflows: small Python programs that solve a task by calling an LLM through "
    "operators. You change one thing at a time and return complete, runnable code."
)

TASK_TYPES = {
    "math": "math word problems; the final answer is a number or a LaTeX expression",
    "qa": "reading comprehension / multi-hop question answering; the final answer is a short span",
    "code": "Python function synthesis; the final answer is the complete function code",
}

FORMAT_RULES = """Answer in exactly this form, with nothing after it:
<modification>one sentence describing the single change you made</modification>
<graph>the complete new graph.py</graph>
<prompt>the complete new prompt.py (prompt constants used as prompt_custom.NAME)</prompt>

Rules:
- graph.py keeps `class Workflow` with `__init__(self, name, llm_config, dataset)` and `async def __call__(self, {call_args})` returning `(answer, cost)`, where cost is `self.llm.get_usage_summary()["total_cost"]`.
- Use only the operators listed above, created in `__init__` as `operator.NAME(self.llm)`; prompts live in prompt.py and are referenced as `prompt_custom.NAME`.
- Keep the import lines of the current graph.py unchanged.
- Make one focused change that is likely to raise the score; do not repeat a modification listed as already tried."""  # noqa: E501 - prompt text: one rule a line


def _call_args(kind: str) -> str:
    return "problem, entry_point" if kind == "code" else "problem"


def render_failed_cases(cases: Sequence[dict], max_chars: int = 600) -> str:
    if not cases:
        return "No failed validation cases were logged for this workflow."
    out = ["Some validation problems this workflow got wrong:"]
    for i, c in enumerate(cases, 1):
        q = str(c.get("question", ""))[:max_chars]
        out.append(
            f"{i}. problem: {q}\n   expected: {str(c.get('expected', ''))[:200]}\n"
            f"   workflow answered: {str(c.get('prediction', ''))[:300]}"
        )
    return "\n".join(out)


def render_optimize_prompt(
    *,
    dataset: str,
    kind: str,
    parent_graph: str,
    parent_prompt: str,
    parent_score: float | None,
    experience: Sequence[Tried] | str,
    failed_cases: Sequence[dict],
    operator_descriptions: str,
    error_feedback: str | None = None,
) -> list[dict]:
    """Chat messages asking for one modification of the parent workflow."""
    exp = experience if isinstance(experience, str) else render_experience(experience, parent_score)
    score = "not evaluated" if parent_score is None else f"{100 * parent_score:.1f}%"
    user = f"""Task: {dataset} ({TASK_TYPES.get(kind, kind)}).

Operators you can use:
{operator_descriptions}

Current workflow (validation score {score}):
<graph>
{parent_graph.rstrip()}
</graph>
<prompt>
{parent_prompt.rstrip()}
</prompt>

{exp}

{render_failed_cases(failed_cases)}

{FORMAT_RULES.format(call_args=_call_args(kind))}"""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    if error_feedback:
        messages.append(
            {
                "role": "user",
                "content": f"Your previous answer could not be used: {error_feedback}\n"
                "Answer again in the required form.",
            }
        )
    return messages


def messages_to_text(messages: list[dict]) -> str:
    """Canonical text form of a rendered prompt (stored in experiences.prompt)."""
    return json.dumps(messages, ensure_ascii=False)


EDIT_SYSTEM = (
    "You improve a workflow that solves {task} by choosing ONE edit. Reply with one JSON object and nothing else."
)


def _spec_line(spec) -> str:
    steps = [f"answer ({spec.answer_op})"]
    if spec.ensemble > 1:
        steps.append(f"ensemble (k={spec.ensemble})")
    steps += [s for s in ("programmer", "test", "review") if getattr(spec, s)]
    return " -> ".join(steps)


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def render_edit_prompt(
    *,
    kind: str,
    spec,
    score: float | None,
    tried: Sequence[Tried],
    failed_cases: Sequence[dict],
    edits: Sequence[str],
    error_feedback: str | None = None,
    max_tried: int = 6,
) -> list[dict]:
    """Chat messages asking for one edit (see docs/edits.md) of the pipeline ``spec``."""
    task = {"math": "math problems", "qa": "questions about a text", "code": "Python coding tasks"}.get(kind, kind)
    sc = "not evaluated" if score is None else f"{100 * score:.0f}%"
    head = [
        f"Workflow (score {sc}): {_spec_line(spec)}",
        f"Answer instruction: {_short(spec.instruction, 160)}",
        "",
        "Edits (pick one):",
    ]
    rest: list[str] = []
    shown = list(tried)[-max_tried:]
    if shown:
        rest += ["", "Tried on this workflow:"]
        for t in shown:
            if not t.valid:
                rest.append(f"{_short(t.modification, 90)} -> invalid: {_short(t.error or '', 80)}")
            else:
                rest.append(f"{_short(t.modification, 90)} -> {_pct(t.score_after)}")
    for c in list(failed_cases)[:1]:
        rest += [
            "",
            (
                f"Failed: {_short(c.get('question', ''), 100)} expected {_short(c.get('expected', ''), 20)}, "
                f"got {_short(c.get('prediction', ''), 60)}"
            ),
        ]
    rest += ["", "Reply with one JSON edit."]
    lines = head + menu_order(edits, "\n".join(head + rest)) + rest
    messages = [
        {"role": "system", "content": EDIT_SYSTEM.format(task=task)},
        {"role": "user", "content": "\n".join(lines)},
    ]
    if error_feedback:
        messages.append(
            {
                "role": "user",
                "content": f"That edit could not be used: {_short(error_feedback, 200)}. Reply with another JSON edit.",
            }
        )
    return messages


def menu_order(edits: Sequence[str], context: str) -> list[str]:
    """The menu in an order drawn from the rest of the observation.

    A fixed order lets a policy earn validity by copying the first line (the trained
    135M policy did exactly that, always answering the first edit); an order drawn from
    a digest of the observation's other lines carries no such shortcut, yet the same
    state always renders the same prompt.
    """
    seed = int.from_bytes(hashlib.sha256(context.encode()).digest()[:8], "big")
    out = list(edits)
    random.Random(seed).shuffle(out)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"
