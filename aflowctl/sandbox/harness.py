"""Check a solution against its tests with a verdict the solution cannot forge.

The problem. A verdict reported from inside the process that runs the candidate
can be forged by the candidate: it can walk ``sys._getframe()`` up to the
harness and call its reporting function, find it with ``gc``, monkeypatch
``builtins`` or ``AssertionError``, return objects whose ``__eq__`` always says
True, print the harness's marker line, or ``os._exit(0)`` before the tests run.
A secret nonce does not help when the candidate can read the memory that holds it.

The design. The pass/fail decision is made in a process the candidate cannot
reach, by comparing plain data:

1. The sandboxed child (:mod:`aflowctl.sandbox.child`) starts with the solution
   and forks. The *candidate* (the forked child) closes the descriptors holding
   the test and the verdict before anything else, confines itself
   (:mod:`aflowctl.sandbox.confine`: another Landlock domain, seccomp, an
   unprivileged uid; no ptrace, no ``/proc``, signals only to itself), defines
   the solution and then only answers requests (:mod:`aflowctl.sandbox.candidate`).
2. The *judge* (the parent, confined too) reads the test from its descriptor,
   executes the trusted prelude (AFlow's imports, the helpers a HumanEval prompt
   defines) and the test in its own namespace, where what the solution defined is
   a :class:`~aflowctl.sandbox.judge.Remote`: calling it sends the arguments over
   a pipe and gets back plain values (:mod:`aflowctl.sandbox.wire`: numbers,
   strings, bytes, lists, tuples, dicts, sets, nested; subclasses arrive as the
   plain type; anything else stays in the candidate as a handle that equals
   only itself). ``assert candidate(x) == y`` therefore compares two plain values
   in the judge. Arguments the solution changes in place are changed here too.
3. The judge writes the verdict to a descriptor the candidate never held; the
   parent (this module) reads it after the judge exits and kills what is left of
   the process group (the candidate also dies with the judge: parent-death signal).

So frame walking, ``gc`` and monkeypatching only reach the candidate's own
process; an always-equal object arrives as a handle (or as the plain value of its
base type); printing goes to the output the caller sees, not to the verdict;
``os._exit(0)`` closes the pipe, which the judge reports as ``exit``; a candidate
that never answers is a ``timeout``. The candidate never sees the test's expected
values, only the arguments it is called with. A candidate that breaks the
protocol fails. What the candidate cannot cause: a harness failure (the judge
crashing, no verdict) raises :class:`SandboxError`, an infrastructure error that
never counts as a score.

Known differences from running the test in the solution's namespace: values the
test compares must be data or handles (a solution returning a custom object the
test compares with ``==`` fails, as it would against AFlow's expected values);
a test that hands the solution one of its own functions cannot (``TypeError``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Optional

from aflowctl.errors import SandboxError
from aflowctl.sandbox.process import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    HARD_GRACE_S,
    SandboxResult,
    launch,
    limits_spec,
    raise_if_unconfined,
)


def compose_test(test: str | Sequence[str]) -> str:
    """A test as source: a string as-is, a list of assert lines joined."""
    if isinstance(test, str):
        return test
    return "\n".join(str(t) for t in test) + "\n"


def check_solution(
    solution: str,
    test: str | Sequence[str],
    entry_point: Optional[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    prelude: str = "",
    allow_unsandboxed: bool = False,
) -> SandboxResult:
    """Define ``solution`` in a confined candidate process, run ``test`` against it in
    a separate judge process, and return the judge's verdict.

    ``test`` is HumanEval style (``def check(candidate)``, called with the entry
    point), MBPP style (``def check()`` with plain asserts, called without
    arguments), bare asserts, or a list of assert lines. ``prelude`` is trusted code
    run in the judge before the test (imports, helpers from the problem); the
    solution should contain its own copy if it needs them. ``ok`` only when every
    test ran and passed. Raises :class:`SandboxError` when the sandbox could not be
    set up or the harness itself failed: never a verdict.
    """
    spec = {
        **limits_spec("check", timeout_s, memory_mb, allow_unsandboxed=allow_unsandboxed),
        "entry": entry_point or "",
        "solution": solution or "",
        "prelude": prelude,
    }
    fin = launch(
        spec,
        files={"solution.py": solution or ""},
        payload={"test": compose_test(test)},
        timeout_s=timeout_s + HARD_GRACE_S,
        max_output_bytes=max_output_bytes,
    )
    if fin.timed_out and "status" not in fin.status:
        raise SandboxError(
            f"the check harness gave no verdict within {timeout_s + HARD_GRACE_S:g} s",
            "the machine may be overloaded; re-run",
        )
    raise_if_unconfined(fin)
    if "status" not in fin.status:
        raise SandboxError(
            f"the check harness ended without a verdict (status {fin.returncode})", "re-run; report it if it persists"
        )
    status, detail = str(fin.status["status"]), str(fin.status.get("detail", ""))
    if fin.out_size > max_output_bytes or fin.err_size > max_output_bytes:
        status, detail = "output_limit", f"output exceeded {max_output_bytes} bytes"
    if status == "passed":
        reason = "ok"
    elif status == "memory":
        reason = f"memory: MemoryError (limit {memory_mb} MB)"
    elif status == "output_limit":
        reason = f"output_limit: output exceeded {max_output_bytes} bytes"
    else:
        reason = f"{status}: {detail}"
    return SandboxResult(
        ok=reason == "ok",
        reason=reason,
        returncode=fin.returncode,
        stdout=fin.stdout,
        stderr=fin.stderr,
        duration_s=fin.duration_s,
    )


async def check_solution_async(
    solution: str, test: str | Sequence[str], entry_point: Optional[str], **kwargs: Any
) -> SandboxResult:
    """:func:`check_solution` without blocking the event loop (runs in a thread)."""
    return await asyncio.to_thread(check_solution, solution, test, entry_point, **kwargs)
