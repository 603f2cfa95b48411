"""`aflowctl data list` and `aflowctl data fetch` through Typer's CliRunner."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from aflowctl import paths
from aflowctl.cli import app

runner = CliRunner()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_json_without_data(monkeypatch):
    monkeypatch.delenv("AFLOWCTL_DATA_PATH", raising=False)
    r = runner.invoke(app, ["data", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    by = {(x["benchmark"], x["split"]): x for x in rows}
    for name in ("gsm8k", "math", "humaneval", "mbpp", "hotpotqa", "drop"):
        assert by[(name, "validate")]["present"] is False
        assert by[(name, "test")]["present"] is False
        sample = by[(name, "sample")]
        assert sample["present"] and 20 <= sample["count"] <= 30
        assert sample["origin"] == "shipped with the package"
        assert len(sample["sha256"]) == 64
        assert "SOURCE.md" in sample["source"]
    assert by[("humaneval", "public_test")]["present"]


def test_list_shows_shared_data_with_counts_and_checksums(shared_data):
    r = runner.invoke(app, ["data", "list", "--json"])
    assert r.exit_code == 0, r.output
    by = {(x["benchmark"], x["split"]): x for x in json.loads(r.stdout)}
    expected = {
        ("gsm8k", "validate"): 264, ("gsm8k", "test"): 1055, ("math", "validate"): 119, ("math", "test"): 486,
        ("humaneval", "validate"): 33, ("humaneval", "test"): 131, ("humaneval", "public_test"): 159,
        ("mbpp", "validate"): 86, ("mbpp", "test"): 341, ("mbpp", "public_test"): 427,
        ("hotpotqa", "validate"): 200, ("drop", "validate"): 200, ("drop", "test"): 800,
    }
    for key, count in expected.items():
        row = by[key]
        assert row["count"] == count, key
        assert row["origin"] == "AFLOWCTL_DATA_PATH"
        assert row["sha256"] == _sha(shared_data / f"{key[0]}_{key[1]}.jsonl")
    assert by[("hotpotqa", "test")]["present"] is False
    # the table form names what is missing and how to fetch it
    r = runner.invoke(app, ["data", "list"])
    assert r.exit_code == 0
    assert "hotpotqa/test" in r.stdout and "aflowctl data fetch" in r.stdout


def test_fetch_from_folder_copies_and_records_source(shared_data, monkeypatch):
    monkeypatch.delenv("AFLOWCTL_DATA_PATH", raising=False)
    r = runner.invoke(app, ["data", "fetch", "humaneval", "--from", str(shared_data), "--json"])
    assert r.exit_code == 0, r.output
    got = {x["split"]: x for x in json.loads(r.stdout)}
    assert set(got) == {"validate", "test", "public_test"}
    for split, x in got.items():
        target = paths.data_dir() / f"humaneval_{split}.jsonl"
        assert x["path"] == str(target)
        assert target.read_bytes() == (shared_data / f"humaneval_{split}.jsonl").read_bytes()
        assert x["sha256"] == _sha(target)
    r = runner.invoke(app, ["data", "list", "humaneval", "--json"])
    by = {x["split"]: x for x in json.loads(r.stdout)}
    assert by["test"]["count"] == 131 and by["test"]["origin"] == "data dir"
    assert by["test"]["source"] == str((shared_data / "humaneval_test.jsonl").resolve())
    manifest = json.loads((paths.data_dir() / "SOURCES.json").read_text())
    assert manifest["humaneval_test.jsonl"]["sha256"] == by["test"]["sha256"]
    # and the benchmark now loads from the data dir
    from aflowctl import benchmarks

    assert len(benchmarks.get("humaneval").load("test")) == 131


def test_fetch_one_split_and_a_single_file(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("AFLOWCTL_DATA_PATH", raising=False)
    r = runner.invoke(app, ["data", "fetch", "gsm8k", "--from", str(shared_data), "--split", "validate"])
    assert r.exit_code == 0, r.output
    assert "264 problems" in r.stdout
    assert (paths.data_dir() / "gsm8k_validate.jsonl").is_file()
    assert not (paths.data_dir() / "gsm8k_test.jsonl").exists()
    # a file with another name needs --split
    f = tmp_path / "my_drop.jsonl"
    f.write_bytes((shared_data / "drop_validate.jsonl").read_bytes())
    r = runner.invoke(app, ["data", "fetch", "drop", "--from", str(f)])
    assert r.exit_code == 1 and "add --split" in r.output
    r = runner.invoke(app, ["data", "fetch", "drop", "--from", str(f), "--split", "test", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["count"] == 200


def test_fetch_errors(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("AFLOWCTL_DATA_PATH", raising=False)
    r = runner.invoke(app, ["data", "fetch", "nope", "--from", str(shared_data)])
    assert r.exit_code == 1
    assert "unknown benchmark 'nope'" in r.output and "gsm8k" in r.output
    r = runner.invoke(app, ["data", "fetch", "hotpotqa", "--from", str(shared_data), "--split", "test"])
    assert r.exit_code == 1 and "hotpotqa_test.jsonl not found" in r.output
    r = runner.invoke(app, ["data", "fetch", "gsm8k", "--from", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(app, ["data", "fetch", "gsm8k", "--from", str(shared_data), "--split", "dev"])
    assert r.exit_code == 1 and "no split 'dev'" in r.output
    # a file that is not the benchmark's is refused and nothing is written
    r = runner.invoke(app, ["data", "fetch", "gsm8k", "--from", str(shared_data / "drop_validate.jsonl"), "--split", "validate"])
    assert r.exit_code == 1 and "lacks field" in r.output
    assert not (paths.data_dir() / "gsm8k_validate.jsonl").exists()
    bad = tmp_path / "gsm8k_validate.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\nnot json\n')
    r = runner.invoke(app, ["data", "fetch", "gsm8k", "--from", str(bad)])
    assert r.exit_code == 1 and "gsm8k_validate.jsonl:2 is not valid JSON" in r.output


def test_fetch_from_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["data", "fetch", "gsm8k"])
    assert r.exit_code == 1
    assert "HF_HUB_OFFLINE" in r.output and "--from PATH" in r.output
    # DROP's AFlow split cannot be rebuilt from the hub at all
    r = runner.invoke(app, ["data", "fetch", "drop"])
    assert r.exit_code == 1 and "cannot be fetched from the Hugging Face hub" in r.output


def test_fetch_from_hub_without_datasets(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    r = runner.invoke(app, ["data", "fetch", "humaneval"])
    assert r.exit_code == 1
    assert "needs the `datasets` library" in r.output and "pip install datasets" in r.output
