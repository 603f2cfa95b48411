"""Code answers: the program in a reply (fenced or bare) and AFlow's ``sanitize`` (keep the
imports and the definitions the entry point needs), plus the names AFlow's solutions expect
in scope. Nothing here runs the code; that is the sandbox's job."""

from __future__ import annotations

import ast
from typing import Optional


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return False


_OPEN_ENDED = ("never closed", "unterminated", "EOF", "expected an indented block", "unexpected end")


def _error_line(code: str) -> Optional[int]:
    """None when ``code`` parses; else the line of the error, or 0 when more lines
    could still fix it (an unclosed bracket or string, a missing block)."""
    try:
        ast.parse(code)
        return None
    except SyntaxError as exc:  # IndentationError included
        msg = str(exc.msg or "")
        if any(k in msg for k in _OPEN_ENDED) or not exc.lineno:
            return 0
        return int(exc.lineno)
    except (MemoryError, ValueError, RecursionError):
        return 0


def extract_code(text: str) -> str:
    """The longest run of (at least two) lines that parses as Python: AFlow's ``code_extract``.

    AFlow tries every pair of lines (cubic time, minutes on a long chatty answer).
    This finds the same block faster: a run cannot contain a Markdown fence line, and
    when a run fails at line L because of what is on that line, no longer run from the
    same start can parse, so those are skipped.
    """
    if _parses(text):
        return text
    lines = text.split("\n")
    n = len(lines)
    nonempty_suffix = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        nonempty_suffix[i] = nonempty_suffix[i + 1] + (1 if lines[i].strip() else 0)
    fence_after = [n] * (n + 1)  # index of the first fence line at or after i
    for i in range(n - 1, -1, -1):
        fence_after[i] = i if lines[i].lstrip().startswith("```") else fence_after[i + 1]
    best, best_pair = 0, (0, 0)
    for i in range(n):
        if nonempty_suffix[i] <= best:
            break
        if not lines[i].strip() or fence_after[i] == i:
            continue
        j = fence_after[i] - 1
        while j > i:
            count = nonempty_suffix[i] - nonempty_suffix[j + 1]
            if count <= best:
                break
            err = _error_line("\n".join(lines[i : j + 1]))
            if err is None:
                best, best_pair = count, (i, j)
                break
            j = j - 1 if err == 0 else min(j - 1, i + err - 2)
    return "\n".join(lines[best_pair[0] : best_pair[1] + 1])


def sanitize(code: str, entry_point: Optional[str] = None) -> str:
    """AFlow's ``sanitize``: the code block, reduced to imports plus the top-level
    functions, classes and assignments reachable from ``entry_point``.

    Statements such as ``print(...)`` or ``if __name__ == "__main__":`` are dropped.
    """
    code = extract_code(str(code))
    try:
        tree = ast.parse(code)
    except Exception:  # noqa: BLE001 - AFlow returned the code unchanged
        return code
    imports: list[str] = []
    definitions: list[tuple[str, str, ast.AST]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(ast.unparse(node))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            definitions.append((node.name, ast.unparse(node), node))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    definitions.append((target.id, ast.unparse(node), node))
    if entry_point:
        names = {name for name, _, _ in definitions}
        deps: dict[str, set[str]] = {name: set() for name in names}
        for name, _, node in definitions:
            deps[name] |= {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and sub.id in names}
        reachable: set[str] = set()
        stack = [entry_point] if entry_point in deps else []
        while stack:
            cur = stack.pop()
            if cur in reachable:
                continue
            reachable.add(cur)
            stack.extend(deps.get(cur, ()))
        kept = [src for name, src, _ in definitions if name in reachable]
    else:
        kept = [src for _, src, _ in definitions]
    return "\n".join(imports + kept)


# AFlow runs solutions in a namespace that already holds these names.
CODE_PREAMBLE = "import math\nimport hashlib\nimport re\nfrom typing import List, Dict, Tuple, Optional, Any\n"
