"""The sandbox rows of ``aflowctl doctor``: which confinement layers this machine gives
untrusted code (docs/sandbox.md), and a probe that runs a real sandboxed child trying
four escapes. Rows as in :mod:`aflowctl.doctor`.
"""

from __future__ import annotations

import os

from aflowctl.config import Config
from aflowctl.doctor import _check


def check_sandbox(cfg: Config) -> list[dict]:
    """The layers the sandbox for untrusted code gets on this machine (docs/sandbox.md)."""
    from aflowctl.sandbox.confine import capabilities

    caps = capabilities()
    layers = [
        f"landlock ABI {caps['landlock_abi']}" if caps["landlock_abi"] else "no landlock",
        "seccomp" if caps["seccomp"] else "no seccomp",
    ]
    if caps["root"]:
        layers.append(f"root drops to {caps['sandbox_user']}" if caps["can_drop_uid"] else "stays root")
    else:
        layers.append(f"runs as uid {os.geteuid()}")
    out = []
    if caps["ok"]:
        out.append(_check("sandbox", "ok", ", ".join(layers)))
    else:
        p = caps["problems"][0]
        allowed = cfg.rollout.allow_unsandboxed
        out.append(
            _check(
                "sandbox",
                "warn" if allowed else "fail",
                f"{', '.join(layers)}: {p['detail']}" + (" (rollout.allow_unsandboxed = true)" if allowed else ""),
                p["fix"] + ("" if allowed else "; runs refuse until then (or set rollout.allow_unsandboxed = true)"),
            )
        )
    if caps["ok"] or cfg.rollout.allow_unsandboxed:
        out.append(_probe_sandbox(cfg.rollout.allow_unsandboxed))
    if caps["needs_read_capability"]:
        out.append(
            _check(
                "sandbox interpreter",
                "warn",
                f"{caps['sandbox_user']} cannot read {caps['interpreter']}'s files: the sandbox keeps "
                "CAP_DAC_READ_SEARCH, limited by Landlock to the interpreter's paths",
                "install Python in a world-readable place (e.g. /usr/local or /opt) and make the venv from it",
            )
        )
    elif caps["root"]:
        out.append(_check("sandbox interpreter", "ok", f"{caps['sandbox_user']} can run {caps['interpreter']}"))
    return out


_PROBE = """import os, socket
out = []
for name, act in (("/proc/1/environ", lambda: open("/proc/1/environ", "rb").read()),
                  ("a file outside the scratch directory", lambda: open("/tmp/aflowctl-doctor-probe", "w")),
                  ("a new process", os.fork),
                  ("a new socket", lambda: socket.socket(socket.AF_UNIX))):
    try:
        act()
        out.append(name)
    except OSError:
        pass
print("ESCAPED:" + ", ".join(out) if out else "CONTAINED")
"""


def _probe_sandbox(allow_unsandboxed: bool) -> dict:
    """Run a real sandboxed child that tries four escapes."""
    from aflowctl.errors import SandboxError
    from aflowctl.sandbox.process import run_python

    try:
        r = run_python(_PROBE, timeout_s=20, memory_mb=256, allow_unsandboxed=allow_unsandboxed)
    except SandboxError as exc:
        return _check("sandbox probe", "fail", exc.message, exc.hint)
    if r.ok and r.stdout.strip() == "CONTAINED":
        return _check(
            "sandbox probe",
            "ok",
            "a sandboxed child could not read /proc/1/environ, write outside its "
            f"scratch directory, start a process or make a socket ({r.duration_s * 1000:.0f} ms)",
        )
    return _check(
        "sandbox probe",
        "warn" if allow_unsandboxed else "fail",
        (r.stdout.strip() or r.reason)[:300],
        "see docs/sandbox.md and the sandbox row above",
    )
