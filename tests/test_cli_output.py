"""Output that reads at 80 columns: full run ids, --csv everywhere, no markup or
highlighting of data, diffs with their prefixes, no ``<bool>`` in help, no wrapping
off a terminal, doctor without a config raising no warnings.

Terminal rendering is checked in a real pseudo-terminal of 80 columns.
"""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
from helpers.pty_run import ANSI, run_on_pty
from helpers.store_runs import Child, build_optimize_run, build_train_run
from typer.testing import CliRunner

from aflowctl.cli import app

runner = CliRunner()
RUN_A = "opt-20261126-110328-ae85"
RUN_B = "opt-20261127-093001-0b1f"


@pytest.fixture
def db(tmp_path):
    from aflowctl.store import open_store

    path = tmp_path / "runs.db"
    store = open_store(path)
    build_optimize_run(store, RUN_A, [("root", [Child("a", "add a [tensorboard] ensemble", [0.6, 0.7, 0.65])]),
                                      ("a", [Child("b", "broken", None, has_code=False)])])
    build_optimize_run(store, RUN_B, [("root", [Child("c", "review and revise", [0.4, 0.5, 0.45])])], t_offset=5000)
    build_train_run(store, "train-20261128-120000-c0de", updates=3)
    return path


def _pty_run(args: list[str], env_extra: dict, cols: int = 80, keep_ansi: bool = False) -> str:
    """Run the CLI in a pseudo-terminal of ``cols`` columns; return what it printed, colours stripped."""
    env = {**os.environ, **env_extra, "TERM": "xterm-256color"}
    for k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(k, None)
    _, out = run_on_pty(args, env, cols=cols, rows=50)
    text = out.replace("\r\n", "\n")
    return text if keep_ansi else ANSI.sub("", text)


def test_inspect_runs_at_80_columns_shows_whole_ids(db):
    out = _pty_run(["inspect", "runs", "--db", str(db)], {})
    assert all(len(line) <= 80 for line in out.splitlines()), out
    for rid in (RUN_A, RUN_B, "train-20261128-120000-c0de"):
        assert rid in out, out
    assert "…" not in out
    # rounds are counted as the run counts them (round 3 left no workflow: its proposal had
    # no code), a training run shows its updates
    line = next(line for line in out.splitlines() if RUN_A in line)
    assert "3 rounds" in line and "completed" in line and "65.0%" in line
    assert "3 updates" in next(line for line in out.splitlines() if "train-2026" in line)


def test_inspect_calls_and_training_at_80_columns(db):
    out = _pty_run(["inspect", "calls", "--db", str(db)], {})
    assert RUN_A in out and RUN_B in out and "…" not in out, out
    out = _pty_run(["inspect", "training", "train-20261128-120000-c0de", "--db", str(db)], {})
    assert "…" not in out and "reward" in out and "valid" in out, out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_every_inspect_table_has_csv(db):
    cases = [["inspect", "runs"], ["inspect", "experiences"], ["inspect", "workflows", "--run", RUN_A],
             ["inspect", "calls"], ["inspect", "training", "train-20261128-120000-c0de"]]
    for args in cases:
        r = runner.invoke(app, [*args, "--csv", "--db", str(db)])
        assert r.exit_code == 0, (args, r.output)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert rows, args
    runs = list(csv.DictReader(io.StringIO(runner.invoke(app, ["inspect", "runs", "--csv", "--db", str(db)]).stdout)))
    assert {r["id"] for r in runs} == {RUN_A, RUN_B, "train-20261128-120000-c0de"}
    assert {r["rounds"] for r in runs if r["kind"] == "optimize"} == {"3", "2"}


def test_no_markup_eaten_and_no_wrapping_off_a_terminal(db):
    r = runner.invoke(app, ["inspect", "workflows", "--run", RUN_A, "--db", str(db)])
    assert "add a [tensorboard] ensemble" in r.stdout  # user text is not rich markup
    r = runner.invoke(app, ["inspect", "experiences", "--run", RUN_A, "--db", str(db)])
    assert "modification: add a [tensorboard] ensemble" in r.stdout
    # a pipe: each row on one line, however long
    r = runner.invoke(app, ["inspect", "runs", "--db", str(db)])
    assert len([line for line in r.stdout.splitlines() if RUN_A in line]) == 1
    assert all(line == line.rstrip() for line in r.stdout.splitlines())


def test_ids_are_not_highlighted_on_a_terminal(db):
    raw = _pty_run(["inspect", "runs", "--db", str(db)], {}, keep_ansi=True)
    assert "\x1b[" in raw  # a terminal: rich does colour (the header)
    assert RUN_A in raw and RUN_B in raw  # but no colour codes inside the ids' digits


def test_diff_lines_keep_their_prefix_at_80_columns(db):
    out = _pty_run(["inspect", "workflows", "--run", RUN_A, "--diff", "--db", str(db)], {})
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--- workflow"))
    body = [line for line in lines[start:] if line and not line.startswith("#")]
    assert any(line.startswith("+") for line in body)
    for line in body:
        assert line[0] in "+- @" or line.startswith("("), line
        assert len(line) <= 80


def test_flags_show_no_bool_in_help():
    for args in (["inspect", "experiences", "--help"], ["optimize", "--help"], ["logs", "--help"], ["doctor", "--help"]):
        r = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.stdout, args
    assert "<str>" in runner.invoke(app, ["logs", "--help"], env={"COLUMNS": "120"}).stdout  # options with values keep theirs


def test_doctor_without_config_raises_no_warnings_and_keeps_brackets():
    r = runner.invoke(app, ["doctor", "--json"])
    checks = json.loads(r.stdout)
    assert [c for c in checks if c["status"] == "warn" and c["name"].startswith(("model ", "dataset ", "optional "))] == []
    for c in checks:
        assert c["status"] in {"ok", "info", "warn", "fail"}
    r = runner.invoke(app, ["doctor"])
    missing = [c for c in checks if c["name"].startswith("optional ") and c["status"] == "info"]
    for c in missing:  # the extra's name survives: pip install 'aflowctl[tensorboard]'
        assert c["hint"].startswith("pip install 'aflowctl[") and c["hint"] in r.stdout
    assert "checked the default config" in r.stdout
