"""The public tests the Test operator may run for a problem (never the evaluation tests)."""

from __future__ import annotations

from typing import Any, Optional

_row_index: dict[str, dict[str, list[dict]]] = {}


def public_tests_for(problem_text: str, entry_point: str, llm: Any = None) -> Optional[list[str]]:
    """The public tests the Test operator may run for this problem, or None.

    First the current :func:`~aflowctl.workflow.api.problem_context` (set by the
    rollout worker); else the benchmark named in the LLM's context (the workflow's
    dataset): the problem row is found by entry point (and prompt text, when the
    name is used twice) and ``benchmark.public_tests(row)`` gives its asserts. The
    evaluation ``test`` field is never read.
    """
    from aflowctl.workflow.problem import current_problem

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
