"""The starting (round 1) workflows, one folder per benchmark, in AFlow's format.

Each ``<dataset>/graph.py`` is written as an AFlow ``round_1`` graph (with AFlow's
import lines, rewritten on load) using a single Custom operator (CustomCodeGenerate
for code benchmarks) with the dataset's instruction from ``<dataset>/prompt.py``.
Unknown datasets get a generic seed: a code one for benchmarks of kind ``code``,
otherwise a generic step-by-step Custom one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aflowctl.workflow.loader import WorkflowSource, rewrite_imports

GENERIC = "_generic"
GENERIC_CODE = "_generic_code"


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def available() -> list[str]:
    """Datasets with a seed of their own."""
    return sorted(p.name for p in _root().iterdir() if p.is_dir() and (p / "graph.py").is_file()
                  and not p.name.startswith(("_", ".")))


def seed_folder(dataset: str) -> Path:
    """The folder of the seed used for ``dataset`` (its own, else a generic one)."""
    name = str(dataset).strip().lower()
    own = _root() / name
    if name and not name.startswith("_") and (own / "graph.py").is_file():
        return own
    kind = None
    try:
        from aflowctl import benchmarks

        kind = getattr(benchmarks.get(name), "kind", None)
    except Exception:  # noqa: BLE001 - unknown benchmark: generic seed
        kind = None
    return _root() / (GENERIC_CODE if kind == "code" else GENERIC)


def seed_workflow(dataset: str) -> WorkflowSource:
    """The seed workflow of ``dataset`` (imports already rewritten)."""
    folder = seed_folder(dataset)
    graph = (folder / "graph.py").read_text(encoding="utf-8")
    prompt = (folder / "prompt.py").read_text(encoding="utf-8")
    return WorkflowSource(graph=rewrite_imports(graph), prompt=rewrite_imports(prompt))
