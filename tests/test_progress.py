"""Progress on stderr: drawn on a terminal, off with -q and off a terminal; Ctrl-C is
acknowledged at once; the one-time model conversion is announced; training steps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers.openai_server import OpenAIServer
from helpers.pty_run import ANSI, CLI, run_on_pty


def _env(tmp_path) -> dict:
    env = {**os.environ, "AFLOWCTL_HOME": str(tmp_path / "home"), "TERM": "xterm-256color"}
    for k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "AFLOWCTL_DB"):
        env.pop(k, None)
    return env


def _pty(args: list[str], env: dict, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on an 80-column pseudo-terminal."""
    return run_on_pty(args, env, timeout=timeout)


def _spinner_args(server: OpenAIServer, db) -> list[str]:
    return ["llm", "-m", "openai/gpt-4o-mini", "hello", "--api-base", server.url, "--db", str(db)]


@pytest.fixture
def slow_server():
    with OpenAIServer(latency_s=1.5) as server:
        yield server


def test_spinner_on_a_terminal_not_with_quiet(tmp_path, slow_server):
    env = _env(tmp_path)
    rc, out = _pty(_spinner_args(slow_server, tmp_path / "a.db"), env)
    assert rc == 0, out
    assert "waiting for openai/gpt-4o-mini" in ANSI.sub("", out) and "echo: hello" in out
    rc, out = _pty(["-q", *_spinner_args(slow_server, tmp_path / "a.db")], env)
    assert rc == 0, out
    assert "waiting for" not in out and "echo: hello" in out


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path, slow_server):
    r = subprocess.run(CLI + _spinner_args(slow_server, tmp_path / "c.db"), env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "echo: hello\n" and r.stderr == ""


def test_evaluation_bar_on_a_terminal(tmp_path):
    """evaluate draws a bar of problems done / total with calls, tokens and spend under it."""
    with OpenAIServer(latency_s=0.3) as server:
        rc, out = _pty(["evaluate", "--dataset", "arith", "--executor-model", "openai/gpt-4o-mini", "--api-base",
                        server.url, "--limit", "4", "--workers", "1", "--concurrency", "1", "--db",
                        str(tmp_path / "e.db")], _env(tmp_path))
    assert rc == 0, out
    plain = ANSI.sub("", out)
    assert "━" in plain and "arith/validate" in plain, plain
    assert re.search(r"\b[0-4]/4\b", plain), plain  # problems done / total
    assert "arith/validate: mean" in plain


def test_ctrl_c_is_acknowledged_while_the_main_thread_is_busy(tmp_path):
    """The notice comes from a thread woken by the signal itself: it is printed while
    the main thread is still busy (here: a handler that takes 3 s, like a slow cleanup)."""
    code = (
        "import signal, sys, time\n"
        "from aflowctl.cli._progress import install_interrupt_notice\n"
        "install_interrupt_notice()\n"
        "signal.signal(signal.SIGINT, lambda *a: (time.sleep(3), sys.stderr.write('handler done\\n')))\n"
        "sys.stderr.write('ready\\n'); sys.stderr.flush()\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        first = proc.stderr.readline().strip() or proc.stderr.readline().strip()
        assert first.startswith(b"Interrupted: stopping"), first
        assert proc.stderr.readline() == b"handler done\n"
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_during_a_call_exits_130_with_one_notice(tmp_path):
    with OpenAIServer(latency_s=30) as server:
        proc = subprocess.Popen(CLI + ["llm", "-m", "openai/gpt-4o-mini", "hello", "--api-base", server.url,
                                       "--max-retries", "0", "--db", str(tmp_path / "i.db")],
                                env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while server.count == 0 and time.monotonic() < deadline:  # the call is in flight
                time.sleep(0.05)
            assert server.count == 1
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130
            assert b"Interrupted" in err and b"Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_model_conversion_is_announced_just_before_it_starts(tmp_path, monkeypatch):
    """The one-time conversion says so on stderr, in the process that converts, only when
    it really starts (a bad command line never waits for it nor sees the line)."""
    from aflowctl.cli import _progress
    from aflowctl.errors import ProviderError
    from aflowctl.llm import local_model, model_files

    lines = []
    monkeypatch.setattr(_progress, "notice", lambda text, json_out=False: lines.append(text))
    monkeypatch.setattr(model_files, "_conversion_listeners", [])
    _progress.install_conversion_notice()
    _progress.install_conversion_notice()  # installed once
    monkeypatch.setenv("AFLOWCTL_MODELS_DIR", str(tmp_path / "models"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ProviderError, match="cannot convert broken.gguf"):
        local_model.convert_gguf(bad, tmp_path / "models" / "broken")
    assert lines == [_progress.CONVERSION_NOTICE] and "preparing the embedded model once, ~20 s" in lines[0]
    # already converted: no conversion, no notice
    done = tmp_path / "models" / "done"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    lines.clear()
    assert local_model.convert_gguf(bad, done) == done and lines == []


def test_prepare_converts_only_what_is_pending(tmp_path, monkeypatch):
    from aflowctl.cli import _progress
    from aflowctl.llm import local_model

    calls = []
    monkeypatch.setattr(local_model, "resolve", lambda spec=None: calls.append(spec))
    monkeypatch.setenv("AFLOWCTL_MODELS_DIR", str(tmp_path / "models"))
    _progress.prepare_local_models(["local/smollm2", "openai/gpt-4o-mini", "local/smollm2", None])
    assert calls == ["smollm2"]
    done = tmp_path / "models" / local_model.EMBEDDED_NAME
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    calls.clear()
    _progress.prepare_local_models(["local/smollm2"])
    assert calls == []


def test_training_display_shows_steps_updates_and_no_signal():
    from aflowctl.cli._progress import Display, TrainDisplay

    class Lines(Display):
        def __init__(self):
            super().__init__(active=False)
            self.lines, self.steps = [], []

        def line(self, text):
            self.lines.append(text)

        def step(self, key, label, info=""):
            self.steps.append(label)

    d = Lines()
    t = TrainDisplay(d)
    t.event("phase", {"update": 0, "phase": "sampling edits", "step": 0, "steps": 2})
    t.event("phase", {"update": 0, "phase": "policy update"})
    t.event("update", {"update": 0, "reward_mean": 0.0, "reward_std": 0.0, "valid_rate": 0.0, "loss": 0.0})
    t.event("update", {"update": 1, "reward_mean": 0.2, "reward_std": 0.1, "valid_rate": 0.5, "loss": 0.1})
    assert d.steps == ["update 1: sampling edits (step 1 of 2)", "update 1: policy update"]
    assert "no learning signal (no valid action)" in d.lines[0]
    assert "no learning signal" not in d.lines[1]


def test_training_warning_counts_updates_without_signal():
    from aflowctl.cli._warnings import training_warning

    flat = {"reward_mean": 0.5, "reward_std": 0.0, "valid_rate": 1.0}
    good = {"reward_mean": 0.5, "reward_std": 0.2, "valid_rate": 1.0}
    none_valid = {"reward_mean": 0.0, "reward_std": 0.0, "valid_rate": 0.0}
    assert training_warning([good, good]) is None
    w = training_warning([flat, good, none_valid])
    assert w.startswith("warning: 2 of 3 updates had no learning signal")
    assert "all rewards equal (0.5)" in w and "no valid action" in w
