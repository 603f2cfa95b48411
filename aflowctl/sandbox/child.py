"""Entry point of a sandboxed child process (started by :mod:`aflowctl.sandbox.process`).

The child starts as a plain interpreter (``python -I -B -u``, minimal environment,
its own session), reads its spec from an inherited descriptor and confines itself
(:func:`aflowctl.sandbox.confine.confine_current_process`) before any untrusted
code runs. Two modes:

* ``run``: run ``main.py`` of the scratch directory as ``__main__``;
* ``check``: fork into the judge (this process) and the candidate (the child);
  each confines itself; the candidate closes the test and verdict descriptors
  before the solution runs (see :mod:`aflowctl.sandbox.harness`).

The status descriptor says whether confinement worked (``{"confined": ...}`` or
``{"sandbox_error": ...}``) and, in ``check`` mode, carries the verdict. It is
closed (or never held) by the process that runs untrusted code.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import time


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _status(fd: int, msg: dict) -> None:
    data = json.dumps(msg).encode()
    while data:
        data = data[os.write(fd, data) :]


def _read_rules(spec: dict) -> dict:
    """The parent's read rules (``reads``, and ``package_reads`` for generated code), built
    once: ``{"generated": ..., "trusted": ...}`` (the judge runs only the trusted test)."""
    from aflowctl.sandbox.readable import ReadRules

    trusted = ReadRules.from_dict(spec["reads"])
    return {"trusted": trusted, "generated": trusted + ReadRules.from_dict(spec.get("package_reads") or {})}


def _confine(spec: dict, scratch: str, generated: bool = True):
    """Confine this process; ``generated``: it will run generated code, which may import
    the spec's ``packages`` (the judge runs only the trusted test: it gets none)."""
    from aflowctl.sandbox.confine import confine_current_process

    return confine_current_process(
        scratch_dir=scratch,
        memory_mb=spec["memory_mb"],
        cpu_s=spec["cpu_s"],
        fsize_bytes=spec["fsize"],
        nofile=spec.get("nofile"),
        rules=spec["rules"]["generated" if generated else "trusted"],
        allow_unsandboxed=spec.get("allow_unsandboxed", False),
    )


def main(spec_fd: int, payload_fd: int, status_fd: int) -> None:
    from aflowctl.sandbox import confine

    spec = json.loads(_read_all(spec_fd))
    if spec["mode"] == "check":  # loaded once here, before the fork, for both sides
        from aflowctl.sandbox import candidate, judge, wire  # noqa: F401

        _preimport(spec.get("prelude", ""))
    spec["rules"] = _read_rules(spec)  # before the fork, for both sides
    for rules in spec["rules"].values():
        confine.prepare(rules)
    if spec["mode"] == "run":
        _run(spec, status_fd)
    else:
        _check(spec, payload_fd, status_fd)


def _preimport(prelude: str) -> None:
    """Import the modules the (trusted) prelude imports, once, before the fork: both the
    judge and the candidate run the prelude, and ``hashlib`` alone loads libcrypto."""
    import ast
    import importlib

    try:
        tree = ast.parse(prelude)
    except SyntaxError:
        return
    for node in tree.body:
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
            else []
        )
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                pass


def _run(spec: dict, status_fd: int) -> None:
    from aflowctl.errors import SandboxError

    try:
        report = _confine(spec, spec["work"])
    except SandboxError as exc:
        _status(status_fd, {"sandbox_error": str(exc)})
        os._exit(0)
    _status(status_fd, {"confined": report.summary()})
    os.close(status_fd)
    path = os.path.join(spec["work"], "main.py")
    sys.argv = [path]
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": builtins})


def _check(spec: dict, payload_fd: int, status_fd: int) -> None:
    from aflowctl.errors import SandboxError
    from aflowctl.sandbox import wire

    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the candidate: nothing of the test or the verdict stays open here
        try:
            for fd in (payload_fd, status_fd, req_w, resp_r):
                os.close(fd)
            try:
                _confine(spec, spec["work"])
            except SandboxError as exc:
                wire.send(resp_w, {"sandbox_error": str(exc)})
                os._exit(0)
            wire.send(resp_w, {"confined": True})
            from aflowctl.sandbox.candidate import serve

            serve(spec["solution"], req_r, resp_w)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(resp_w)
    try:
        verdict = _judge(spec, pid, req_w, resp_r, payload_fd)
    except BaseException as exc:  # noqa: BLE001 - a harness failure, reported as such
        import traceback

        verdict = {
            "infra": f"the check harness failed: {type(exc).__name__}: {exc}"[:500],
            "trace": traceback.format_exc()[-2000:],
        }
    _status(status_fd, verdict)
    _reap(pid, req_w)
    os._exit(0)


def _reap(pid: int, req_w: int) -> None:
    """Close the candidate's request pipe (an idle candidate exits) and reap it for up
    to 100 ms, so its CPU time is accounted to this process tree; a busy one is left
    to the parent-death signal and the parent's group kill."""
    try:
        os.close(req_w)
    except OSError:
        pass
    for _ in range(100):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.001)


def _judge(spec: dict, cand_pid: int, req_fd: int, resp_fd: int, payload_fd: int) -> dict:
    import signal

    from aflowctl.errors import SandboxError
    from aflowctl.sandbox import judge

    payload = json.loads(_read_all(payload_fd))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the test's prints; the candidate's output is what callers see
    os.close(devnull)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the candidate may fill the shared stderr
    os.chdir(spec["judge_dir"])
    deadline = time.monotonic() + spec["timeout_s"]
    try:
        _confine(spec, spec["judge_dir"], generated=False)
    except SandboxError as exc:
        return {"sandbox_error": str(exc)}
    ch = judge.Channel(cand_pid, req_fd, resp_fd, deadline, spec["timeout_s"])
    try:
        first = ch.recv()
    except judge.Abort as exc:
        return {"status": exc.status, "detail": exc.detail}
    if "sandbox_error" in first:
        return {"sandbox_error": str(first["sandbox_error"])[:500]}
    status, detail = judge.run(
        test=payload["test"], prelude=spec.get("prelude", ""), entry=spec.get("entry") or "", ch=ch
    )
    return {"status": status, "detail": detail}
