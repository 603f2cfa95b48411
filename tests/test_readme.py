"""The README's commands work as written.

- The first fenced block is CI's: two lines, install (+ quickstart) and the test command.
- Every ``aflowctl ...`` line of every bash block parses: the command exists and takes
  those options (checked by the CLI's own parser, nothing runs).
- The blocks marked ``<!-- offline ... -->`` run, in the order written, on a fresh
  store, offline (slow: they search, train and compare with the embedded model). Two
  placeholders are filled as a reader would: ``RUN_ID`` is the newest run, and
  ``OPT_RUN_BASELINE``/``OPT_RUN_POLICY`` the two optimize runs. To keep the suite
  short, ``optimize`` lines get ``--max-rounds 2 --validation-limit 4`` appended
  (the same commands and options, fewer rounds and problems).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FENCE = re.compile(r"(?P<mark><!--[^\n]*-->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
SHRINK = {"optimize": ["--max-rounds", "2", "--validation-limit", "4"]}


def _blocks() -> list[tuple[str, str, str]]:
    """(marker comment or '', language, body) of every fenced block, in order."""
    return [(m.group("mark") or "", m.group("lang"), m.group("body")) for m in FENCE.finditer(README)]


def _commands(body: str) -> list[str]:
    """The command lines of a block, without comments and blank lines."""
    out = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def test_ci_block_is_two_lines():
    mark, lang, body = _blocks()[0]
    lines = [line for line in body.splitlines() if line.strip()]
    assert lang == "bash" and len(lines) == 2
    assert " && .venv/bin/aflowctl optimize --config configs/quickstart.toml" in lines[0]
    assert lines[1].startswith(".venv/bin/python -m pytest")
    assert "ui" in re.search(r'-e "\.\[([a-z,]+)\]"', lines[0]).group(1).split(",")  # so CI tests browse


def test_every_readme_command_parses():
    """Each aflowctl line names a real command with options it accepts."""
    from typer.main import get_command

    from aflowctl.cli import app

    root = get_command(app)
    seen = 0
    for _, lang, body in _blocks():
        if lang != "bash":
            continue
        for line in _commands(body):
            words = shlex.split(line)
            while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                words = words[1:]
            if not words or Path(words[0]).name != "aflowctl":
                continue
            seen += 1
            cmd, args = root, list(words[1:])
            ctx = root.context_class(root, info_name="aflowctl")
            while hasattr(cmd, "get_command"):
                assert args, f"README: {line!r} names no command"
                sub = cmd.get_command(ctx, args[0])
                assert sub is not None, f"README: unknown command {args[0]!r} in {line!r}"
                ctx = sub.context_class(sub, parent=ctx, info_name=args[0])
                cmd, args = sub, args[1:]
            cmd.parse_args(ctx, args)  # unknown options, missing values: raises
    assert seen >= 10


def test_offline_blocks_are_marked():
    marked = [body for mark, _, body in _blocks() if mark.startswith("<!-- offline")]
    assert len(marked) >= 2
    text = "\n".join(marked)
    assert "optimize --config configs/quickstart.toml" in text and "train --config configs/train/test.toml" in text
    # the training example uses a benchmark that ships: no download needed
    assert re.search(r'^datasets = \["arith"\]', (REPO / "configs/train/test.toml").read_text(), re.M)


def _newest_runs(env: dict, kind: str | None = None) -> list[str]:
    args = [sys.executable, "-m", "aflowctl.cli", "inspect", "runs", "--json"] + (["--kind", kind] if kind else [])
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return [row["id"] for row in json.loads(r.stdout)]


@pytest.mark.slow
def test_offline_blocks_run_in_order(tmp_path):
    home = tmp_path / "home"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "AFLOWCTL_HOME": str(home), "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("AFLOWCTL_DB", None)
    ran = []
    for mark, _, body in _blocks():
        if not mark.startswith("<!-- offline"):
            continue
        for line in _commands(body):
            words = shlex.split(line)
            if words[0] in (".", "source"):  # activating the venv: PATH already has its bin/
                continue
            if "RUN_ID" in words:
                words = [_newest_runs(env)[-1] if w == "RUN_ID" else w for w in words]
            if "OPT_RUN_BASELINE" in words or "OPT_RUN_POLICY" in words:
                opt = _newest_runs(env, "optimize")
                words = [{"OPT_RUN_BASELINE": opt[0], "OPT_RUN_POLICY": opt[-1]}.get(w, w) for w in words]
            words += SHRINK.get(words[1], []) if words[0] == "aflowctl" else []
            r = subprocess.run(words, env=env, capture_output=True, text=True, timeout=1500, cwd=REPO)
            assert r.returncode == 0, f"{shlex.join(words)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
            ran.append((words, r))
    commands = [w[1] for w, _ in ran]
    assert commands == ["doctor", "optimize", "inspect", "inspect", "inspect", "logs", "report", "train", "optimize",
                        "compare"]
    opt = _newest_runs(env, "optimize")
    assert len(opt) == 2
    conn = sqlite3.connect(home / "aflowctl.db")
    # the policy run: one search round of two candidates, recorded as one step group
    rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT group_id) FROM experiences WHERE run_id = ?", (opt[1],)).fetchone()
    assert rows == (2, 1)
    assert conn.execute("SELECT status FROM runs WHERE id = 't1'").fetchone() == ("completed",)
    logs = next(r for w, r in ran if w[1] == "logs")
    assert logs.stdout.count("## call ") == 2
    # configs/train/test.toml ran one epoch for real: one update of two steps, its metrics, its
    # experiences (prompt and action), a checkpoint with the weights
    r = subprocess.run([sys.executable, "-m", "aflowctl.cli", "inspect", "training", "t1", "--json"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    training = json.loads(r.stdout)
    assert len(training["metrics"]) == 1 and training["metrics"][0]["steps"] == 2
    assert "reward_mean" in training["metrics"][0] and training["metrics"][0]["tokens_per_s"] > 0
    assert (home / "runs" / "t1" / "metrics.jsonl").is_file()
    assert (Path(training["checkpoints"][-1]["path"]) / "model" / "model.safetensors").is_file()
    rows = conn.execute("SELECT prompt, action_text FROM experiences WHERE run_id = 't1'").fetchall()
    assert len(rows) == 2 and all(p and a for p, a in rows)
