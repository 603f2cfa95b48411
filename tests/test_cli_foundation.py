from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aflowctl import __version__
from aflowctl.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.stdout


def test_inspect_runs_empty_store():
    r = runner.invoke(app, ["inspect", "runs", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == []


@pytest.mark.parametrize("sub", ["experiences", "calls"])
def test_inspect_json_on_empty_store(sub):
    r = runner.invoke(app, ["inspect", sub, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == []


def test_unknown_run_is_one_line_error():
    r = runner.invoke(app, ["inspect", "workflows", "--run", "nope"])
    assert r.exit_code == 1
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in r.output


def test_usage_error_exit_2():
    r = runner.invoke(app, ["inspect", "runs", "--no-such-flag"])
    assert r.exit_code == 2


def test_corrupt_db_reported_cleanly(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 100)
    r = runner.invoke(app, ["inspect", "runs", "--db", str(bad)])
    assert r.exit_code == 1
    assert "not an SQLite database" in r.stderr and "Traceback" not in r.output
    assert bad.read_bytes() == b"garbage" * 100


def test_debug_shows_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 100)
    monkeypatch.setenv("AFLOWCTL_DEBUG", "1")
    r = runner.invoke(app, ["inspect", "runs", "--db", str(bad)])
    assert r.exit_code == 1 and "Traceback" in r.stderr


def test_aflowctl_home_chooses_location(tmp_path, monkeypatch):
    monkeypatch.setenv("AFLOWCTL_HOME", str(tmp_path / "h"))
    r = runner.invoke(app, ["inspect", "runs", "--json"])
    assert r.exit_code == 0
    assert (tmp_path / "h" / "aflowctl.db").exists()


def test_help_is_fast_and_light():
    import subprocess
    import sys

    code = "import sys, aflowctl.cli; print('torch' in sys.modules, 'litellm' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
