"""Run untrusted Python in a confined child process (generated solutions, Programmer code).

Every run gets a fresh interpreter (``python -I -B -u``: isolated mode, no user
site, no ``PYTHON*`` variables) in its own session and a minimal environment
(``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` = the scratch directory, thread
counts: no API keys), which confines itself before the code runs
(:mod:`aflowctl.sandbox.confine`: rlimits, an unprivileged uid when root,
Landlock, seccomp; no network, no processes, writes only in its scratch
directory). The whole process group is SIGKILLed when the wall-clock limit
passes, and again when it ends. Output goes to unlinked temporary files (nothing
to clean up, no descriptor kept), the scratch directory is removed on every path.

A run that cannot be confined or started raises :class:`SandboxError` (an
infrastructure failure, never a score); anything the code does is a
:class:`SandboxResult` whose ``reason`` starts with ``ok``, ``timeout``,
``memory``, ``output_limit``, ``signal``, ``exit``, ``exception`` or ``missing``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from aflowctl.errors import SandboxError
from aflowctl.sandbox.confine import SANDBOX_USER_ENV
from aflowctl.sandbox.host import child_read_rules, package_read_rules

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_MAX_OUTPUT = 65536
#: extra seconds the parent waits past the child's own limit before it kills it
HARD_GRACE_S = 5.0


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed run.

    ``ok`` is the verdict; ``reason`` is one line whose first word is the kind
    (``ok``, ``timeout``, ``memory``, ``output_limit``, ``signal``, ``exit``,
    ``exception``, ``missing``); ``returncode`` is negative for a signal (None when
    it never started); ``stdout``/``stderr`` are capped at ``max_output_bytes``.
    """

    ok: bool
    reason: str
    returncode: Optional[int]
    stdout: str
    stderr: str
    duration_s: float

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0].split(" ", 1)[0]


@dataclass
class Finished:
    """What :func:`launch` saw: exit status, capped output, the status descriptor's text."""

    returncode: int
    timed_out: bool
    stdout: str
    stderr: str
    out_size: int
    err_size: int
    status: dict
    duration_s: float


def check_limits(timeout_s: float, memory_mb: int) -> None:
    if not timeout_s or timeout_s <= 0:
        raise SandboxError(f"sandbox timeout must be positive (got {timeout_s})", "pass timeout_s > 0")
    if memory_mb < 32:
        raise SandboxError(f"sandbox memory limit {memory_mb} MB is too small to start Python", "pass memory_mb >= 64")


#: third-party packages generated code may import (the Programmer's prompt offers sympy;
#: numpy would add about 400 Landlock rules, some 15 ms of CPU, to every check),
#: when installed: their code is readable in the sandbox, never anything else of
#: site-packages (see :mod:`aflowctl.sandbox.readable`)
GENERATED_CODE_PACKAGES = ("sympy", "mpmath")


def limits_spec(mode: str, timeout_s: float, memory_mb: int, *, allow_unsandboxed: bool) -> dict:
    """The child's spec for these limits (checked first): wall clock, memory, and CPU
    seconds (the wall clock plus 2)."""
    check_limits(timeout_s, memory_mb)
    return {
        "mode": mode,
        "memory_mb": memory_mb,
        "cpu_s": int(timeout_s) + 2,
        "timeout_s": timeout_s,
        "allow_unsandboxed": allow_unsandboxed,
        "packages": list(GENERATED_CODE_PACKAGES),
    }


def _minimal_env(scratch: str, extra: Optional[dict[str, str]]) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    if os.environ.get(SANDBOX_USER_ENV):  # the child drops to the user the parent was told to use
        env[SANDBOX_USER_ENV] = os.environ[SANDBOX_USER_ENV]
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _boot(spec_fd: int, payload_fd: int, status_fd: int) -> str:
    """The ``-c`` program: import the child entry point (from this source tree when
    aflowctl is not installed in the interpreter) and run it."""
    root = str(Path(__file__).resolve().parents[2])
    return (
        "import sys\ntry:\n    import aflowctl.sandbox.child as _c\nexcept ImportError:\n"
        f"    sys.path.append({root!r})\n    import aflowctl.sandbox.child as _c\n"
        f"_c.main({spec_fd}, {payload_fd}, {status_fd})\n"
    )


def _temp_with(data: bytes) -> BinaryIO:
    f = tempfile.TemporaryFile()
    f.write(data)
    f.seek(0)
    return f


def _read_capped(f: BinaryIO, cap: int) -> tuple[str, int]:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    return f.read(cap).decode("utf-8", errors="replace"), size


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child; SIGKILL its group after ``timeout_s``. True when it timed out."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            ready = poller.poll(max(int(timeout_s * 1000), 1))
        finally:
            os.close(pidfd)
        if not ready:
            _kill_group(proc.pid)
        proc.wait()
        return not ready
    try:
        proc.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        return True


def launch(
    spec: dict,
    *,
    files: dict[str, str],
    payload: Optional[dict] = None,
    stdin: Optional[bytes] = None,
    env: Optional[dict[str, str]] = None,
    timeout_s: float,
    max_output_bytes: int,
) -> Finished:
    """Start :mod:`aflowctl.sandbox.child` with ``spec``, ``files`` written into a fresh
    scratch directory, ``payload`` on a descriptor only the judge reads; wait at most
    ``timeout_s``; clean everything up. Raises :class:`SandboxError` when it cannot start."""
    scratch = tempfile.mkdtemp(prefix="aflowctl-sbx-")
    judge_dir = tempfile.mkdtemp(prefix="aflowctl-sbx-judge-") if spec["mode"] == "check" else None
    opened: list[BinaryIO] = []
    try:
        os.chmod(scratch, 0o711)
        for name, text in files.items():
            Path(scratch, name).write_text(text, encoding="utf-8")
        full = {
            **spec,
            "work": scratch,
            "judge_dir": judge_dir,
            "fsize": max(2 * max_output_bytes + 65536, 1 << 20),
            # computed once here, not in every child
            "reads": child_read_rules(),
            "package_reads": package_read_rules(spec.get("packages") or ()),
        }
        spec_f = _temp_with(json.dumps(full).encode())
        opened.append(spec_f)
        payload_f = _temp_with(json.dumps(payload or {}).encode())
        opened.append(payload_f)
        status_f = tempfile.TemporaryFile()
        opened.append(status_f)
        out_f = tempfile.TemporaryFile()
        opened.append(out_f)
        err_f = tempfile.TemporaryFile()
        opened.append(err_f)
        stdin_f = None
        if stdin is not None:  # an unlinked file: never blocks, whatever the child reads
            stdin_f = _temp_with(stdin)
            opened.append(stdin_f)
        fds = (spec_f.fileno(), payload_f.fileno(), status_f.fileno())
        argv = [sys.executable, "-I", "-B", "-u", "-c", _boot(*fds)]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=scratch,
                env=_minimal_env(scratch, env),
                stdin=stdin_f if stdin_f is not None else subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                pass_fds=fds,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(
                f"could not start the sandbox interpreter {sys.executable}: {exc.strerror or exc}",
                "check that the Python interpreter is executable",
            ) from None
        try:
            timed_out = _wait(proc, timeout_s)
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # whatever is left of the group (the candidate of a check)
        duration = time.monotonic() - t0
        stdout, out_size = _read_capped(out_f, max_output_bytes)
        stderr, err_size = _read_capped(err_f, max_output_bytes)
        status_f.seek(0)
        raw = status_f.read(1 << 20)
        try:
            status = json.loads(raw) if raw else {}
        except ValueError:
            status = {"infra": "the sandbox wrote an unreadable status"}
        if not isinstance(status, dict):
            status = {"infra": "the sandbox wrote an unreadable status"}
        return Finished(proc.returncode, timed_out, stdout, stderr, out_size, err_size, status, duration)
    finally:
        for f in opened:
            f.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if judge_dir:
            shutil.rmtree(judge_dir, ignore_errors=True)


def raise_if_unconfined(fin: Finished) -> None:
    """SandboxError when the child could not be confined or never got that far."""
    if "sandbox_error" in fin.status:
        raise SandboxError(
            f"the sandbox could not be set up: {fin.status['sandbox_error']}"[:600], "run `aflowctl doctor`"
        )
    if "infra" in fin.status:
        raise SandboxError(str(fin.status["infra"])[:600], "re-run; report it if it persists")
    if not fin.status:
        if fin.timed_out:
            raise SandboxError("the sandboxed interpreter did not start in time", "the machine may be overloaded")
        last = _last_line(fin.stderr)
        raise SandboxError(
            f"the sandboxed interpreter failed before the code ran (status {fin.returncode})"
            + (f": {last}" if last else ""),
            "run `aflowctl doctor`",
        )


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_python(
    code: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    stdin: str | bytes | None = None,
    env: Optional[dict[str, str]] = None,
    allow_unsandboxed: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a confined child; ok when it exits 0 in time
    with output under the cap."""
    spec = limits_spec("run", timeout_s, memory_mb, allow_unsandboxed=allow_unsandboxed)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    fin = launch(
        spec, files={"main.py": code}, stdin=data, env=env, timeout_s=timeout_s, max_output_bytes=max_output_bytes
    )
    rc = fin.returncode
    if fin.timed_out:
        reason = f"timeout: killed after {timeout_s:g} s wall clock (process group)"
        if not fin.status:
            raise_if_unconfined(fin)
    else:
        raise_if_unconfined(fin)
        over = fin.out_size > max_output_bytes or fin.err_size > max_output_bytes
        if rc < 0:
            sig = -rc
            if sig == signal.SIGXFSZ or over:
                reason = f"output_limit: output exceeded {max_output_bytes} bytes"
            elif sig == signal.SIGXCPU:
                reason = f"timeout: CPU time limit ({int(timeout_s) + 2} s) exceeded"
            else:
                reason = f"signal: killed by {_signal_name(sig)}"
        elif over:
            reason = f"output_limit: output exceeded {max_output_bytes} bytes"
        elif rc != 0 and "MemoryError" in fin.stderr:
            reason = f"memory: MemoryError (limit {memory_mb} MB)"
        elif rc != 0:
            last = _last_line(fin.stderr)
            if last and ("Error" in last or "Exception" in last or ":" in last) and "Traceback" in fin.stderr:
                reason = f"exception: {last}"
            else:
                reason = f"exit: status {rc}" + (f" ({last})" if last else "")
        else:
            reason = "ok"
    return SandboxResult(
        ok=reason == "ok", reason=reason, returncode=rc, stdout=fin.stdout, stderr=fin.stderr, duration_s=fin.duration_s
    )


async def run_python_async(code: str, **kwargs: Any) -> SandboxResult:
    """:func:`run_python` without blocking the event loop (runs in a thread)."""
    return await asyncio.to_thread(run_python, code, **kwargs)
