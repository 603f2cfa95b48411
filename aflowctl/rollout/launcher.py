"""How a rollout worker process is started: its environment and its launcher.

A worker's environment is built from an allow-list (:data:`WORKER_ENV_KEEP`): no
provider key, no store path; ``HOME``/``AFLOWCTL_HOME``/``TMPDIR`` point at an empty
private folder. The ``spawn`` start method runs a tiny launcher script that starts this
Python with exactly that environment (``env -i``), so not even ``/proc/self/environ``
of a worker holds a secret. Used by the process backend and by Ray tasks' confined
children (:mod:`aflowctl.rollout.ray_node`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
from typing import Any

#: variables a worker keeps from the parent's environment (never a key: workers call through the gateway)
WORKER_ENV_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUTF8",
    "VIRTUAL_ENV",
    "AFLOWCTL_LOAD_PLUGINS",
    "AFLOWCTL_DEBUG",
    "AFLOWCTL_SANDBOX_USER",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "COVERAGE_PROCESS_START",
)


def worker_environ(extra: dict) -> dict:
    """The whole environment of a rollout worker, built from an allow-list: no
    provider key, no store path, no benchmark data (``AFLOWCTL_HOME`` and ``HOME``
    point at an empty private directory; the parent sends each problem's inputs).
    ``extra`` (the pool's ``env`` option) is added."""
    env = {k: os.environ[k] for k in WORKER_ENV_KEEP if k in os.environ}
    home = tempfile.mkdtemp(prefix="aflowctl-worker-home-")
    os.chmod(home, 0o755)
    env["AFLOWCTL_HOME"] = env["HOME"] = env["TMPDIR"] = home  # scratch dirs too: removed with the pool
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


def write_launcher(env: dict) -> str:
    """A tiny executable, in a private directory, that starts this Python with exactly
    ``env`` (``env -i``): what the ``spawn`` start method runs instead of the
    interpreter (``multiprocessing`` passes the worker's descriptors through exec)."""
    folder = tempfile.mkdtemp(prefix="aflowctl-launch-")
    path = os.path.join(folder, "python")
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    with open(path, "w") as fh:
        fh.write(f'#!/bin/sh\nexec /usr/bin/env -i {assigns} {shlex.quote(sys.executable)} "$@"\n')
    os.chmod(path, 0o700)
    return path


# The spawn start method runs one executable per process (multiprocessing.spawn's
# setting): the newest live backend's launcher; the interpreter again when none is left.
_launchers: list[str] = []
_launchers_lock = threading.Lock()


def use_launcher(ctx: Any, path: str) -> None:
    with _launchers_lock:
        _launchers.append(path)
        ctx.set_executable(path)


def drop_launcher(ctx: Any, path: str) -> None:
    with _launchers_lock:
        if path in _launchers:
            _launchers.remove(path)
        ctx.set_executable(_launchers[-1] if _launchers else sys.executable)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
