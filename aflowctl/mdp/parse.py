"""Strict parsing of an optimizer response: ``<modification>``, ``<graph>``, ``<prompt>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aflowctl.errors import AflowctlError

TAGS = ("modification", "graph", "prompt")


class ProposalError(AflowctlError):
    """An optimizer response that cannot become a child workflow (the reason is fed back)."""


@dataclass(frozen=True)
class Proposal:
    modification: str
    graph: str
    prompt: str


_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def _strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1) if m else text


def parse_proposal(text: str) -> Proposal:
    """Parse a response; raises :class:`ProposalError` saying exactly what is wrong."""
    if not text or not text.strip():
        raise ProposalError("the response is empty", "answer with <modification>, <graph> and <prompt> sections")
    parts = {}
    for tag in TAGS:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
        if not found:
            opened = f"<{tag}>" in text
            raise ProposalError(
                f"the response has {'an unclosed' if opened else 'no'} <{tag}> section",
                f"wrap the {tag} in <{tag}>...</{tag}>",
            )
        if len(found) > 1:
            raise ProposalError(f"the response has {len(found)} <{tag}> sections", f"give exactly one <{tag}> section")
        parts[tag] = _strip_fence(found[0].strip("\n")).strip("\n")
    if not parts["modification"].strip():
        raise ProposalError("the <modification> section is empty", "describe the one change you made")
    if "class Workflow" not in parts["graph"]:
        raise ProposalError(
            "the <graph> section defines no 'class Workflow'", "give the complete graph.py with class Workflow"
        )
    return Proposal(
        modification=" ".join(parts["modification"].split()), graph=parts["graph"] + "\n", prompt=parts["prompt"] + "\n"
    )


def normalise_modification(text: str) -> str:
    """Key for 'already tried on this parent': case, spacing and punctuation folded."""
    return re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).strip()
