"""docs/plugins.md against the code: every hook and every member of the plugin
protocols is documented with its full signature (as datasette's test_docs does), and
the example plugin written in the page, extracted block by block, installs by its
entry point and works in a real `aflowctl optimize` (two rounds: round 2 shows the
optimizer the failed cases, which needs the benchmark's `expected()`)."""

from __future__ import annotations

import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from aflowctl import hookspecs, plugins

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
PROTOCOLS = [plugins.Provider, plugins.ProviderExtensions, plugins.Benchmark, plugins.BenchmarkExtensions,
             plugins.Operator]


def _hookspecs() -> list:
    return [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "aflowctl_spec")]


def _params(fn) -> str:
    """``fn``'s parameters without ``self``, annotations as written in the source."""
    parts = []
    for p in list(inspect.signature(fn).parameters.values()):
        if p.name == "self":
            continue
        text = p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {p.annotation}"
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            text = "**" + text
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    return ", ".join(parts)


def _member_line(protocol, name: str) -> str:
    value = inspect.getattr_static(protocol, name, None)
    if inspect.isfunction(value):
        prefix = "async " if inspect.iscoroutinefunction(value) else ""
        return f"{prefix}{name}({_params(value)}) -> {inspect.signature(value).return_annotation}"
    return f"{name}: {protocol.__annotations__[name]}"


def test_every_hook_is_documented_with_its_full_signature():
    headings = [h.strip().strip("`") for h in re.findall(r"^#+\s+(.*)$", DOC, flags=re.M)]
    specs = _hookspecs()
    assert {f.__name__ for f in specs} == {"register_providers", "register_benchmarks", "register_operators"}
    for spec in specs:
        argnames = list(inspect.signature(spec).parameters)
        assert f"{spec.__name__}({', '.join(argnames)})" in headings, spec.__name__
        # the callback's exact type, from the hookspec's annotation
        callback = getattr(hookspecs, inspect.signature(spec).parameters["register"].annotation)
        assert f"`register({_params(callback.__call__)}) -> None`" in DOC, spec.__name__


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_every_protocol_member_is_documented(protocol):
    assert f"### {protocol.__name__}" in DOC
    section = DOC.split(f"### {protocol.__name__}", 1)[1].split("\n### ", 1)[0]
    members = plugins.protocol_members(protocol)
    assert members
    for name in members:
        assert f"`{_member_line(protocol, name)}`" in section, (protocol.__name__, _member_line(protocol, name))


def _blocks(lang: str, marker: str) -> list[str]:
    return [b for b in re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S) if b.startswith(marker)]


def _install_example(root: Path) -> str:
    """The page's example plugin as an unpacked distribution under ``root``; its entry-point name."""
    (toml_block,) = _blocks("toml", "# pyproject.toml")
    meta = tomllib.loads(toml_block)
    module = meta["tool"]["setuptools"]["py-modules"][0]
    blocks = _blocks("python", f"# {module}.py")
    assert len(blocks) == 3  # provider, benchmark, operator
    (root / f"{module}.py").write_text("\n\n".join(blocks), encoding="utf-8")
    info = root / f"{meta['project']['name'].replace('-', '_')}-{meta['project']['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['project']['name']}\n"
                                   f"Version: {meta['project']['version']}\n")
    eps = meta["project"]["entry-points"]["aflowctl"]
    (info / "entry_points.txt").write_text("[aflowctl]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    (ep_name,) = eps
    return ep_name


@pytest.mark.slow
def test_the_documented_example_plugin_works_in_a_real_optimize(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    ep = _install_example(site)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"What is {a} + {b}?", "answer": a + b} for a, b in [(2, 3), (10, 7), (4, 4), (9, 1)]]
    (data / "sums_validate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "docs.toml"
    cfg.write_text("""
[optimize]
dataset = "sums"
max_rounds = 2
validation_rounds = 1
check_convergence = false
[optimize.optimizer]
model = "mutate"
[optimize.executor]
model = "echo/plain"
[rollout]
workers = 1
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFLOWCTL_")}
    env.update(PYTHONPATH=str(site), AFLOWCTL_LOAD_PLUGINS=ep, AFLOWCTL_HOME=str(tmp_path / "home"),
               AFLOWCTL_DATA_PATH=str(data))
    cli = [sys.executable, "-c", "from aflowctl.cli import main; main()"]

    listed = subprocess.run([*cli, "plugins", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    (row,) = [p for p in json.loads(listed.stdout) if p["name"] == ep]
    assert row["error"] is None and row["providers"] == ["echo"]
    assert row["hooks"] == ["register_benchmarks", "register_operators", "register_providers"]

    run = subprocess.run([*cli, "optimize", "--config", str(cfg), "--run-id", "docs-1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    db = sqlite3.connect(tmp_path / "home" / "aflowctl.db")
    status, state = db.execute("SELECT status, state_json FROM runs WHERE id = 'docs-1'").fetchone()
    assert status == "completed" and json.loads(state)["completed_round"] == 2
    assert db.execute("SELECT COUNT(*) FROM experiences WHERE run_id = 'docs-1' AND round = 2").fetchone()[0] >= 1
    assert db.execute("SELECT COUNT(*) FROM llm_calls WHERE run_id = 'docs-1' AND provider = 'echo'").fetchone()[0] >= 4

    shout = subprocess.run([sys.executable, "-c", (
        "import asyncio\n"
        "from aflowctl.llm.client import make_llm\n"
        "from aflowctl.workflow import registry\n"
        "op = registry.get_operator('Shout')(make_llm('echo/plain', role='executor', store=False))\n"
        "print(asyncio.run(op(input='hello there')))\n")], capture_output=True, text=True, env=env, timeout=120)
    assert shout.returncode == 0, shout.stderr
    assert shout.stdout.strip() == "{'response': 'HELLO THERE'}"


def test_a_benchmark_without_expected_is_refused_at_registration():
    from aflowctl import benchmarks
    from aflowctl.benchmarks.base import Benchmark
    from aflowctl.hookspecs import hookimpl

    class NoExpected(Benchmark):  # the old docs example: fails in round 2 of optimize
        name = "noexp"
        kind = "math"

        def inputs(self, problem):
            return (problem["question"],)

        def score(self, prediction, problem):
            return 1.0

    class Plugin:
        @hookimpl
        def register_benchmarks(self, register):
            register(NoExpected())

    plugins.register_plugin(Plugin(), name="noexp-plugin")
    assert "noexp" not in benchmarks.names()
    assert "without expected()" in benchmarks.hook_errors()["noexp-plugin"]
