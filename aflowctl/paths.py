"""Where aflowctl keeps its data.

``AFLOWCTL_HOME`` chooses the data directory; the default is the per-user data
directory (``$XDG_DATA_HOME/aflowctl``, i.e. ``~/.local/share/aflowctl`` on Linux).
Inside it: ``aflowctl.db`` (the store), ``data/`` (benchmark splits), ``models/``
(converted local models), ``runs/<run_id>/`` (logs, reports, checkpoints).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home() -> Path:
    env = os.environ.get("AFLOWCTL_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "aflowctl"


def db_path(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("AFLOWCTL_DB")
    if env:
        return Path(env).expanduser()
    return home() / "aflowctl.db"


def data_dir() -> Path:
    return home() / "data"


def models_dir() -> Path:
    env = os.environ.get("AFLOWCTL_MODELS_DIR")
    return Path(env).expanduser() if env else home() / "models"


def run_dir(run_id: str) -> Path:
    return home() / "runs" / run_id
