"""Run untrusted Python (generated solutions, Programmer code) in a child process.

Every run gets:

* a fresh interpreter (``python -I -B -u``: isolated mode, no user site, no
  ``PYTHON*`` variables) in its own session, so the whole process group is killed
  (SIGKILL) when the wall-clock timeout passes and again after it exits;
* resource limits set between fork and exec: address space (``RLIMIT_AS``), CPU
  seconds, size of files written (which also caps stdout/stderr: they go to files),
  no core dumps, and a process-count limit;
* a seccomp filter (x86_64 and aarch64 Linux) installed by a small bootstrap before
  the code runs: creating processes (fork, vfork, clone without CLONE_THREAD,
  clone3) fails with EPERM, so a fork bomb or ``os.system`` cannot start anything,
  signals may only go to the sandboxed process itself (``kill(-1, 9)`` fails), and
  limits cannot be raised again (setrlimit/prlimit fail, even as root);
  ``RLIMIT_NPROC`` alone would not do: it counts per user and root ignores it;
* when aflowctl runs as root, the child runs as the unprivileged user ``nobody``
  (``AFLOWCTL_SANDBOX_USER`` chooses another user; ``root`` keeps root);
* a scratch temporary directory as working directory and ``HOME``, removed after;
* a minimal environment (``PATH``, ``LANG``, ``HOME``, ``TMPDIR`` and thread-count
  variables): nothing inherited, so no API keys.

Verdicts never raise for anything the code does: a :class:`SandboxResult` says what
happened, ``reason`` starting with one of ``ok``, ``timeout``, ``memory``,
``output_limit``, ``signal``, ``exit``, ``exception``, ``missing``.
Only a failure to start the interpreter at all raises :class:`SandboxError`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from aflowctl.errors import SandboxError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_MAX_OUTPUT = 65536
_PROC_LIMIT = 512  # backstop where seccomp is unavailable (counted per user)


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
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0].split(" ", 1)[0]


# --------------------------------------------------------------------------- seccomp

_SECCOMP_ARCH = {
    # machine: (AUDIT_ARCH, syscall numbers)
    "x86_64": (
        0xC000003E,
        dict(fork=57, vfork=58, clone=56, clone3=435, kill=62, tkill=200, tgkill=234, ptrace=101,
             process_vm_writev=311, process_vm_readv=310, pidfd_send_signal=424, setrlimit=160,
             prlimit64=302),
    ),
    "aarch64": (
        0xC00000B7,
        dict(clone=220, clone3=435, kill=129, tkill=130, tgkill=131, ptrace=117,
             process_vm_writev=271, process_vm_readv=270, pidfd_send_signal=424, setrlimit=164,
             prlimit64=261),
    ),
}


def _seccomp_program_source() -> str:
    """Python source of the bootstrap that installs the filter (runs in the child).

    The filter is assembled from symbolic jumps so that offsets stay right. It is
    installed with PR_SET_NO_NEW_PRIVS + PR_SET_SECCOMP; if the kernel refuses,
    the code still runs under the rlimits (recorded in AFLOWCTL_SECCOMP=0).
    """
    machine = platform.machine()
    if sys.platform != "linux" or machine not in _SECCOMP_ARCH:
        return ""
    audit, nr = _SECCOMP_ARCH[machine]
    return f"""
def _aflowctl_guard():
    import ctypes, os, struct
    AUDIT = {audit}
    NR = {nr!r}
    X32 = {machine == "x86_64"}
    pid = os.getpid()
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = []  # (code, k, jt, jf) with label names or None (fall through)
    def ld(off): prog.append((0x20, off, None, None))
    def jeq(k, t, f=None): prog.append((0x15, k, t, f))
    def jge(k, t, f=None): prog.append((0x35, k, t, f))
    def jset(k, t, f=None): prog.append((0x45, k, t, f))
    def ret(k): prog.append((0x06, k, None, None))
    labels = {{}}
    def label(n): labels[n] = len(prog)
    ld(4); jeq(AUDIT, None, "deny")
    ld(0)
    if X32: jge(0x40000000, "deny")
    for name in ("fork", "vfork", "tkill", "ptrace", "process_vm_writev", "process_vm_readv", "pidfd_send_signal",
                 "setrlimit"):
        if name in NR: jeq(NR[name], "deny")
    jeq(NR["clone3"], "enosys")
    jeq(NR["clone"], "clone")
    jeq(NR["kill"], "kill")
    jeq(NR["tgkill"], "tgkill")
    jeq(NR["prlimit64"], "prlimit")
    ret(ALLOW)
    label("clone"); ld(16); jset(0x00010000, "allow", "deny")
    label("kill"); ld(16); jeq(pid, "allow"); jeq(0, "allow", "deny")
    label("tgkill"); ld(16); jeq(pid, "allow", "deny")
    label("prlimit"); ld(32); jeq(0, None, "deny"); ld(36); jeq(0, "allow", "deny")  # reading only
    label("allow"); ret(ALLOW)
    label("deny"); ret(EPERM)
    label("enosys"); ret(ENOSYS)
    out = b""
    for i, (code, k, t, f) in enumerate(prog):
        jt = 0 if t is None else labels[t] - i - 1
        jf = 0 if f is None else labels[f] - i - 1
        out += struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
    buf = ctypes.create_string_buffer(out, len(out))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0
"""


_BOOT_TAIL = """
import sys
_ok = _aflowctl_guard() if "_aflowctl_guard" in globals() else False
import os
os.environ["AFLOWCTL_SECCOMP"] = "1" if _ok else "0"
sys.argv = [__aflowctl_main__]
with open(__aflowctl_main__, encoding="utf-8") as _f:
    _code = compile(_f.read(), __aflowctl_main__, "exec")
_g = {"__name__": "__main__", "__file__": __aflowctl_main__, "__builtins__": __builtins__}
del _f, _ok, os, sys
globals().pop("_aflowctl_guard", None)
exec(_code, _g)
"""


@lru_cache(maxsize=1)
def _bootstrap() -> str:
    return _seccomp_program_source() + _BOOT_TAIL


# --------------------------------------------------------------------------- user drop


@lru_cache(maxsize=1)
def _sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) to run the child as, or None to keep the current user."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    want = os.environ.get("AFLOWCTL_SANDBOX_USER", "nobody").strip()
    if want in ("", "root", "0"):
        return None
    import pwd

    try:
        pw = pwd.getpwuid(int(want)) if want.isdigit() else pwd.getpwnam(want)
    except (KeyError, ValueError):
        return None
    if not _world_usable(Path(sys.executable)):
        return None  # the interpreter is not reachable by that user: keep root
    return pw.pw_uid, pw.pw_gid


def _world_usable(exe: Path) -> bool:
    """True when every directory above the interpreter (and its target) is o+x."""
    for p in {exe, exe.resolve()}:
        try:
            if not p.stat().st_mode & stat.S_IXOTH:
                return False
            for parent in p.parents:
                if not parent.stat().st_mode & stat.S_IXOTH:
                    return False
        except OSError:
            return False
    return True


@lru_cache(maxsize=1)
def seccomp_active() -> bool:
    """True when a sandboxed child really runs under the no-fork filter (probed once)."""
    if not _seccomp_program_source():
        return False
    res = run_python("import os\nprint(os.environ.get('AFLOWCTL_SECCOMP'))\ntry:\n    os.kill(1, 0)\n"
                     "except PermissionError:\n    print('blocked')\n", timeout_s=10)
    return res.ok and res.stdout.split() == ["1", "blocked"]


def describe() -> dict[str, Any]:
    """What protections this machine gives the sandbox (for docs, doctor, tests)."""
    user = _sandbox_user()
    return {
        "seccomp": seccomp_active(),
        "arch": platform.machine(),
        "run_as_uid": user[0] if user else os.geteuid() if os.name == "posix" else None,
        "interpreter": sys.executable,
    }


# --------------------------------------------------------------------------- running


def _minimal_env(scratch: str, extra: dict[str, str] | None) -> dict[str, str]:
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
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _make_preexec(memory_mb: int, timeout_s: float, fsize: int):
    cpu = int(timeout_s) + 2
    limits = [
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, _PROC_LIMIT),
    ]
    setrlimit = resource.setrlimit

    def preexec() -> None:  # runs in the child between fork and exec: syscalls only
        for res, value in limits:
            try:
                setrlimit(res, (value, value))
            except (ValueError, OSError):
                pass

    return preexec


def _read_capped(path: Path, cap: int) -> tuple[str, int, str]:
    """(first `cap` bytes as text, total size, last 4 KiB as text)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(cap)
            tail = b""
            if size > cap:
                f.seek(max(size - 4096, 0))
                tail = f.read()
    except OSError:
        return "", 0, ""
    dec = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
    return dec(head), size, dec(tail) if tail else dec(head[-4096:])


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _execute(
    files: dict[str, str],
    main: str,
    *,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    stdin: str | bytes | None,
    env: dict[str, str] | None,
) -> tuple[SandboxResult, str]:
    """Run `main` (one of `files`) in the sandbox. Returns (result, stdout tail)."""
    if timeout_s <= 0:
        raise SandboxError(f"sandbox timeout must be positive (got {timeout_s})", "pass timeout_s > 0")
    if memory_mb < 32:
        raise SandboxError(f"sandbox memory limit {memory_mb} MB is too small to start Python", "pass memory_mb >= 64")
    scratch = tempfile.mkdtemp(prefix="aflowctl-sbx-")
    user = _sandbox_user()
    try:
        sp = Path(scratch)
        for name, text in files.items():
            (sp / name).write_text(text, encoding="utf-8")
        if user is not None:
            os.chown(scratch, user[0], user[1])
            os.chmod(scratch, 0o700)
        out_path = Path(tempfile.mkstemp(prefix="aflowctl-sbx-out-")[1])
        err_path = Path(tempfile.mkstemp(prefix="aflowctl-sbx-err-")[1])
        fsize = max(2 * max_output_bytes + 65536, 1 << 20)
        main_abs = str(sp / main)
        boot = f"__aflowctl_main__ = {main_abs!r}\n" + _bootstrap()
        argv = [sys.executable, "-I", "-B", "-u", "-c", boot]
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user[0], group=user[1], extra_groups=[])
        stdin_data = stdin.encode() if isinstance(stdin, str) else stdin
        t0 = time.monotonic()
        timed_out = False
        stdin_file = None
        if stdin_data is not None:  # an unlinked file: never blocks, whatever the child reads
            stdin_file = tempfile.TemporaryFile()
            stdin_file.write(stdin_data)
            stdin_file.seek(0)
        with open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=scratch,
                    env=_minimal_env(scratch, env),
                    stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
                    stdout=fout,
                    stderr=ferr,
                    start_new_session=True,
                    preexec_fn=_make_preexec(memory_mb, timeout_s, fsize),
                    close_fds=True,
                    **kwargs,
                )
            except OSError as exc:
                raise SandboxError(f"could not start the sandbox interpreter {sys.executable}: {exc.strerror or exc}",
                                   "check that the Python interpreter is executable") from None
            finally:
                if stdin_file is not None:
                    stdin_file.close()
            try:
                remaining = max(timeout_s - (time.monotonic() - t0), 0.001)
                # A timer kills the group; a blocking wait() (Popen.wait(timeout) polls with sleeps).
                fired = threading.Event()

                def _on_timeout() -> None:
                    fired.set()
                    _kill_group(proc.pid)

                timer = threading.Timer(remaining, _on_timeout)
                timer.daemon = True
                timer.start()
                try:
                    proc.wait()
                finally:
                    timer.cancel()
                timed_out = fired.is_set()
            finally:
                if proc.returncode is None:
                    _kill_group(proc.pid)
                    proc.wait()
                if not _seccomp_program_source():
                    _kill_group(proc.pid)  # without the no-fork filter, children may be left behind
        duration = time.monotonic() - t0
        stdout, out_size, out_tail = _read_capped(out_path, max_output_bytes)
        stderr, err_size, _ = _read_capped(err_path, max_output_bytes)
        for p in (out_path, err_path):
            try:
                p.unlink()
            except OSError:
                pass
        rc = proc.returncode
        over = out_size > max_output_bytes or err_size > max_output_bytes
        if timed_out:
            reason = f"timeout: killed after {timeout_s:g} s wall clock (process group)"
        elif rc is not None and rc < 0:
            sig = -rc
            if sig == signal.SIGXFSZ or over:
                reason = f"output_limit: output exceeded {max_output_bytes} bytes"
            elif sig == signal.SIGXCPU:
                reason = f"timeout: CPU time limit ({int(timeout_s) + 2} s) exceeded"
            else:
                reason = f"signal: killed by {_signal_name(sig)}"
        elif over:
            reason = f"output_limit: output exceeded {max_output_bytes} bytes"
        elif rc != 0 and "MemoryError" in stderr:
            reason = f"memory: MemoryError (limit {memory_mb} MB)"
        elif rc != 0:
            last = _last_line(stderr)
            if last and ("Error" in last or "Exception" in last or ":" in last) and "Traceback" in stderr:
                reason = f"exception: {last}"
            else:
                reason = f"exit: status {rc}" + (f" ({last})" if last else "")
        else:
            reason = "ok"
        res = SandboxResult(ok=reason == "ok", reason=reason, returncode=rc, stdout=stdout, stderr=stderr,
                            duration_s=duration)
        return res, out_tail
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_python(
    code: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
    stdin: str | bytes | None = None,
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandboxed child; ok when it exits 0 in time
    with output under the cap."""
    res, _ = _execute({"main.py": code}, "main.py", timeout_s=timeout_s, memory_mb=memory_mb,
                      max_output_bytes=max_output_bytes, stdin=stdin, env=env)
    return res


async def run_python_async(code: str, **kwargs: Any) -> SandboxResult:
    """:func:`run_python` without blocking the event loop (runs in a thread)."""
    return await asyncio.to_thread(run_python, code, **kwargs)


# --------------------------------------------------------------------------- checking

_CHECK_HARNESS = r'''
import os as _o, sys as _s
_nonce = _s.stdin.readline().strip()
_entry = {entry!r}

def _report(status, detail=""):
    import json as _j
    _o.write(1, ("\n" + _nonce + " " + _j.dumps({{"status": status, "detail": detail}}) + "\n").encode())

def _where(exc, with_line=True):
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(("test.py", "solution.py"))]
    if not frames:
        return ""
    f = frames[-1]
    where = " at %s line %d" % (_o.path.basename(f.filename), f.lineno)
    return where + (": " + (f.line or "").strip()[:200] if with_line else "")

def _run():
    ns = {{"__name__": "__main__", "__builtins__": __builtins__}}
    here = _o.path.dirname(_o.path.abspath(__file__))
    for part in ("solution.py", "test.py"):
        path = _o.path.join(here, part)
        with open(path, encoding="utf-8") as f:
            src = f.read()
        code = compile(src, path, "exec")
        if part == "test.py" and _entry and not callable(ns.get(_entry)):
            return "missing", "solution does not define %s()" % _entry
        exec(code, ns)
    check = ns.get("check")
    if callable(check):
        co = getattr(check, "__code__", None)
        nparams = (co.co_argcount - len(getattr(check, "__defaults__", None) or ())) if co is not None else 1
        if nparams >= 1:
            check(ns.get(_entry))
        else:
            check()
    return "passed", ""

try:
    _status, _detail = _run()
except SystemExit as _e:
    _status, _detail = "exit", "code called sys.exit(%r)" % (_e.code,)
except MemoryError:
    _status, _detail = "memory", "MemoryError"
except RecursionError as _e:
    _status, _detail = "exception", "RecursionError: maximum recursion depth exceeded" + _where(_e)
except BaseException as _e:
    _msg = ("%s: %s" % (type(_e).__name__, _e)).strip().rstrip(":")
    _status, _detail = "exception", _msg[:400] + _where(_e, with_line=not (isinstance(_e, AssertionError) and str(_e)))
_report(_status, _detail)
_o._exit(0 if _status == "passed" else 1)
'''


def compose_test(test: str | Sequence[str]) -> str:
    """A test as source: a string as-is, a list of assert lines joined."""
    if isinstance(test, str):
        return test
    return "\n".join(str(t) for t in test) + "\n"


def check_solution(
    solution: str,
    test: str | Sequence[str],
    entry_point: str | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
) -> SandboxResult:
    """Define ``solution``, then run ``test`` against it in the sandbox.

    ``test`` is HumanEval style (``def check(candidate)``, called with the entry
    point), MBPP style (``def check()`` with plain asserts, called without
    arguments), bare asserts, or a list of assert lines. ``ok`` only when the
    harness reports that every test ran and passed: a solution that calls
    ``sys.exit``/``os._exit`` before the tests finish fails.
    """
    nonce = secrets.token_hex(16)
    files = {
        "solution.py": solution or "",
        "test.py": compose_test(test),
        "main.py": _CHECK_HARNESS.format(entry=entry_point or ""),
    }
    res, tail = _execute(files, "main.py", timeout_s=timeout_s, memory_mb=memory_mb,
                         max_output_bytes=max_output_bytes, stdin=nonce + "\n", env=None)
    report = None
    for line in reversed(tail.splitlines()):
        if line.startswith(nonce + " "):
            try:
                report = json.loads(line[len(nonce) + 1:])
            except ValueError:
                report = None
            break
    stdout = res.stdout
    if report is not None:  # do not show the harness's line to callers
        stdout = "\n".join(ln for ln in stdout.splitlines() if not ln.startswith(nonce)).rstrip("\n")
    if res.kind in ("timeout", "output_limit", "signal"):
        reason = res.reason
    elif report is None:
        reason = res.reason if res.kind not in ("ok",) else "exit: the program ended before the tests finished"
        if res.kind == "ok" or res.kind == "exit":
            reason = "exit: the program ended before the tests finished" + (
                f" (status {res.returncode})" if res.returncode else "")
    elif report["status"] == "passed":
        reason = "ok"
    elif report["status"] == "memory":
        reason = f"memory: MemoryError (limit {memory_mb} MB)"
    else:
        reason = f"{report['status']}: {report['detail']}"
    return SandboxResult(ok=reason == "ok", reason=reason, returncode=res.returncode, stdout=stdout,
                         stderr=res.stderr, duration_s=res.duration_s)


async def check_solution_async(solution: str, test: str | Sequence[str], entry_point: str | None,
                               **kwargs: Any) -> SandboxResult:
    return await asyncio.to_thread(check_solution, solution, test, entry_point, **kwargs)
