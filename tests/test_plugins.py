"""The plugin manager, `aflowctl plugins list`, broken plugins, and the plugin docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aflowctl import plugins
from aflowctl.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _fake_dist(root: Path, dist: str, ep_name: str, target: str, module_src: dict[str, str]) -> None:
    """A real (unpacked) distribution on sys.path with an entry point in group aflowctl."""
    info = root / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[aflowctl]\n{ep_name} = {target}\n")
    for name, src in module_src.items():
        (root / name).write_text(textwrap.dedent(src))


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    root = tmp_path / "site"
    _fake_dist(root, "aflowctl-broken", "broken", "aflowctl_broken_mod", {
        "aflowctl_broken_mod.py": "import this_module_does_not_exist_anywhere\n",
    })
    _fake_dist(root, "aflowctl-shout", "shout", "aflowctl_shout_mod", {
        "aflowctl_shout_mod.py": """
            from aflowctl.hookspecs import hookimpl
            from aflowctl.llm.types import Sample

            class Shout:
                name = "shout"

                async def complete(self, request):
                    text = request.messages[-1]["content"].upper()
                    return [Sample(text, "stop", 1, 1, 0.0, 0.0, "shout", request.model_name)] * request.n

            @hookimpl
            def register_providers(register):
                register(Shout())
        """,
    })
    _fake_dist(root, "aflowctl-typo", "typo", "aflowctl_typo_mod", {
        "aflowctl_typo_mod.py": """
            from aflowctl.hookspecs import hookimpl

            @hookimpl
            def register_provider(register):  # misspelled hook
                pass
        """,
    })
    monkeypatch.syspath_prepend(str(root))
    plugins.reset()
    return root


def test_builtins_register_through_the_hooks():
    names = {p["name"]: p for p in plugins.list_plugins()}
    builtin = names["aflowctl.llm.providers.builtin"]
    assert builtin["hooks"] == ["register_providers"] and builtin["error"] is None
    assert {"openai", "anthropic", "gemini", "ollama", "hosted_vllm", "openrouter", "local", "replay"} <= set(
        builtin["providers"]
    )


def test_tests_load_no_installed_plugins_unless_asked(fake_plugins, monkeypatch):
    assert not any(p["name"] in ("shout", "broken") for p in plugins.list_plugins())
    monkeypatch.setenv("AFLOWCTL_LOAD_PLUGINS", "shout")
    plugins.reset()
    listed = {p["name"]: p for p in plugins.list_plugins()}
    assert "shout" in listed and "broken" not in listed
    assert listed["shout"]["package"] == "aflowctl-shout" and listed["shout"]["version"] == "0.3.1"
    assert listed["shout"]["providers"] == ["shout"]


def test_broken_plugins_are_reported_not_fatal(fake_plugins, monkeypatch):
    monkeypatch.setenv("AFLOWCTL_LOAD_PLUGINS", "aflowctl-broken,shout,typo")
    plugins.reset()
    errors = plugins.load_errors()
    assert "this_module_does_not_exist_anywhere" in errors["broken"]
    assert "register_provider" in errors["typo"]  # unknown hook: that plugin's error only
    res = runner.invoke(app, ["plugins", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["broken"]["package"] == "aflowctl-broken" and "ModuleNotFoundError" in rows["broken"]["error"]
    assert rows["shout"]["error"] is None and rows["shout"]["hooks"] == ["register_providers"]
    res = runner.invoke(app, ["plugins", "list"])
    assert res.exit_code == 0 and "broken" in res.stdout
    # the working plugin still answers
    res = runner.invoke(app, ["llm", "-m", "shout/x", "quiet please", "--db", str(fake_plugins / "d.db")])
    assert res.exit_code == 0 and res.stdout.strip() == "QUIET PLEASE"


def test_broken_plugin_does_not_crash_the_real_cli(fake_plugins, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(fake_plugins), AFLOWCTL_LOAD_PLUGINS="broken,shout", AFLOWCTL_HOME=str(tmp_path))
    cmd = [sys.executable, "-c", "from aflowctl.cli import main; main()", "plugins", "list", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["broken"]["error"] and rows["shout"]["error"] is None


def test_the_example_plugin_installs_and_loads_by_entry_point(tmp_path):
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--target", str(target), str(REPO / "plugins" / "aflowctl-echo")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    code = (
        "import asyncio, json\n"
        "from aflowctl import plugins\n"
        "from aflowctl.llm.client import make_llm\n"
        "s = asyncio.run(make_llm('echo/reverse', role='cli', store=False).generate('a b c'))\n"
        "rows = [p for p in plugins.list_plugins() if p['name'] == 'echo']\n"
        "print(json.dumps({'text': s.text, 'plugin': rows}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target), AFLOWCTL_LOAD_PLUGINS="aflowctl-echo", AFLOWCTL_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["text"] == "c b a"
    assert data["plugin"][0]["package"] == "aflowctl-echo" and data["plugin"][0]["hooks"] == ["register_providers"]
