"""Test isolation: a temporary AFLOWCTL_HOME, no installed plugins, offline."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys._called_from_test = True  # plugins.py: load no installed plugins unless asked

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "aflow"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# A suite started as a background job of a script (`pytest &`) inherits SIGINT ignored, and
# so would every CLI process it starts (an ignored signal stays ignored across exec); the
# Ctrl-C tests need what a terminal gives, so the suite handles SIGINT as Python does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _ctrl_c_untouched():
    """A test that leaves Ctrl-C ignored in this process (a worker initialised in-process
    does that) breaks every later Ctrl-C test that shares the process: fail it instead."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test changed this process's SIGINT handler ({before!r} -> {after!r})")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch, request):
    home = tmp_path_factory.mktemp("aflowctl_home")
    monkeypatch.setenv("AFLOWCTL_HOME", str(home))
    monkeypatch.delenv("AFLOWCTL_DB", raising=False)
    monkeypatch.delenv("AFLOWCTL_LOAD_PLUGINS", raising=False)
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("AFLOWCTL_DATA_PATH", str(SHARED_DATA))
    # Models converted once are shared between tests (converting takes ~20 s).
    monkeypatch.setenv("AFLOWCTL_MODELS_DIR", os.environ.get("AFLOWCTL_TEST_MODELS_DIR", str(_models_cache())))
    from aflowctl import plugins
    from aflowctl.store import db

    plugins.reset()
    yield home
    db.close_all()
    plugins.reset()


def _models_cache() -> Path:
    p = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aflowctl-test-models"
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/aflow is not present")
    return SHARED_DATA


# `pytest -n 2 --dist loadfile` (the README's command) hands whole files to the two
# workers in collection order. The README test is the longest serial chain (~2.5 min:
# it searches, trains and searches again with the embedded model), so it starts first;
# files with other slow tests follow, the quick ones fill the gaps at the end.
FIRST = ("tests/test_readme.py",)


def pytest_collection_modifyitems(config, items):
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return 0 if path in FIRST else 1 if path in slow_files else 2

    items.sort(key=rank)  # stable: the order within a rank, and within a file, is kept
