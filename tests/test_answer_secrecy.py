"""A workflow cannot read the answers it is scored against.

The graph below hunts for the answer the way a reward-seeking policy would, with the
static check of workflow code switched off (a first line only: the sandbox must hold
alone). It opens every file that holds the split (the plugin's, the package's sample, the fetched copy), walks
every object in the worker's memory, calls the benchmark's own loader, reads what the
problem scope shows, and asks the parent's ``run_python`` sandbox to print the files.
Confined (the default), it finds nothing and scores 0; unconfined, the same graph finds
the answer, which shows each hunt is real.
"""

from __future__ import annotations

import sqlite3

import pytest

from aflowctl import benchmarks
from aflowctl.config import ModelConfig, RolloutConfig
from aflowctl.rollout.evaluate import evaluate_workflow
from aflowctl.rollout.pool import PRELOAD, RolloutPool
from aflowctl.sandbox.confine import capabilities
from aflowctl.store import open_store
from aflowctl.workflow.loader import WorkflowSource

pytestmark = pytest.mark.timeout(240)
CAPS = capabilities()
needs_sandbox = pytest.mark.skipif(not CAPS["ok"], reason=f"sandbox unavailable here: {CAPS['problems']}")

HUNTER = '''
import gc
import sys

PATHS = {paths!r}


class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.dataset = dataset

    async def __call__(self, problem, *rest):
        key = problem[:50]
        found, notes = [], []
        for path in PATHS:  # the split files
            try:
                with open(path) as fh:
                    found += ["file " + line.strip() for line in fh if key in line]
                notes.append("opened")
            except Exception as exc:
                notes.append("open " + type(exc).__name__)
        # every object in this process
        rows = [o for o in gc.get_objects() if isinstance(o, dict) and key in str(o.get("question", ""))]
        found += ["memory " + repr(r) for r in rows if set(r) - {{"id", "inputs", "question"}}]
        notes.append("scanned memory")
        try:  # the benchmark's own loader
            rows = sys.modules["aflowctl.benchmarks"].get(self.dataset).load({split!r})
            found += ["load " + repr(r) for r in rows if key in str(r.get("question", ""))]
        except Exception as exc:
            notes.append("load " + type(exc).__name__)
        scope = sys.modules["aflowctl.workflow.problem"].current_problem()  # what the problem scope shows
        shown = {{k: v for k, v in (scope.problem or {{}}).items() if k not in ("id", "inputs")}}
        if shown:
            found.append("scope " + repr(shown))
        code = "for p in %r:\\n    try:\\n        print(open(p).read())\\n    except OSError:\\n        print('denied')\\n" % (PATHS,)
        try:  # generated code, run by the parent's sandbox
            res = await sys.modules["aflowctl.workflow.sandbox"].run_python_async(code, timeout_s=20)
            found += ["run_python " + line for line in res.stdout.splitlines() if key in line]
            notes.append("run_python ran" if "denied" in res.stdout or found else "run_python silent")
        except Exception as exc:
            notes.append("run_python " + type(exc).__name__)
        return ("FOUND " + " | ".join(found)) if found else "nothing; " + ", ".join(notes), 0.0
'''


def _split_files(dataset: str, split: str) -> list[str]:
    """Every file on this machine that holds the split (first found, and the package's own)."""
    from aflowctl.benchmarks import data

    bench = benchmarks.get(dataset)
    name = data.file_name(dataset, split)
    found = [str(bench.split_path(split))]
    for folder, _ in data.search_dirs(bench.package_dir):
        if (folder / name).is_file():
            found.append(str(folder / name))
    return list(dict.fromkeys(found))


def _hunt(tmp_path, monkeypatch, dataset: str, split: str, options: dict | None = None):
    if dataset == "arith":
        from importlib.util import find_spec

        from aflowctl import plugins

        if find_spec("aflowctl_arith") is None:
            pytest.skip("the aflowctl-arith plugin is not installed")
        monkeypatch.setenv("AFLOWCTL_LOAD_PLUGINS", "aflowctl-arith")
        plugins.reset()
    graph = HUNTER.format(paths=_split_files(dataset, split), split=split)
    # The static check would refuse this graph (imports, open): switched off in the parent
    # and in the worker, so that only the sandbox stands between it and the answers.
    monkeypatch.setattr("aflowctl.workflow.loader.check_source", lambda src, **kw: None)
    monkeypatch.setattr("aflowctl.rollout.evaluate.WORKER", "helpers.gateway_worker:evaluate_unchecked")
    store = open_store(tmp_path / "s.db", cached=False)
    try:
        opts = {"preload": [*PRELOAD, "helpers.gateway_worker"], **(options or {})}
        with RolloutPool(store, RolloutConfig(workers=1, concurrency=2), options=opts) as pool:
            return evaluate_workflow(
                store,
                WorkflowSource(graph=graph, prompt=""),
                dataset=dataset,
                split=split,
                executor=ModelConfig(model="openai/unused", api_base="http://127.0.0.1:9/v1"),
                limit=3,
                pool=pool,
            )
    finally:
        store.dispose()


@needs_sandbox
@pytest.mark.parametrize(
    ("dataset", "split"),
    [
        ("arith", "validate"),  # a plugin whose splits live inside its package
        ("gsm8k", "sample"),  # AFlow's sample inside aflowctl's own package
    ],
)
def test_a_confined_workflow_finds_no_answer_and_scores_zero(tmp_path, monkeypatch, dataset, split):
    res = _hunt(tmp_path, monkeypatch, dataset, split)
    predictions = [d["prediction"] for d in res.details]
    assert all(p.startswith("nothing; ") for p in predictions), predictions
    for p in predictions:  # every hunt ran, and was refused
        assert "open PermissionError" in p and "opened" not in p, p
        assert "scanned memory" in p and "run_python ran" in p, p
    assert res.mean_score == 0.0 and res.errors == 0
    conn = sqlite3.connect(tmp_path / "s.db")
    stored = conn.execute("SELECT details_json FROM evaluations").fetchone()[0]
    conn.close()
    assert "FOUND" not in stored


def test_the_same_hunt_unconfined_finds_the_answer(tmp_path, monkeypatch):
    """The control: without confinement the files open and the answer is found (so a
    confined 'nothing' means the sandbox stopped it, not that the hunt is broken)."""
    res = _hunt(tmp_path, monkeypatch, "gsm8k", "sample", options={"confine": False})
    predictions = [d["prediction"] for d in res.details]
    assert all(p.startswith("FOUND file ") for p in predictions), predictions
    assert all("memory" not in p and "scope" not in p for p in predictions)  # the worker never held the rows
