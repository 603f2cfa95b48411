"""`aflowctl export RUN_ID --aflow DIR`: a run's workflows as AFlow round folders.

The target ``DIR`` plays the role of AFlow's ``workspace/<DATASET>/workflows`` folder::

    DIR/results.json            one entry per validation repeat:
                                {round, score, avg_cost, total_cost, time}
    DIR/round_N/graph.py        the workflow, with AFlow's import lines
    DIR/round_N/prompt.py
    DIR/round_N/__init__.py
    DIR/round_N/experience.json {"father node", "modification", "before", "after", "succeed"}
                                (rounds after the first)
    DIR/round_N/log.json        failed validation cases (what the store keeps of them)
    DIR/aflowctl_export.json    how AFlow rounds map to aflowctl workflows

AFlow has one workflow per round, aflowctl may have K per round (``--candidates``)
and rounds whose proposals were all invalid. So the evaluated, valid workflows are
numbered 1, 2, 3... in the order they were created (round, then id); with K = 1 and
no invalid round that is aflowctl's own round numbering. ``"father node"`` is the
parent's AFlow round number. Invalid proposals have no AFlow equivalent and are
listed in ``aflowctl_export.json`` only. AFlow's ``template/`` folder (its operator
module) is not written: copy the folder into an AFlow checkout that has it.

The folders and ``results.json`` rows are written by
:func:`aflowctl.workflow.aflow_io.export_round` (one row per validation repeat; each
round's ``round_N/results.json`` keeps the full result with aflowctl's ids, per-repeat
costs and times); this module adds ``experience.json``, ``log.json`` and the manifest.

Import lines: workflows are stored with ``from aflowctl.workflow.api import ...``; the
export writes AFlow's lines instead (``import workspace.<DATASET>.workflows.template.operator
as operator``, ``import workspace.<DATASET>.workflows.round_N.prompt as prompt_custom``,
``from scripts.async_llm import create_llm_instance``, ...), on the same source lines
(:func:`aflowctl.workflow.aflow_io.to_aflow_source`, done once by ``export_round``), so
``aflowctl.workflow.loader.load_folder`` reads an exported folder back to the same
canonical hash.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aflowctl.errors import AflowctlError
from aflowctl.reporting.history import load_history
from aflowctl.store.db import Store

#: failed validation cases written to each round's log.json, at most
LOG_LIMIT = 50


class ExportError(AflowctlError):
    """A run cannot be exported (target folder in the way, nothing to export)."""


@dataclass
class ExportResult:
    path: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)  # aflow_round, workflow_id, round, parent_aflow_round
    skipped: list[int] = field(default_factory=list)  # workflow ids not exported (invalid or not evaluated)
    results_entries: int = 0


def _failed_cases(evals: list[dict]) -> list[dict]:
    cases = []
    for e in evals:
        try:
            details = json.loads(e.get("details_json") or "[]")
        except ValueError:
            continue
        for d in details if isinstance(details, list) else []:
            if not isinstance(d, dict) or float(d.get("score") or 0.0) >= 1.0:
                continue
            cases.append(
                {
                    "repeat": e["repeat"],
                    "problem_id": d.get("id"),
                    "index": d.get("index"),
                    "score": d.get("score"),
                    "model_output": d.get("answer"),
                    "error": d.get("error"),
                }
            )
            if len(cases) >= LOG_LIMIT:
                return cases
    return cases


def _check_target(path: Path, force: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file, not a folder", "pass a folder to --aflow")
    if not path.exists():
        return
    ours = [
        p
        for p in path.iterdir()
        if (p.is_dir() and p.name.startswith("round_")) or p.name in ("results.json", "aflowctl_export.json")
    ]
    if ours and not force:
        raise ExportError(
            f"{path} already holds AFlow rounds ({', '.join(sorted(p.name for p in ours)[:3])}...)",
            "choose an empty folder, or pass --force to replace its round folders and results.json",
        )
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def export_aflow(store: Store, run_id: str, out_dir: str | Path, *, force: bool = False) -> ExportResult:
    """Write the run's evaluated workflows as AFlow round folders under ``out_dir``."""
    from aflowctl.workflow.aflow_io import aflow_dataset, export_round
    from aflowctl.workflow.loader import WorkflowSource

    hist = load_history(store, run_id, details=True)
    wfs = hist["workflows"]
    exportable = [w for w in wfs if w["status"] == "valid" and w["evaluations"].get("validate")]
    if not exportable:
        raise ExportError(
            f"run '{run_id}' has no evaluated workflow to export",
            f"wait for its first round to finish (aflowctl inspect workflows --run {run_id})",
        )
    path = Path(out_dir).expanduser()
    _check_target(path, force)
    path.mkdir(parents=True, exist_ok=True)
    dataset = aflow_dataset(hist["run"]["dataset"])
    exps = {e["child_workflow_id"]: e for e in hist["experiences"] if e["child_workflow_id"]}
    number = {w["id"]: i + 1 for i, w in enumerate(exportable)}
    result = ExportResult(path=path, skipped=[w["id"] for w in wfs if w["id"] not in number])
    for w in exportable:
        n = number[w["id"]]
        reps = w["evaluations"]["validate"]
        costs = [ev["cost_usd"] for ev in reps]
        known = [(c, ev["n"]) for c, ev in zip(costs, reps) if c is not None]
        results = {
            "score": w["score"],
            "scores": [ev["score"] for ev in reps],
            # AFlow's row per repeat: the repeat's cost (mean over repeats) and cost per problem
            "avg_cost": (sum(c / k for c, k in known if k) / len(known)) if known else None,
            "total_cost": (sum(c for c, _ in known) / len(known)) if known else None,
            "time": reps[-1]["created_at"],
            "aflowctl": {
                "run_id": run_id,
                "workflow_id": w["id"],
                "round": w["round"],
                "parent_id": w["parent_id"],
                "modification": w["modification"],
                "repeat_costs": costs,
                "repeat_times": [ev["created_at"] for ev in reps],
                "test_score": w["test_score"],
            },
        }
        src = WorkflowSource(graph=w["graph_code"], prompt=w["prompt_code"] or "")
        folder = export_round(path, n, src, results, dataset=dataset)  # converts the import lines
        result.results_entries += len(reps)
        parent_n = number.get(w["parent_id"]) if w["parent_id"] is not None else None
        e = exps.get(w["id"])
        if w["parent_id"] is not None:
            experience = {
                "father node": parent_n,
                "modification": w["modification"] or "",
                "before": e["score_before"] if e else None,
                "after": e["score_after"] if e else w["score"],
                "succeed": bool(e and e["valid"] and e["reward"] > 0),
            }
            (folder / "experience.json").write_text(
                json.dumps(experience, indent=4, ensure_ascii=False), encoding="utf-8"
            )
        (folder / "log.json").write_text(
            json.dumps(_failed_cases(reps), indent=4, ensure_ascii=False), encoding="utf-8"
        )
        result.rounds.append(
            {
                "aflow_round": n,
                "workflow_id": w["id"],
                "round": w["round"],
                "parent_aflow_round": parent_n,
                "score": w["score"],
                "test_score": w["test_score"],
            }
        )
    manifest = {
        "run_id": run_id,
        "dataset": hist["run"]["dataset"],
        "aflow_dataset": dataset,
        "rounds": result.rounds,
        "skipped_workflow_ids": result.skipped,
    }
    (path / "aflowctl_export.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return result
