"""docs/architecture.md lists every module of the package (its "## Layout" block), and only those."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "aflowctl"
#: folders under aflowctl/ whose .py files are data, not modules (the seeds' AFlow sources)
DATA_FOLDERS = ("aflowctl/workflow/seeds/*/",)

_ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.py|/))(?:\s|$)")


def real_modules() -> set[str]:
    """Every module under aflowctl/, a package standing for its ``__init__.py`` (``aflowctl/store/``)."""
    out = set()
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(REPO)
        if "__pycache__" in rel.parts or any(rel.match(f"{d}*.py") for d in DATA_FOLDERS):
            continue
        out.add(f"{rel.parent.as_posix()}/" if p.name == "__init__.py" else rel.as_posix())
    return out


def layout_block(text: str) -> list[str]:
    """The lines of the first fenced block after the ``## Layout`` heading."""
    lines = text.splitlines()
    start = lines.index("## Layout")
    fences = [i for i in range(start, len(lines)) if lines[i].startswith("```")]
    assert len(fences) >= 2, "docs/architecture.md: no fenced block under '## Layout'"
    return lines[fences[0] + 1 : fences[1]]


def listed_paths(block: list[str]) -> set[str]:
    """Paths named by the tree: a name at indent 2*depth (``x.py`` or ``folder/``) under the
    folders above it; lines indented otherwise continue a description."""
    stack: list[str] = []
    out = set()
    for line in block:
        m = _ENTRY.match(line)
        if not m or len(m["indent"]) % 2 or len(m["indent"]) // 2 > len(stack):
            continue
        depth = len(m["indent"]) // 2
        stack = stack[:depth] + [m["name"]]
        out.add("".join(stack))
    return out


def test_the_parser_reads_a_tree_and_skips_continuations():
    block = [
        "aflowctl/",
        "  errors.py      errors",
        "  store/         the store",
        "    db.py        open_store",
        "                 more.py about db (a continuation)",
        "  cli/",
        "    __main__.py  python -m",
        "  paths.py",
    ]
    assert listed_paths(block) == {
        "aflowctl/", "aflowctl/errors.py", "aflowctl/store/", "aflowctl/store/db.py", "aflowctl/cli/",
        "aflowctl/cli/__main__.py", "aflowctl/paths.py",
    }


def test_architecture_doc_lists_every_module():
    listed = listed_paths(layout_block(DOC.read_text(encoding="utf-8")))
    real = real_modules()
    assert "aflowctl/store/runs.py" in real and "aflowctl/workflow/seeds/" in real  # the walk finds modules
    assert not any(p.startswith("aflowctl/workflow/seeds/solve") for p in real)  # and skips seed data
    missing = sorted(real - listed)
    stale = sorted(p for p in listed - real if not (REPO / p).exists())
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} module(s): {', '.join(missing)}")
    if stale:
        problems.append(f"lists {len(stale)} path(s) that do not exist: {', '.join(stale)}")
    assert not problems, (
        "docs/architecture.md '## Layout' is out of date: " + "; ".join(problems)
        + " (one line per module, indented two spaces per folder level under its package)"
    )
