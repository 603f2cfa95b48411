"""Experience: what was tried from a parent, and how it went.

AFlow renders both successes and failures as "absolutely prohibit"; here successes
are described as successes (worth building on, not to be repeated verbatim) and
failures as failures (to avoid).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tried:
    modification: str
    score_before: float | None
    score_after: float | None
    valid: bool
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return (
            self.valid
            and self.score_after is not None
            and self.score_before is not None
            and self.score_after > self.score_before
        )


def from_rows(rows: Iterable[dict]) -> list[Tried]:
    return [
        Tried(
            modification=r.get("modification") or "",
            score_before=r.get("score_before"),
            score_after=r.get("score_after"),
            valid=bool(r.get("valid")),
            error=r.get("error"),
        )
        for r in rows
        if r.get("modification")
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_experience(tried: Sequence[Tried], parent_score: float | None) -> str:
    """The experience section of the optimizer prompt for one parent."""
    if not tried:
        return f"No modification of this workflow has been tried yet (its score is {_pct(parent_score)})."
    succ = [t for t in tried if t.succeeded]
    fail = [t for t in tried if not t.succeeded]
    lines = [f"Modifications already tried on this workflow (score {_pct(parent_score)}):"]
    if succ:
        lines.append("Successful (the score went up; you may build on them, but do not repeat them):")
        lines += [f"- {t.modification} ({_pct(t.score_before)} -> {_pct(t.score_after)})" for t in succ]
    if fail:
        lines.append("Failed (do not repeat them; try something different):")
        for t in fail:
            if not t.valid:
                why = f"invalid: {t.error}" if t.error else "invalid"
                lines.append(f"- {t.modification} ({why})")
            else:
                lines.append(f"- {t.modification} ({_pct(t.score_before)} -> {_pct(t.score_after)})")
    return "\n".join(lines)
