"""`aflowctl export RUN --aflow DIR`: AFlow round folders that load back to the same workflows."""

from __future__ import annotations

import ast
import json

import pytest
from typer.testing import CliRunner

from aflowctl.cli import app
from aflowctl.reporting.export import ExportError, export_aflow
from aflowctl.workflow.aflow_io import from_aflow_source, to_aflow_source
from aflowctl.store import Run, open_store, queries
from aflowctl.workflow.loader import WorkflowSource, canonical_hash, check_source, load_folder
from helpers.store_runs import Child, build_optimize_run, ts

runner = CliRunner()

PLAN = [
    ("root", [Child("a", "ensemble", [0.6, 0.7, 0.65])]),
    ("a", [Child("b", "programmer", None), Child("c", "review", [0.55, 0.6, 0.5])]),  # K = 2, one invalid
    ("a", [Child("d", "malformed", None, has_code=False)]),  # nothing valid this round
    ("c", [Child("e", "revise", [0.8, 0.75, 0.7], test=[0.7])]),
]


@pytest.fixture
def store():
    st = open_store()
    build_optimize_run(st, "opt-x", PLAN)
    return st


def test_export_writes_aflow_rounds_that_load_back(store, tmp_path):
    out = tmp_path / "workspace" / "GSM8K" / "workflows"
    r = runner.invoke(app, ["export", "opt-x", "--aflow", str(out)])
    assert r.exit_code == 0, r.output
    wfs = {w["id"]: w for w in queries.list_workflows(store, run_id="opt-x")}
    valid = [w for w in wfs.values() if w["status"] == "valid"]
    invalid = [w for w in wfs.values() if w["status"] == "invalid"]
    assert len(valid) == 4 and len(invalid) == 1
    rounds = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert rounds == ["round_1", "round_2", "round_3", "round_4"]
    manifest = json.loads((out / "aflowctl_export.json").read_text())
    assert manifest["skipped_workflow_ids"] == [invalid[0]["id"]]
    num = {m["workflow_id"]: m["aflow_round"] for m in manifest["rounds"]}
    # AFlow numbering follows creation order; parents map to AFlow round numbers
    assert [m["round"] for m in manifest["rounds"]] == [1, 2, 3, 5]
    for wid, n in num.items():
        folder = out / f"round_{n}"
        graph = (folder / "graph.py").read_text()
        assert "aflowctl" not in graph
        assert "import workspace.GSM8K.workflows.template.operator as operator" in graph
        assert f"import workspace.GSM8K.workflows.round_{n}.prompt as prompt_custom" in graph
        assert "from scripts.async_llm import create_llm_instance" in graph
        assert (folder / "__init__.py").is_file()
        full = json.loads((folder / "results.json").read_text())
        assert full["aflowctl"]["workflow_id"] == wid and full["score"] == pytest.approx(wfs[wid]["score"])
        # the folder loads back (imports rewritten) to the very same workflow
        src = load_folder(folder)
        assert canonical_hash(src) == wfs[wid]["hash"]
        assert len(graph.splitlines()) == len(wfs[wid]["graph_code"].splitlines())
        parent = wfs[wid]["parent_id"]
        if parent is None:
            assert not (folder / "experience.json").exists()
        else:
            exp = json.loads((folder / "experience.json").read_text())
            assert exp["father node"] == num[parent]
            assert exp["modification"] == wfs[wid]["modification"]
            assert exp["before"] == pytest.approx(wfs[parent]["score"])
            assert exp["after"] == pytest.approx(wfs[wid]["score"])
            assert exp["succeed"] is (wfs[wid]["score"] > wfs[parent]["score"])
    # results.json: one entry per validation repeat, AFlow's keys
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 12
    assert all(set(e) == {"round", "score", "avg_cost", "total_cost", "time"} for e in results)
    by_round: dict[int, list[float]] = {}
    for e in results:
        by_round.setdefault(e["round"], []).append(e["score"])
        assert e["total_cost"] == pytest.approx(0.002) and e["avg_cost"] == pytest.approx(0.002 / 4)
    assert by_round == {1: [0.5, 0.5, 0.5], 2: [0.6, 0.7, 0.65], 3: [0.55, 0.6, 0.5], 4: [0.8, 0.75, 0.7]}
    # log.json: failed validation cases of that round (scores are fractions of 4 problems)
    log = json.loads((out / "round_1" / "log.json").read_text())
    assert len(log) == 3 * 2 and all(c["score"] == 0.0 for c in log)


def test_export_refuses_to_overwrite_without_force(store, tmp_path):
    r = runner.invoke(app, ["export", "opt-x", "--aflow", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (tmp_path / "round_9").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["export", "opt-x", "--aflow", str(tmp_path)])
    assert r.exit_code == 1 and "already holds AFlow rounds" in r.stderr and "--force" in r.stderr
    r = runner.invoke(app, ["export", "opt-x", "--aflow", str(tmp_path), "--force"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "round_9").exists() and (tmp_path / "keep.txt").read_text() == "mine"


def test_export_unknown_and_empty_runs(tmp_path):
    st = open_store()
    r = runner.invoke(app, ["export", "ghost", "--aflow", str(tmp_path)])
    assert r.exit_code == 1 and "run 'ghost' does not exist" in r.stderr
    with st.write() as s:
        s.add(Run(id="fresh", kind="optimize", dataset="gsm8k", created_at=ts(0), updated_at=ts(0)))
    with pytest.raises(ExportError, match="no evaluated workflow"):
        export_aflow(st, "fresh", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_to_aflow_source_keeps_lines_and_aliases():
    src = (
        "import json\n"
        "from aflowctl.workflow.api import (operator as op,\n"
        "    prompt_custom, Custom)\n"
        "from aflowctl.workflow.api import create_llm_instance, DatasetType\n"
        "\n"
        "class Workflow:\n"
        "    def __init__(self, name, llm_config, dataset):\n"
        "        self.llm = create_llm_instance(llm_config)\n"
        "        self.c = op.Custom(self.llm)\n"
        "    async def __call__(self, problem):\n"
        "        return await self.c(input=problem, instruction=prompt_custom.P), 0.0\n"
    )
    out = to_aflow_source(src, "MATH", 7)
    assert len(out.splitlines()) == len(src.splitlines())
    assert "aflowctl" not in out
    assert out.splitlines()[1] == ("import workspace.MATH.workflows.template.operator as op; "
                                   "import workspace.MATH.workflows.round_7.prompt as prompt_custom; "
                                   "from scripts.operators import Custom")
    back = from_aflow_source(out)
    bound = sorted((a.name, a.asname) for n in ast.walk(ast.parse(back)) if isinstance(n, ast.ImportFrom)
                   and n.module == "aflowctl.workflow.api" for a in n.names)
    assert bound == sorted([("operator", "op"), ("prompt_custom", None), ("Custom", None),
                            ("create_llm_instance", None), ("DatasetType", None)])
    check_source(WorkflowSource(back, 'P = "x"\n'))
    bad = "from aflowctl.workflow.api import operator\ndef broken(:\n"
    assert to_aflow_source(bad, "MATH", 1) == bad
