"""The starting (round 1) workflows: one graph per kind of benchmark, one prompt per dataset.

The files are AFlow's ``round_1`` sources (AFlow's import lines, rewritten on load)::

    solve/graph.py        a single Custom call with ``prompt_custom.SOLVE_PROMPT``
                          (math, qa and any other kind that is not code)
    solve/<dataset>.py    that dataset's SOLVE_PROMPT (gsm8k, math, arith, hotpotqa, drop)
    code/graph.py         a single CustomCodeGenerate call with ``prompt_custom.CODE_PROMPT``
    code/<dataset>.py     that dataset's CODE_PROMPT (humaneval, mbpp)

A dataset's seed is the graph of the folder holding its prompt, with that prompt as
``prompt.py``. Unknown datasets get the folder's ``_generic.py`` prompt: ``code/`` for
benchmarks of kind ``code``, ``solve/`` otherwise. ``aflowctl export --aflow`` writes any
workflow, seeds included, as AFlow round folders (:mod:`aflowctl.workflow.aflow_io`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aflowctl.workflow.loader import WorkflowSource, rewrite_imports

GRAPH = "graph.py"
GENERIC = "_generic"
SOLVE = "solve"
CODE = "code"


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def _graph_folders() -> list[Path]:
    return sorted(p for p in _root().iterdir() if p.is_dir() and (p / GRAPH).is_file())


def _own_prompt(name: str) -> Path | None:
    if not name or name.startswith(("_", ".")) or f"{name}.py" == GRAPH:
        return None
    for folder in _graph_folders():
        if (folder / f"{name}.py").is_file():
            return folder / f"{name}.py"
    return None


def _prompt_file(dataset: str) -> Path:
    name = str(dataset).strip().lower()
    own = _own_prompt(name)
    if own is not None:
        return own
    kind = None
    try:
        from aflowctl import benchmarks

        kind = getattr(benchmarks.get(name), "kind", None)
    except Exception:  # noqa: BLE001 - unknown benchmark: generic seed
        kind = None
    return _root() / (CODE if kind == "code" else SOLVE) / f"{GENERIC}.py"


def available() -> list[str]:
    """Datasets with a prompt of their own."""
    return sorted(
        p.stem
        for folder in _graph_folders()
        for p in folder.glob("*.py")
        if p.name != GRAPH and not p.name.startswith(("_", "."))
    )


def seed_folder(dataset: str) -> Path:
    """The folder of the seed used for ``dataset``: its ``graph.py`` (shared by the
    datasets of its kind) and the prompts, ``<dataset>.py`` and ``_generic.py``."""
    return _prompt_file(dataset).parent


def seed_workflow(dataset: str) -> WorkflowSource:
    """The seed workflow of ``dataset`` (imports already rewritten)."""
    prompt_file = _prompt_file(dataset)
    graph = (prompt_file.parent / GRAPH).read_text(encoding="utf-8")
    prompt = prompt_file.read_text(encoding="utf-8")
    return WorkflowSource(graph=rewrite_imports(graph), prompt=rewrite_imports(prompt))
