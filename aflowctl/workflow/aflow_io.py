"""AFlow's format, both directions: import lines and round folders.

Import lines (one converter, both directions):

* :func:`from_aflow_source` rewrites AFlow's/MetaGPT's import lines
  (``import workspace.X.workflows.template.operator as operator``, ``from
  scripts.operators import Custom``...) to ``from aflowctl.workflow.api import ...``;
  the loader applies it to every source it reads, so AFlow workflows load as they are.
* :func:`to_aflow_source` is its inverse: ``from aflowctl.workflow.api import ...``
  back to AFlow's lines, for a given dataset folder and round.

Both keep line numbers (a statement keeps its line span) and return a source that
does not parse unchanged; ``from_aflow_source(to_aflow_source(s))`` gives back ``s``'s
imports.

Round folders: AFlow keeps a run under ``workspace/<DATASET>/workflows/``::

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

import ast
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from aflowctl.errors import NotFoundError, WorkflowError

if TYPE_CHECKING:  # the loader imports this module: its names are imported where used
    from aflowctl.workflow.loader import WorkflowSource

API_MODULE = "aflowctl.workflow.api"

#: first segment of module paths that belong to AFlow / MetaGPT
_AFLOW_ROOTS = ("workspace", "scripts", "metagpt", "examples", "aflow")

#: aflowctl benchmark name -> AFlow's dataset name (its workspace folder)
AFLOW_DATASETS = {
    "gsm8k": "GSM8K",
    "math": "MATH",
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
    "hotpotqa": "HotpotQA",
    "drop": "DROP",
}

#: api names that AFlow imports from a module of its own (anything else is an operator class)
_AFLOW_MODULES = {
    "create_llm_instance": "scripts.async_llm",
    "DatasetType": "scripts.evaluator",
    "CostManager": "metagpt.utils.cost_manager",
}

_ROUND = re.compile(r"^round_(\d+)$")


# --------------------------------------------------------------------------- import lines


def splice(source: str, edits: list[tuple[int, int, int, int, str]]) -> str:
    """Replace AST spans ``(lineno, col, end_lineno, end_col, text)`` (1-based lines,
    byte columns as ``ast`` reports them) in ``source``; everything else is kept."""
    if not edits:
        return source
    data = source.encode("utf-8")
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    out = data
    for lineno, col, end_lineno, end_col, text in sorted(edits, reverse=True):
        a = starts[lineno - 1] + col
        b = starts[end_lineno - 1] + end_col
        out = out[:a] + text.encode("utf-8") + out[b:]
    return out.decode("utf-8")


def _rewrite(source: str, convert: Any) -> str:
    """Apply ``convert(node) -> replacement text or None`` to every statement of
    ``source``, keeping each replaced statement's line span."""
    if not source:
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    edits: list[tuple[int, int, int, int, str]] = []
    for node in ast.walk(tree):
        text = convert(node)
        if text is not None and isinstance(node, ast.stmt):
            edits.append((node.lineno, node.col_offset, node.end_lineno or node.lineno, node.end_col_offset or 0, text))
    return splice(source, edits)


def _is_aflow_module(mod: Optional[str]) -> bool:
    return bool(mod) and mod.split(".", 1)[0] in _AFLOW_ROOTS  # type: ignore[union-attr]


def _map_import(node: ast.AST) -> Optional[tuple[list[str], list[str]]]:
    """For an AFlow import statement: (kept plain imports, api names 'x' or 'x as y').

    None when the statement is not an AFlow import.
    """
    if isinstance(node, ast.Import):
        kept: list[str] = []
        api: list[str] = []
        for a in node.names:
            if not _is_aflow_module(a.name):
                kept.append(a.name + (f" as {a.asname}" if a.asname else ""))
                continue
            last = a.name.rsplit(".", 1)[-1]
            target = {"operator": "operator", "operators": "operator", "prompt": "prompt_custom"}.get(last)
            if target is None or a.asname is None:
                kept.append(a.name + (f" as {a.asname}" if a.asname else ""))
                continue
            api.append(target if a.asname == target else f"{target} as {a.asname}")
        return (kept, api) if api else None
    if isinstance(node, ast.ImportFrom):
        if node.level or not _is_aflow_module(node.module):
            return None
        api = []
        for a in node.names:
            name = a.name
            if name == "*":
                return ([], ["*"])
            if name == "prompt":
                name = "prompt_custom"
            if name == "operators":
                name = "operator"
            asname = a.asname or a.name
            api.append(name if asname == name else f"{name} as {asname}")
        return ([], api)
    return None


def _from_aflow_statement(node: ast.AST) -> Optional[str]:
    mapped = _map_import(node)
    if mapped is None:
        return None
    kept, api = mapped
    height = node.end_lineno - node.lineno  # type: ignore[attr-defined]
    if height == 0:
        text = f"from {API_MODULE} import {', '.join(api)}"
    else:
        text = f"from {API_MODULE} import ({', '.join(api)}" + "\n" * height + ")"
    return f"import {', '.join(kept)}; " + text if kept else text


def from_aflow_source(source: str) -> str:
    """Rewrite AFlow's/MetaGPT's import lines to ``from aflowctl.workflow.api import ...``.

    Handles ``import workspace.X.workflows.template.operator as operator``,
    ``import workspace.X.workflows.round_N.prompt as prompt_custom``,
    ``from scripts.async_llm import create_llm_instance``, ``from scripts.evaluator
    import DatasetType``, ``from scripts.operators import Custom`` and the older
    ``metagpt.ext.aflow...`` / ``metagpt.provider...`` variants. Line numbers are
    kept (a multi-line import becomes a parenthesised one of the same height).
    Idempotent. A source that does not parse is returned unchanged (the check reports it).
    """
    return _rewrite(source, _from_aflow_statement)


def workspace_name(dataset: str) -> str:
    """The dataset as a Python identifier, for ``workspace.<DATASET>`` module paths."""
    return re.sub(r"[^A-Za-z0-9_]", "_", dataset or "") or "Dataset"


def _aflow_import(name: str, asname: Optional[str], ws: str, round_n: int) -> str:
    local = asname or name
    if name == "operator":
        return f"import workspace.{ws}.workflows.template.operator as {local}"
    if name == "prompt_custom":
        return f"import workspace.{ws}.workflows.round_{round_n}.prompt as {local}"
    module = _AFLOW_MODULES.get(name, "scripts.operators")  # an operator class imported by name
    return f"from {module} import {name}" + (f" as {asname}" if asname and asname != name else "")


def to_aflow_source(source: str, dataset: str, round_n: int) -> str:
    """Replace ``from aflowctl.workflow.api import ...`` statements with AFlow's import
    lines for ``workspace/<dataset>`` round ``round_n`` (the inverse of
    :func:`from_aflow_source`).

    Each statement is replaced in place, keeping its line span (several AFlow imports
    from one statement are joined with ``;``); aliases and operator classes imported
    by name are kept. A source that does not parse is returned unchanged."""
    if not source or API_MODULE not in source:
        return source
    ws = workspace_name(dataset)

    def convert(node: ast.AST) -> Optional[str]:
        if not (isinstance(node, ast.ImportFrom) and node.module == API_MODULE and not node.level):
            return None
        stmts = [_aflow_import(a.name, a.asname, ws, round_n) for a in node.names]
        return "; ".join(stmts) + "\n" * (node.end_lineno - node.lineno)  # type: ignore[operator]

    return _rewrite(source, convert)


def aflow_dataset(dataset: Optional[str]) -> str:
    """AFlow's dataset folder name for an aflowctl benchmark name (``gsm8k`` -> ``GSM8K``)."""
    name = (dataset or "").strip()
    return AFLOW_DATASETS.get(name.lower(), name or "Dataset")


# --------------------------------------------------------------------------- round folders


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
    from aflowctl.workflow.loader import load_folder

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
    (folder / "graph.py").write_text(to_aflow_source(src.graph, dataset, int(round_n)), encoding="utf-8")
    (folder / "prompt.py").write_text(to_aflow_source(src.prompt, dataset, int(round_n)), encoding="utf-8")
    (folder / "__init__.py").write_text("", encoding="utf-8")
    res = dict(results or {})
    _atomic_write(folder / "results.json", json.dumps(res, indent=2, default=str) + "\n")
    when = str(res.get("time") or datetime.now())
    given = res.get("scores")
    scores = given if isinstance(given, list) and given else [res.get("score")]
    new_rows = [  # AFlow writes one row per validation run
        {
            "round": int(round_n),
            "score": s,
            "avg_cost": res.get("avg_cost"),
            "total_cost": res.get("total_cost"),
            "time": when,
        }
        for s in scores
    ]
    rows = [r for r in _read_results(base / "results.json") if r.get("round") != int(round_n)]
    rows.extend(new_rows)
    rows.sort(key=lambda r: r.get("round") or 0)
    _atomic_write(base / "results.json", json.dumps(rows, indent=4, default=str) + "\n")
    return folder
