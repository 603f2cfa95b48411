"""Import and export AFlow's round folders.

AFlow keeps a run under ``workspace/<DATASET>/workflows/``::

    workflows/
      results.json        [{"round": N, "score": s, "avg_cost": c, "total_cost": t, "time": "..."}, ...]
      round_1/graph.py    class Workflow (AFlow import lines)
      round_1/prompt.py   prompt constants
      round_1/__init__.py
      round_2/...

:func:`import_round` reads one ``round_N`` folder (imports rewritten) with its rows of
the parent ``results.json``; :func:`export_round` writes one in that layout, with
AFlow's own import lines so AFlow can load it back, appending a row to
``results.json`` (and writing ``round_N/results.json`` with the full result dict).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import NotFoundError, WorkflowError
from aflowctl.workflow.loader import WorkflowSource, load_folder

_ROUND = re.compile(r"^round_(\d+)$")


@dataclass
class AflowRound:
    """One AFlow round: its number, sources (imports rewritten) and results rows."""

    round: int
    source: WorkflowSource
    results: list[dict] = field(default_factory=list)
    path: Optional[Path] = None

    @property
    def score(self) -> Optional[float]:
        scores = [r["score"] for r in self.results if isinstance(r.get("score"), (int, float))]
        return sum(scores) / len(scores) if scores else None


def round_number(path: str | Path) -> int:
    m = _ROUND.match(Path(path).name)
    if not m:
        raise WorkflowError(f"{path} is not an AFlow round folder", "AFlow round folders are named round_N")
    return int(m.group(1))


def _read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise WorkflowError(f"{path} is not valid JSON", "fix or remove the file") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise WorkflowError(f"{path} is not a list of round results", "AFlow writes a JSON list of {round, score, ...}")
    return [r for r in data if isinstance(r, dict)]


def import_round(path: str | Path) -> AflowRound:
    """Read ``round_N`` (graph.py, prompt.py) and its results rows."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NotFoundError(f"AFlow round folder {p} does not exist", "pass workspace/<DATASET>/workflows/round_N")
    n = round_number(p)
    src = load_folder(p)
    rows = [r for r in _read_results(p.parent / "results.json") if r.get("round") == n]
    if not rows:
        rows = _read_results(p / "results.json")
    return AflowRound(round=n, source=src, results=rows, path=p)


def list_rounds(workflows_dir: str | Path) -> list[AflowRound]:
    """Every ``round_N`` under an AFlow ``workflows`` folder, by round number."""
    d = Path(workflows_dir).expanduser()
    if not d.is_dir():
        raise NotFoundError(f"AFlow workflows folder {d} does not exist", "pass workspace/<DATASET>/workflows")
    rounds = [import_round(c) for c in sorted(d.iterdir()) if c.is_dir() and _ROUND.match(c.name)]
    return sorted(rounds, key=lambda r: r.round)


def to_aflow_source(src: WorkflowSource, dataset: str, round_n: int) -> WorkflowSource:
    """The sources with AFlow's import lines (``workspace.<DATASET>...``) put back."""
    ws = re.sub(r"[^A-Za-z0-9_]", "_", dataset) or "Dataset"
    mapping = {
        "operator": f"import workspace.{ws}.workflows.template.operator as operator",
        "prompt_custom": f"import workspace.{ws}.workflows.round_{round_n}.prompt as prompt_custom",
        "create_llm_instance": "from scripts.async_llm import create_llm_instance",
        "DatasetType": "from scripts.evaluator import DatasetType",
    }

    def repl(m: re.Match) -> str:
        names = [n.strip() for n in m.group(1).split(",") if n.strip()]
        if all(n in mapping for n in names):
            return "\n".join(mapping[n] for n in names)
        return m.group(0)

    graph = re.sub(r"^from aflowctl\.workflow\.api import ([A-Za-z_, ]+)$", repl, src.graph, flags=re.M)
    return WorkflowSource(graph=graph, prompt=src.prompt)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def export_round(
    path: str | Path,
    round_n: int,
    src: WorkflowSource,
    results: dict[str, Any] | None = None,
    *,
    dataset: str = "Dataset",
) -> Path:
    """Write ``path/round_N/{graph.py,prompt.py,__init__.py,results.json}`` and append
    ``{"round", "score", "avg_cost", "total_cost", "time"}`` to ``path/results.json``.

    ``path`` is the ``workflows`` folder; ``results`` any dict (``score``,
    ``avg_cost``, ``total_cost`` are copied into AFlow's row; with ``scores``, a list
    of per-repeat scores, one row per repeat as AFlow writes them). Rows of the same
    round already there are replaced. Returns the round folder.
    """
    if int(round_n) < 1:
        raise WorkflowError(f"round number must be 1 or more (got {round_n})", "AFlow counts rounds from 1")
    base = Path(path).expanduser()
    folder = base / f"round_{int(round_n)}"
    folder.mkdir(parents=True, exist_ok=True)
    aflow_src = to_aflow_source(src, dataset, int(round_n))
    (folder / "graph.py").write_text(aflow_src.graph, encoding="utf-8")
    (folder / "prompt.py").write_text(aflow_src.prompt, encoding="utf-8")
    (folder / "__init__.py").write_text("", encoding="utf-8")
    res = dict(results or {})
    _atomic_write(folder / "results.json", json.dumps(res, indent=2, default=str) + "\n")
    when = str(res.get("time") or datetime.now())
    scores = res.get("scores") if isinstance(res.get("scores"), list) and res.get("scores") else [res.get("score")]
    new_rows = [  # AFlow writes one row per validation run
        {"round": int(round_n), "score": s, "avg_cost": res.get("avg_cost"), "total_cost": res.get("total_cost"),
         "time": when}
        for s in scores
    ]
    rows = [r for r in _read_results(base / "results.json") if r.get("round") != int(round_n)]
    rows.extend(new_rows)
    rows.sort(key=lambda r: (r.get("round") or 0))
    _atomic_write(base / "results.json", json.dumps(rows, indent=4, default=str) + "\n")
    return folder
