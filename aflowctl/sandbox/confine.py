"""Confine the current process, irreversibly: the one place aflowctl builds its sandbox.

:func:`confine_current_process` is called by every process that runs untrusted code
(a solution check's candidate and judge, ``run_python``'s child, a rollout worker
that runs workflow code) *before* any untrusted code runs. In order, it applies:

1. **rlimits**: address space (``memory_mb``), CPU seconds, size of written files,
   no core dumps, open descriptors;
2. **an unprivileged uid/gid** when the process is root (``nobody``;
   ``AFLOWCTL_SANDBOX_USER`` names another): supplementary groups cleared, all
   capabilities dropped from every set and from the bounding set. When that user
   cannot reach the interpreter (a Python under root's mode-700 home), the process
   keeps one capability, ``CAP_DAC_READ_SEARCH`` (read and search only, never
   write), and Landlock then decides what it may read: it is only used for the
   interpreter's own files. ``open_by_handle_at`` is blocked by the filter below;
3. ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_PDEATHSIG(SIGKILL)`` (set after the uid
   change, which clears it; a parent that already died kills the process at once);
4. **Landlock** (as far as the kernel's ABI goes): files may be written, created
   and removed only under ``scratch_dir``; read only under ``scratch_dir``,
   ``read_paths``, the standard library, the *code* of the packages imported (or
   named in ``read_packages``), never the data they ship (a benchmark's answers),
   and a few system library paths (so no ``/proc`` at all: no ``/proc/<pid>/environ``, no
   ``/proc/<pid>/mem``); nothing executed; TCP bind/connect denied (ABI >= 4);
   abstract unix sockets and signals scoped to the sandbox (ABI >= 6);
5. **seccomp** (x86_64, aarch64): no new processes (fork, vfork, clone without
   CLONE_THREAD; clone3 answers ENOSYS so threads fall back to clone), no
   execve/execveat, no sockets: ``socket``, ``connect``, ``bind``, ``listen`` and
   ``accept`` refused (a connection the process needs, such as a rollout worker's to
   the LLM gateway, is opened before confinement), ``socketpair`` for AF_UNIX
   SOCK_STREAM only (asyncio's self-pipe), no ptrace or
   cross-process memory access, signals only to the process itself, no
   setrlimit and prlimit only to read, no namespaces, mounts, io_uring, bpf,
   keyrings, handle-based opens or module loading.

Before applying anything the policy is checked against what the platform offers
(:func:`capabilities`): when a required layer is missing (seccomp, Landlock, the
uid drop when root) it raises :class:`SandboxError` naming the layer and the fix,
unless ``allow_unsandboxed=True`` (config ``rollout.allow_unsandboxed``), in which
case it applies what it can and the :class:`ConfineReport` says what is missing.
A failure half-way raises :class:`SandboxError` too: the process is then partly
confined and should exit.

What the machine offers is read in :mod:`aflowctl.sandbox.host` (re-exported here),
the privilege system calls are in :mod:`aflowctl.sandbox.privileges`; this module is
the policy: which layers, in which order, and the report.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from typing import Any

from aflowctl.errors import SandboxError
from aflowctl.sandbox import landlock, seccomp
from aflowctl.sandbox.host import (  # re-exported: this module is the sandbox's public face
    DEFAULT_SANDBOX_USER,
    SANDBOX_USER_ENV,
    SYSTEM_READ_PATHS,
    _interpreter_executables,
    _needs_read_cap,
    _thread_count,
    capabilities,
    interpreter_read_paths,
    prepare,
    reachable_by_others,
    read_rules,
    sandbox_user,
)
from aflowctl.sandbox.privileges import PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, drop_uid, prctl, set_rlimits
from aflowctl.sandbox.readable import ReadRules

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

__all__ = [
    "DEFAULT_SANDBOX_USER",
    "SANDBOX_USER_ENV",
    "SYSTEM_READ_PATHS",
    "ConfineReport",
    "capabilities",
    "confine_current_process",
    "interpreter_read_paths",
    "prepare",
    "reachable_by_others",
    "read_rules",
    "sandbox_user",
]


class ConfineReport:
    """Which layers :func:`confine_current_process` put in place.

    ``missing`` names the layers the policy wanted but the platform could not give
    (only non-empty under ``allow_unsandboxed``); ``kept_caps`` the capabilities
    the process still holds (``("CAP_DAC_READ_SEARCH",)`` when the sandbox user
    cannot reach the interpreter on its own). (A plain class: importing
    ``dataclasses`` would cost every sandboxed child several milliseconds.)
    """

    __slots__ = (
        "uid",
        "gid",
        "dropped_uid",
        "kept_caps",
        "no_new_privs",
        "pdeathsig",
        "rlimits",
        "landlock_abi",
        "landlock_fs",
        "landlock_net",
        "landlock_scoped",
        "seccomp",
        "missing",
    )

    def __init__(
        self,
        *,
        uid: int,
        gid: int,
        dropped_uid: bool,
        kept_caps: tuple[str, ...],
        no_new_privs: bool,
        pdeathsig: bool,
        rlimits: dict,
        landlock_abi: int = 0,
        landlock_fs: bool = False,
        landlock_net: bool = False,
        landlock_scoped: bool = False,
        seccomp: bool = False,
        missing: tuple[str, ...] = (),
    ):
        self.uid, self.gid, self.dropped_uid, self.kept_caps = uid, gid, dropped_uid, kept_caps
        self.no_new_privs, self.pdeathsig, self.rlimits = no_new_privs, pdeathsig, rlimits
        self.landlock_abi, self.landlock_fs, self.landlock_net = landlock_abi, landlock_fs, landlock_net
        self.landlock_scoped, self.seccomp, self.missing = landlock_scoped, seccomp, missing

    def __repr__(self) -> str:
        return f"ConfineReport({self.summary()})"

    @property
    def fully_confined(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """One line: what is active, and what is missing."""
        parts = [f"uid {self.uid}" + (" (dropped)" if self.dropped_uid else "")]
        if self.kept_caps:
            parts.append("keeps " + ",".join(self.kept_caps))
        if self.landlock_fs:
            parts.append(
                f"landlock ABI {self.landlock_abi} (fs"
                + (", tcp" if self.landlock_net else "")
                + (", scoped" if self.landlock_scoped else "")
                + ")"
            )
        parts.append("seccomp" if self.seccomp else "no seccomp")
        if self.missing:
            parts.append("MISSING: " + ", ".join(self.missing))
        return "; ".join(parts)


# --------------------------------------------------------------------------- the policy


def confine_current_process(
    *,
    scratch_dir: str | os.PathLike,
    memory_mb: Optional[int],
    cpu_s: Optional[float] = None,
    read_paths: Iterable[str | os.PathLike] = (),
    read_packages: Iterable[str] = (),
    rules: Optional[ReadRules] = None,
    nofile: Optional[int] = None,
    fsize_bytes: Optional[int] = None,
    allow_unsandboxed: bool = False,
    allow_python_children: bool = False,
) -> ConfineReport:
    """Confine this process for good (see the module docstring for the layers).

    ``scratch_dir`` is the only place it may write (it is handed to the sandbox
    user when the uid is dropped); ``read_paths`` are extra read-only paths, given
    whole; ``read_packages`` names packages, not imported yet, whose code (never
    their data) the process may import (see :mod:`aflowctl.sandbox.readable`);
    ``rules``, when given, are used instead of computing them here (a sandboxed
    child gets them from its parent: :func:`~aflowctl.sandbox.host.child_read_rules`). No
    socket can be made or connected afterwards: open the connections the process
    needs (a rollout worker's to the LLM gateway) before. Call it before any untrusted code runs, from the
    main thread, before other threads start (seccomp and Landlock apply to the
    calling thread and the threads it creates later). Afterwards ``TMPDIR`` (and
    :mod:`tempfile`) point into ``scratch_dir``, the only place files can be made.

    ``allow_python_children`` (a rollout worker whose operators and code benchmarks
    run :func:`~aflowctl.sandbox.process.run_python` / ``check_solution``): the
    process may fork and execute *the interpreter only* (Landlock's execute right is
    given to it and the dynamic loader, nothing else), those children inherit every
    layer and add their own; at most 512 processes for the sandbox user.
    """
    scratch = os.path.abspath(os.fspath(scratch_dir))
    if not os.path.isdir(scratch):
        raise SandboxError(f"sandbox scratch directory {scratch} does not exist", "create it before confining")
    caps = capabilities()
    missing = [p["layer"] for p in caps["problems"]]
    if missing and not allow_unsandboxed:
        p = caps["problems"][0]
        raise SandboxError(
            f"the sandbox cannot be set up: {p['detail']}",
            f"{p['fix']}; or set rollout.allow_unsandboxed = true to run without it",
        )
    threads = _thread_count()
    if threads > 1:  # Landlock and the uid change apply to the calling thread only
        if not allow_unsandboxed:
            raise SandboxError(
                f"the process already runs {threads} threads: the sandbox would hold only one of them",
                "confine before starting threads (e.g. in the worker initializer, before imports "
                "that start thread pools)",
            )
        missing.append("threads")
    abi = caps["landlock_abi"]
    ppid = os.getppid()
    limits = set_rlimits(memory_mb, cpu_s, fsize_bytes, nofile)
    os.environ["TMPDIR"] = scratch
    tempfile_mod: Any = sys.modules.get("tempfile")
    if tempfile_mod is not None:
        tempfile_mod.tempdir = None  # recomputed from TMPDIR on next use
    if rules is not None:
        reads = rules + ReadRules(trees=[os.path.abspath(os.fspath(p)) for p in read_paths])
    else:
        reads = read_rules(read_paths, read_packages)
    user = sandbox_user() if "uid" not in missing else None
    kept: tuple[str, ...] = ()
    dropped = False
    if user is not None:
        uid, gid, _ = user
        need_cap = (_needs_read_cap(reads) or not reachable_by_others(scratch)) and abi > 0
        try:
            os.chown(scratch, uid, gid)
            os.chmod(scratch, 0o700)
        except OSError as exc:
            raise SandboxError(
                f"could not hand {scratch} to the sandbox user: {exc.strerror}",
                "put the scratch directory on a local file system",
            ) from None
        kept = drop_uid(uid, gid, need_cap, ambient=allow_python_children)
        dropped = True
        if allow_python_children:
            resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))
            limits["nproc"] = 512
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), what="PR_SET_PDEATHSIG")
    if os.getppid() != ppid:  # the parent died before PDEATHSIG was armed
        os.kill(os.getpid(), signal.SIGKILL)
    fs = net = scoped = False
    if abi > 0:
        fs, net, scoped = landlock.restrict(
            abi,
            scratch,
            reads.trees,
            ["/dev/null"],
            executables=_interpreter_executables() if allow_python_children else (),
            listable=reads.listable,
            read_files=reads.files,
        )
    sc = False
    if caps["seccomp"]:
        seccomp.install(allow_children=allow_python_children)
        sc = True
    return ConfineReport(
        uid=os.getuid(),
        gid=os.getgid(),
        dropped_uid=dropped,
        kept_caps=kept,
        no_new_privs=True,
        pdeathsig=True,
        rlimits=limits,
        landlock_abi=abi,
        landlock_fs=fs,
        landlock_net=net,
        landlock_scoped=scoped,
        seccomp=sc,
        missing=tuple(missing),
    )
