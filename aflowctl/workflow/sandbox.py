"""The sandbox for generated code, as the workflow layer uses it (re-exports).

It lives in :mod:`aflowctl.sandbox` (design and guarantees: docs/sandbox.md):
:func:`run_python` runs code in a confined child; :func:`check_solution` checks a
solution with a verdict decided outside the process that runs it.
"""

from __future__ import annotations

import os
from typing import Any

from aflowctl.sandbox import harness as _harness
from aflowctl.sandbox import process as _process
from aflowctl.sandbox.confine import capabilities, sandbox_user
from aflowctl.sandbox.harness import check_solution, compose_test
from aflowctl.sandbox.process import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    SandboxResult,
    run_python,
)


async def run_python_async(code: str, **kwargs: Any) -> SandboxResult:
    """:func:`run_python` off the event loop. In a rollout worker (confined: it cannot
    start processes) the run is made by the parent, through the LLM gateway."""
    from aflowctl.llm import gateway

    if gateway.connected():
        return await gateway.run_code("run_python", code=code, limits=kwargs)
    return await _process.run_python_async(code, **kwargs)


async def check_solution_async(solution: str, test: Any, entry_point: Any, **kwargs: Any) -> SandboxResult:
    """:func:`check_solution` off the event loop (through the gateway in a rollout worker)."""
    from aflowctl.llm import gateway

    if gateway.connected():
        return await gateway.run_code(
            "check_solution", solution=solution, test=test, entry_point=entry_point, limits=kwargs
        )
    return await _harness.check_solution_async(solution, test, entry_point, **kwargs)


def describe() -> dict[str, Any]:
    """What protections this machine gives the sandbox (for docs, benches and tests):
    :func:`aflowctl.sandbox.confine.capabilities` plus the uid sandboxed code runs as."""
    user = sandbox_user()
    return {**capabilities(), "run_as_uid": user[0] if user else os.geteuid()}


__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "SandboxResult",
    "check_solution",
    "check_solution_async",
    "compose_test",
    "describe",
    "run_python",
    "run_python_async",
]
