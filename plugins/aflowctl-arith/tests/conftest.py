"""Isolate the plugin's tests: a temporary AFLOWCTL_HOME, and the plugin importable
from the source tree even when it is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys._called_from_test = True
PLUGIN_DIR = Path(__file__).resolve().parents[1]
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AFLOWCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AFLOWCTL_DB", raising=False)
    monkeypatch.delenv("AFLOWCTL_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("AFLOWCTL_DATA_PATH", raising=False)
    from aflowctl import plugins

    plugins.reset()
    yield
    plugins.reset()
