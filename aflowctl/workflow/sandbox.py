"""The sandbox for generated code, as the workflow layer uses it (re-exports).

It lives in :mod:`aflowctl.sandbox` (design and guarantees: docs/sandbox.md):
:func:`run_python` runs code in a confined child; :func:`check_solution` checks a
solution with a verdict decided outside the process that runs it.
"""

from __future__ import annotations

import os
from typing import Any

from aflowctl.sandbox.confine import capabilities, sandbox_user
from aflowctl.sandbox.harness import check_solution, check_solution_async, compose_test
from aflowctl.sandbox.process import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    SandboxResult,
    run_python,
    run_python_async,
)


def describe() -> dict[str, Any]:
    """What protections this machine gives the sandbox (for docs, benches and tests):
    :func:`aflowctl.sandbox.confine.capabilities` plus the uid sandboxed code runs as."""
    user = sandbox_user()
    return {**capabilities(), "run_as_uid": user[0] if user else os.geteuid()}


__all__ = ["DEFAULT_MAX_OUTPUT", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "SandboxResult", "check_solution",
           "check_solution_async", "compose_test", "describe", "run_python", "run_python_async"]
