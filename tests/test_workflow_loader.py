"""Workflow sources: AFlow import rewriting, canonical hash, static checks, folders, instantiate."""

from __future__ import annotations

import asyncio
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aflowctl.errors import NotFoundError, WorkflowError
from aflowctl.llm.types import Sample
from aflowctl.workflow import seeds
from aflowctl.workflow.loader import (
    WorkflowSource, canonical_hash, check_source, instantiate, load_folder, rewrite_imports,
)

# A graph in the layout AFlow's optimizer writes into workspace/<DATASET>/workflows/round_N/.
AFLOW_GRAPH = '''from typing import Literal
import workspace.MATH.workflows.template.operator as operator
import workspace.MATH.workflows.round_7.prompt as prompt_custom
from scripts.async_llm import create_llm_instance

from scripts.evaluator import DatasetType

class Workflow:
    def __init__(
        self,
        name: str,
        llm_config,
        dataset: DatasetType,
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.llm = create_llm_instance(llm_config)
        self.custom = operator.Custom(self.llm)
        self.sc_ensemble = operator.ScEnsemble(self.llm)

    async def __call__(self, problem: str):
        """
        Implementation of the workflow
        """
        solutions = []
        for _ in range(3):
            s = await self.custom(input=problem, instruction=prompt_custom.STEP_PROMPT)
            solutions.append(s["response"])
        best = await self.sc_ensemble(solutions=solutions, problem=problem)
        return best["response"], self.llm.get_usage_summary()["total_cost"]
'''
AFLOW_PROMPT = 'STEP_PROMPT = """Think step by step and put the answer in \\\\boxed{}.\n"""\n'

# The older MetaGPT layout (metagpt/ext/aflow), with a CostManager.
METAGPT_GRAPH = '''from typing import Literal

import metagpt.ext.aflow.scripts.optimized.GSM8K.workflows.template.operator as operator
import metagpt.ext.aflow.scripts.optimized.GSM8K.workflows.round_1.prompt as prompt_custom
from metagpt.provider.llm_provider_registry import create_llm_instance
from metagpt.utils.cost_manager import CostManager

DatasetType = Literal["HumanEval", "MBPP", "GSM8K", "MATH", "HotpotQA", "DROP"]


class Workflow:
    def __init__(self, name: str, llm_config, dataset: DatasetType) -> None:
        self.name = name
        self.dataset = dataset
        self.llm = create_llm_instance(llm_config)
        self.llm.cost_manager = CostManager()
        self.custom = operator.Custom(self.llm)

    async def __call__(self, problem: str):
        solution = await self.custom(input=problem, instruction=prompt_custom.PROMPT)
        return solution["response"], self.llm.cost_manager.total_cost
'''


class FakeLLM:
    def __init__(self, text="answer \\boxed{4}", cost=0.002):
        self.text, self.cost, self.prompts = text, cost, []

    async def generate(self, prompt, **kw):
        self.prompts.append(prompt)
        return Sample(text=self.text, finish_reason="stop", prompt_tokens=3, completion_tokens=2, cost_usd=self.cost,
                      latency_s=0.0, provider="fake", model="fake")


# ------------------------------------------------------------------ rewriting


def test_aflow_import_lines_are_rewritten_keeping_line_numbers():
    out = rewrite_imports(AFLOW_GRAPH)
    lines = out.splitlines()
    assert lines[1] == "from aflowctl.workflow.api import operator"
    assert lines[2] == "from aflowctl.workflow.api import prompt_custom"
    assert lines[3] == "from aflowctl.workflow.api import create_llm_instance"
    assert lines[5] == "from aflowctl.workflow.api import DatasetType"
    assert lines[0] == "from typing import Literal"
    assert len(lines) == len(AFLOW_GRAPH.splitlines())
    assert "workspace" not in out and "scripts." not in out
    assert rewrite_imports(out) == out  # idempotent


def test_metagpt_and_other_variants():
    out = rewrite_imports(METAGPT_GRAPH)
    assert "metagpt" not in out
    assert "from aflowctl.workflow.api import CostManager" in out
    src = (
        "from scripts.operators import Custom, ScEnsemble as SC\n"
        "import asyncio, workspace.X.workflows.template.operator as op\n"
        "from workspace.X.workflows.round_2 import prompt\n"
        "from scripts.evaluator import (\n    DatasetType,\n)\n"
        "x = 1\n"
    )
    out = rewrite_imports(src).splitlines()
    assert out[0] == "from aflowctl.workflow.api import Custom, ScEnsemble as SC"
    assert out[1] == "import asyncio; from aflowctl.workflow.api import operator as op"
    assert out[2] == "from aflowctl.workflow.api import prompt_custom as prompt"
    assert out[3].startswith("from aflowctl.workflow.api import (DatasetType") and out[6] == "x = 1"
    compile("\n".join(out), "g", "exec")


def test_star_import_of_aflow_operators():
    g = ("from scripts.operators import *\nfrom scripts.async_llm import create_llm_instance\n"
         "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n"
         "        self.custom = Custom(create_llm_instance(llm_config))\n"
         "    async def __call__(self, problem):\n        return (await self.custom(input=problem, instruction='I:'))['response'], 0\n")
    assert rewrite_imports(g).startswith("from aflowctl.workflow.api import *\n")
    fake = FakeLLM(text="ok")
    assert asyncio.run(instantiate(WorkflowSource(g, ""), "w", fake, "gsm8k")("x"))[0] == "ok"
    assert fake.prompts == ["I:x"]


def test_canonical_hash_ignores_imports_form_formatting_comments_and_docstrings():
    original = WorkflowSource(AFLOW_GRAPH, AFLOW_PROMPT)
    rewritten = original.rewritten()
    assert canonical_hash(original) == canonical_hash(rewritten)
    noisy = AFLOW_GRAPH.replace('        """\n        Implementation of the workflow\n        """\n', "        # just a comment\n")
    noisy = noisy.replace("solutions = []", "solutions   =   [ ]  # trailing comment")
    noisy = "# header comment\n\n" + noisy.replace("for _ in range(3):", "for _ in range( 3 ):\n\n")
    assert canonical_hash(WorkflowSource(noisy, "\n" + AFLOW_PROMPT + "# end\n")) == canonical_hash(original)
    changed = WorkflowSource(AFLOW_GRAPH.replace("range(3)", "range(5)"), AFLOW_PROMPT)
    assert canonical_hash(changed) != canonical_hash(original)
    assert canonical_hash(WorkflowSource(AFLOW_GRAPH, AFLOW_PROMPT.replace("step by step", "carefully"))) != canonical_hash(original)
    assert len(canonical_hash(original)) == 64


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["# c", "", "   # indented note", "#"])), max_size=6))
def test_hash_is_stable_under_inserted_comment_lines(inserts):
    lines = AFLOW_GRAPH.splitlines()
    for pos, text in inserts:
        # a comment line between statements (not inside the multi-line docstring)
        pos = min(pos, len(lines))
        if 23 <= pos <= 25:
            continue
        lines.insert(pos, text)
    src = WorkflowSource("\n".join(lines) + "\n", AFLOW_PROMPT)
    assert canonical_hash(src) == canonical_hash(WorkflowSource(AFLOW_GRAPH, AFLOW_PROMPT))


# ------------------------------------------------------------------ checks


@pytest.mark.parametrize("graph,prompt,match", [
    ("class Workflow:\n    async def __call__(self, p)\n        return p\n", "", r"graph.py: syntax error at line 2"),
    ("x = 1\n", "", "defines no Workflow class"),
    ("class Workflow:\n    def __call__(self, p):\n        return p, 0\n", "", "must be async"),
    ("class Workflow:\n    def run(self):\n        pass\n", "", "no async __call__"),
    ("class Workflow:\n    def __init__(self, llm):\n        pass\n    async def __call__(self, p):\n        return p, 0\n", "",
     r"must accept \(name, llm_config, dataset\)"),
    ("import workspace.A.workflows.round_1.prompt as prompt_custom\nclass Workflow:\n    async def __call__(self, p):\n"
     "        return prompt_custom.MISSING, 0\n", "OTHER = 'x'\n", "line 4 uses prompt_custom.MISSING"),
    ("class Workflow:\n    async def __call__(self, p):\n        return p, 0\n", "X = 'unclosed\n", r"prompt.py: syntax error at line 1"),
])
def test_check_source_one_line_errors(graph, prompt, match):
    with pytest.raises(WorkflowError, match=match) as exc:
        check_source(WorkflowSource(graph, prompt))
    assert "\n" not in str(exc.value)


def test_check_source_known_operators_and_no_execution(tmp_path):
    marker = tmp_path / "ran"
    graph = (
        f"open({str(marker)!r}, 'w').write('x')\n"
        "import workspace.A.workflows.template.operator as operator\n"
        "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        self.x = operator.Custom(None)\n"
        "        self.y = operator.Bogus(None)\n"
        "    async def __call__(self, problem):\n        return problem, 0\n"
    )
    with pytest.raises(WorkflowError, match="graph.py line 1: 'open' is not allowed in a workflow"):
        check_source(WorkflowSource(graph, ""))
    assert not marker.exists()  # nothing ran
    graph = graph.split("\n", 1)[1]
    check_source(WorkflowSource(graph, ""))  # fine without an operator list
    with pytest.raises(WorkflowError, match="line 5 uses operator.Bogus"):
        check_source(WorkflowSource(graph, ""), known_operators=["Custom", "ScEnsemble"])


# ------------------------------------------------------------------ folders


def test_load_aflow_round_folder(tmp_path):
    rnd = tmp_path / "workspace" / "MATH" / "workflows" / "round_7"
    rnd.mkdir(parents=True)
    (rnd / "__init__.py").write_text("")
    (rnd / "graph.py").write_text(AFLOW_GRAPH)
    (rnd / "prompt.py").write_text(AFLOW_PROMPT)
    src = load_folder(rnd)
    assert "from aflowctl.workflow.api import operator" in src.graph
    assert canonical_hash(src) == canonical_hash(WorkflowSource(AFLOW_GRAPH, AFLOW_PROMPT))
    assert load_folder(rnd / "graph.py") == src


def test_load_folder_errors(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_folder(tmp_path / "nope")
    with pytest.raises(WorkflowError, match="has no graph.py"):
        load_folder(tmp_path)
    (tmp_path / "graph.py").write_text("def broken(:\n")
    with pytest.raises(WorkflowError, match="syntax error at line 1"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, check=False).graph == "def broken(:\n"


# ------------------------------------------------------------------ instantiate


def test_instantiate_an_aflow_graph_without_touching_sys_path_or_modules():
    path_before, mods_before = list(sys.path), set(sys.modules)
    fake = FakeLLM()
    wf = instantiate(WorkflowSource(AFLOW_GRAPH, AFLOW_PROMPT), "round_7", fake, "MATH")
    answer, cost = asyncio.run(wf("2+2?"))
    assert answer == "answer \\boxed{4}" and cost == pytest.approx(3 * 0.002)
    assert fake.prompts[0].startswith("Think step by step")
    assert sys.path == path_before
    new = {m for m in set(sys.modules) - mods_before if "workspace" in m or "workflow_" in m or "prompt" in m}
    assert not new
    assert wf.name == "round_7" and wf.dataset == "MATH"


def test_each_instance_gets_its_own_prompt_module():
    g = ("import workspace.A.workflows.round_1.prompt as prompt_custom\n"
         "from scripts.async_llm import create_llm_instance\n"
         "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        self.llm = create_llm_instance(llm_config)\n"
         "    async def __call__(self, problem):\n        return prompt_custom.P + problem, 0.0\n")
    a = instantiate(WorkflowSource(g, "P = 'a:'\n"), "a", FakeLLM(), "gsm8k")
    b = instantiate(WorkflowSource(g, "P = 'b:'\n"), "b", FakeLLM(), "gsm8k")
    assert asyncio.run(a("x"))[0] == "a:x" and asyncio.run(b("x"))[0] == "b:x"


def test_metagpt_graph_with_cost_manager_runs():
    wf = instantiate(WorkflowSource(METAGPT_GRAPH, "PROMPT = 'Solve: '\n"), "old", FakeLLM(cost=0.01), "GSM8K")
    answer, cost = asyncio.run(wf("1+3"))
    assert cost == pytest.approx(0.01) and answer.endswith("{4}")


def test_runtime_errors_are_workflow_errors_with_line_numbers():
    g = "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        self.x = 1 / 0\n    async def __call__(self, p):\n        return p, 0\n"
    with pytest.raises(WorkflowError, match=r"ZeroDivisionError.*\(line 3\)"):
        instantiate(WorkflowSource(g, ""), "w", FakeLLM(), "gsm8k")
    g2 = "from typing import no_such_name\nclass Workflow:\n    async def __call__(self, p):\n        return p, 0\n"
    with pytest.raises(WorkflowError, match=r"graph.py failed to load: ImportError.*\(line 1\)"):
        instantiate(WorkflowSource(g2, ""), "w", FakeLLM(), "gsm8k")


def test_executor_config_dict_gets_the_dataset():
    from aflowctl.workflow.api import executor_config

    g = ("from scripts.async_llm import create_llm_instance\n"
         "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        self.cfg = llm_config\n"
         "    async def __call__(self, p):\n        return p, 0\n")
    cfg = executor_config("openai/gpt-4o-mini", run_id="r1", db_path="/tmp/x.db", seed=3, code_timeout_s=4)
    wf = instantiate(WorkflowSource(g, ""), "w", cfg, "mbpp")
    assert wf.cfg["dataset"] == "mbpp" and wf.cfg["seed"] == 3 and wf.cfg["sandbox"]["timeout_s"] == 4.0
    assert wf.cfg["model"]["model"] == "openai/gpt-4o-mini" and wf.cfg["role"] == "executor"
    import json

    json.dumps(cfg)  # plain data: crosses process boundaries


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize("dataset", ["gsm8k", "math", "humaneval", "mbpp", "hotpotqa", "drop", "arith"])
def test_every_seed_checks_and_runs(dataset):
    src = seeds.seed_workflow(dataset)
    check_source(src, known_operators=["Custom", "CustomCodeGenerate"])
    raw = (seeds.seed_folder(dataset) / "graph.py").read_text()
    assert "import workspace." in raw and "create_llm_instance" in raw  # shipped in AFlow's own layout
    fake = FakeLLM(text="```python\ndef f(x):\n    return x\n```")
    wf = instantiate(src, "seed", fake, dataset)
    args = ("def f(x):\n", "f") if dataset in ("humaneval", "mbpp") else ("question?",)
    answer, cost = asyncio.run(wf(*args))
    assert answer and cost == pytest.approx(0.002)
    assert len(fake.prompts) == 1 and len(fake.prompts[0]) > len(args[0])


def test_unknown_datasets_get_a_generic_seed():
    assert seeds.seed_workflow("my-new-qa") == seeds.seed_workflow("another")
    assert "Custom(" in seeds.seed_workflow("my-new-qa").graph
    assert set(seeds.available()) >= {"gsm8k", "math", "humaneval", "mbpp", "hotpotqa", "drop", "arith"}
    assert canonical_hash(seeds.seed_workflow("gsm8k")) != canonical_hash(seeds.seed_workflow("math"))


# ------------------------------------------------------------------ static check of untrusted graphs

HOSTILE_GRAPHS = {
    "import os": ("import os", "import of 'os'"),
    "from subprocess": ("from subprocess import run", "import from 'subprocess'"),
    "importlib": ("import importlib.util", "import of 'importlib.util'"),
    "relative": ("from . import x", "relative import"),
    "__import__": ("x = __import__('os')", "'__import__'"),
    "eval": ("x = eval('1')", "'eval'"),
    "exec": ("exec('x = 1')", "'exec'"),
    "compile": ("c = compile('1', 'f', 'eval')", "'compile'"),
    "open": ("open('/etc/passwd')", "'open'"),
    "subclasses": ("x = ().__class__.__bases__[0].__subclasses__()", "attribute '.__subclasses__'"),
    "globals attr": ("def f():\n    pass\nx = f.__globals__", "attribute '.__globals__'"),
    "builtins name": ("x = __builtins__", "'__builtins__'"),
    "frame walk": ("import asyncio\nx = asyncio.current_task().get_coro().cr_frame", "attribute '.cr_frame'"),
    "module through module": ("import typing\nx = typing.sys.path", "attribute '.sys'"),
    "private module attr": ("import random\nx = random._os", "attribute '._os'"),
    "asyncio subprocess": ("import asyncio\nasync def f():\n    await asyncio.create_subprocess_shell('sh')",
                           "attribute '.create_subprocess_shell'"),
    "asyncio network": ("import asyncio\nasync def f():\n    await asyncio.open_connection('127.0.0.1', 80)",
                        "attribute '.open_connection'"),
    "getattr computed": ("x = getattr(object, '__sub' + 'classes__')", "getattr() with a computed"),
    "getattr dunder": ("x = getattr(object, '__subclasses__')", "getattr() with a computed or special"),
    "attrgetter": ("import operator as op\nimport dataclasses\nx = op.attrgetter('sys.modules')(dataclasses)",
                   "attribute '.attrgetter'"),
    "from operator import attrgetter": ("from operator import attrgetter", "import of 'attrgetter' from 'operator'"),
    "methodcaller": ("import operator\nx = operator.methodcaller('x')", "attribute '.methodcaller'"),
    "format fields": ("import random\nx = '{0._os.environ}'.format(random)", "a format string that reads"),
    "format items": ("x = '{0[k]}'.format({'k': 1})", "a format string that reads"),
    "getattr as a value": ("import functools\nimport dataclasses\n"
                           "x = functools.reduce(getattr, ('sys', 'modules'), dataclasses)", "'getattr' passed as a value"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_GRAPHS))
def test_static_check_refuses_escapes_naming_the_line(name):
    snippet, what = HOSTILE_GRAPHS[name]
    graph = ("from aflowctl.workflow.api import operator\n" + snippet + "\n"
             "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n        pass\n"
             "    async def __call__(self, problem):\n        return problem, 0\n")
    with pytest.raises(WorkflowError) as err:
        check_source(WorkflowSource(graph, ""))
    msg = str(err.value)
    assert "\n" not in msg and "graph.py line " in msg and what in msg and "is not allowed in a workflow" in msg
    with pytest.raises(WorkflowError, match=r"prompt.py line \d+: .* is not allowed"):  # prompt.py is code too
        check_source(WorkflowSource(SEED_LIKE_GRAPH, snippet))


SEED_LIKE_GRAPH = ("from aflowctl.workflow.api import operator\nclass Workflow:\n"
                   "    def __init__(self, name, llm_config, dataset):\n        pass\n"
                   "    async def __call__(self, problem):\n        return problem, 0\n")


def test_static_check_allows_the_api_the_allowlist_and_plain_code():
    graph = ("from __future__ import annotations\nimport re, math, json, asyncio\nfrom typing import Literal\n"
             "from collections import Counter\nimport itertools, functools, random, string\n"
             "from aflowctl.workflow.api import operator, prompt_custom, create_llm_instance\n"
             "class Workflow:\n    def __init__(self, name, llm_config, dataset):\n"
             "        super().__init__()\n        self.llm = create_llm_instance(llm_config)\n"
             "        self.custom = operator.Custom(self.llm)\n        self._cache = {}\n"
             "    async def __call__(self, problem):\n"
             "        rs = await asyncio.gather(*[self.custom(input=problem, instruction=prompt_custom.P) for _ in range(3)])\n"
             "        best = Counter(r['response'] for r in rs).most_common(1)[0][0]\n"
             "        return getattr(self, 'name', best), 0\n")
    check_source(WorkflowSource(graph, 'P = "Solve."\n'))


def test_every_seed_and_every_mutation_passes_the_static_check():
    import numpy as np

    from aflowctl import benchmarks
    from aflowctl.mdp import edits, spec
    from aflowctl.mdp.mutate import propose_edit
    from aflowctl.workflow import seeds

    kinds = {"code": "code", "qa": "qa"}
    checked = 0
    for name in seeds.available():
        src = seeds.seed_workflow(name)
        check_source(src)
        try:
            kind = kinds.get(benchmarks.get(name).kind, "math")
        except Exception:  # noqa: BLE001 - the generic seeds have no benchmark
            kind = "code" if "code" in name else "math"
        rng = np.random.default_rng(0)
        sp, imports, seen = spec.read_spec(src.graph, src.prompt, kind), spec.import_lines(src.graph), []
        for _ in range(8):
            try:
                e = propose_edit(sp, rng=rng, tried=seen)
            except Exception:  # noqa: BLE001 - a seed the catalogue cannot edit further
                break
            sp = edits.apply_edit(sp, e)
            check_source(WorkflowSource(*spec.render(sp, imports)))
            checked += 1
            seen.append(e.canonical())
    assert checked >= 20
