"""AFlow round folders: export in AFlow's layout, import back, hash unchanged."""

from __future__ import annotations

import json

import pytest

from aflowctl.errors import NotFoundError, WorkflowError
from aflowctl.workflow import aflow_io, seeds
from aflowctl.workflow.loader import WorkflowSource, canonical_hash, check_source


def test_export_then_import_round_trip(tmp_path):
    wf_dir = tmp_path / "workspace" / "GSM8K" / "workflows"
    src = seeds.seed_workflow("gsm8k")
    folder = aflow_io.export_round(wf_dir, 1, src, {"score": 0.5, "avg_cost": 0.01, "total_cost": 2.0,
                                                     "scores": [0.4, 0.6], "extra": {"n": 3}}, dataset="GSM8K")
    assert folder == wf_dir / "round_1"
    graph = (folder / "graph.py").read_text()
    # AFlow's own import lines, so AFlow itself can load the folder
    assert "import workspace.GSM8K.workflows.template.operator as operator" in graph
    assert "import workspace.GSM8K.workflows.round_1.prompt as prompt_custom" in graph
    assert "from scripts.async_llm import create_llm_instance" in graph
    assert (folder / "__init__.py").exists()
    rows = json.loads((wf_dir / "results.json").read_text())
    assert [r["score"] for r in rows] == [0.4, 0.6] and all(r["round"] == 1 and r["total_cost"] == 2.0 for r in rows)
    assert json.loads((folder / "results.json").read_text())["extra"] == {"n": 3}

    rnd = aflow_io.import_round(folder)
    assert rnd.round == 1 and rnd.score == pytest.approx(0.5) and len(rnd.results) == 2
    assert canonical_hash(rnd.source) == canonical_hash(src)
    check_source(rnd.source)


def test_rounds_accumulate_and_reexport_replaces(tmp_path):
    src = seeds.seed_workflow("math")
    changed = WorkflowSource(src.graph, src.prompt.replace("step by step", "carefully"))
    aflow_io.export_round(tmp_path, 1, src, {"score": 0.2})
    aflow_io.export_round(tmp_path, 2, changed, {"score": 0.3})
    aflow_io.export_round(tmp_path, 2, changed, {"score": 0.35})
    rounds = aflow_io.list_rounds(tmp_path)
    assert [r.round for r in rounds] == [1, 2]
    assert [r.score for r in rounds] == [0.2, 0.35]
    assert canonical_hash(rounds[1].source) == canonical_hash(changed) != canonical_hash(rounds[0].source)


def test_bad_round_folders(tmp_path):
    with pytest.raises(NotFoundError):
        aflow_io.import_round(tmp_path / "round_9")
    (tmp_path / "best").mkdir()
    with pytest.raises(WorkflowError, match="not an AFlow round folder"):
        aflow_io.import_round(tmp_path / "best")
    with pytest.raises(WorkflowError, match="round number"):
        aflow_io.export_round(tmp_path, 0, seeds.seed_workflow("gsm8k"))
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "graph.py").write_text("x = 1\n")
    with pytest.raises(WorkflowError, match="no Workflow class"):
        aflow_io.import_round(tmp_path / "round_1")
