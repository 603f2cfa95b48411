"""The optimizer prompt: one rendering used by `aflowctl optimize` and by the trainer."""

from __future__ import annotations

import json
from typing import Sequence

from aflowctl.optimizer.experience import Tried, render_experience

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
- Make one focused change that is likely to raise the score; do not repeat a modification listed as already tried."""


def _call_args(kind: str) -> str:
    return "problem, entry_point" if kind == "code" else "problem"


def render_failed_cases(cases: Sequence[dict], max_chars: int = 600) -> str:
    if not cases:
        return "No failed validation cases were logged for this workflow."
    out = ["Some validation problems this workflow got wrong:"]
    for i, c in enumerate(cases, 1):
        q = str(c.get("question", ""))[:max_chars]
        out.append(f"{i}. problem: {q}\n   expected: {str(c.get('expected', ''))[:200]}\n   workflow answered: {str(c.get('prediction', ''))[:300]}")
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
        messages.append({"role": "user", "content": f"Your previous answer could not be used: {error_feedback}\nAnswer again in the required form."})
    return messages


def messages_to_text(messages: list[dict]) -> str:
    """Canonical text form of a rendered prompt (stored in experiences.prompt)."""
    return json.dumps(messages, ensure_ascii=False)
