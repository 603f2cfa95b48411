"""Seed workflows: one graph per kind, one prompt per dataset, exported in AFlow's layout."""

from __future__ import annotations

import json

import pytest

from aflowctl import benchmarks
from aflowctl.workflow import aflow_io, seeds
from aflowctl.workflow.loader import canonical_hash, check_source

# arith is the aflowctl-arith plugin's benchmark (not loaded under tests); its seed ships here
KINDS = {"gsm8k": "math", "math": "math", "arith": "math", "hotpotqa": "qa", "drop": "qa", "humaneval": "code",
         "mbpp": "code"}
DATASETS = sorted(KINDS)


def test_one_graph_per_kind_and_a_prompt_per_dataset():
    graphs = sorted(p.parent.name for p in seeds._root().glob("*/graph.py"))
    assert graphs == ["code", "solve"]
    assert seeds.available() == sorted(DATASETS)
    for name in DATASETS:
        kind = KINDS[name]
        assert name == "arith" or benchmarks.get(name).kind == kind
        assert seeds.seed_folder(name).name == ("code" if kind == "code" else "solve"), name
        src = seeds.seed_workflow(name)
        constant = "CODE_PROMPT" if kind == "code" else "SOLVE_PROMPT"
        assert f"prompt_custom.{constant}" in src.graph and src.prompt.startswith(f"{constant} = ")
    # each dataset has its own instruction; seeds differ only by their prompts
    assert len({seeds.seed_workflow(n).prompt for n in DATASETS}) == len(DATASETS)
    assert seeds.seed_workflow("gsm8k").graph == seeds.seed_workflow("drop").graph
    assert seeds.seed_workflow("humaneval").graph == seeds.seed_workflow("mbpp").graph


@pytest.mark.parametrize("name", ["graph", "_generic", "", "  GSM8K  "])
def test_file_names_that_are_not_datasets(name):
    src = seeds.seed_workflow(name)
    expected = "gsm8k" if name.strip().lower() == "gsm8k" else "no-such-dataset"
    assert src == seeds.seed_workflow(expected)
    check_source(src)


@pytest.mark.parametrize("name", DATASETS)
def test_every_seed_exports_in_aflow_layout_and_reads_back(tmp_path, name):
    src = seeds.seed_workflow(name)
    ws = aflow_io.aflow_dataset(name)
    folder = aflow_io.export_round(tmp_path, 1, src, {"score": 0.5}, dataset=ws)
    assert sorted(p.name for p in folder.iterdir()) == ["__init__.py", "graph.py", "prompt.py", "results.json"]
    graph = (folder / "graph.py").read_text()
    assert f"import workspace.{ws}.workflows.template.operator as operator" in graph
    assert f"import workspace.{ws}.workflows.round_1.prompt as prompt_custom" in graph
    assert json.loads((tmp_path / "results.json").read_text())[0]["round"] == 1
    assert canonical_hash(aflow_io.import_round(folder).source) == canonical_hash(src)
