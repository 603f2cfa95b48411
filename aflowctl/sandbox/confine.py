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
   ``read_paths``, the interpreter's prefixes and import paths and a few system
   library paths (so no ``/proc`` at all: no ``/proc/<pid>/environ``, no
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
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import stat
import sys
from typing import Any

from aflowctl.errors import SandboxError
from aflowctl.sandbox import landlock, seccomp
from aflowctl.sandbox._sys import errno_text, libc, machine

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

SANDBOX_USER_ENV = "AFLOWCTL_SANDBOX_USER"
DEFAULT_SANDBOX_USER = "nobody"

# prctl options
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_READ_SEARCH = 2
_CAP_LAST = 63

#: read-only system paths every Python needs (shared libraries, time zones)
SYSTEM_READ_PATHS = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
)


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


# --------------------------------------------------------------------------- probing


def sandbox_user() -> Optional[tuple[int, int, str]]:
    """(uid, gid, name) a root process drops to, or None (not root, or no such user,
    or ``AFLOWCTL_SANDBOX_USER=root``)."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    want = os.environ.get(SANDBOX_USER_ENV, DEFAULT_SANDBOX_USER).strip()
    if want in ("", "root", "0"):
        return None
    import pwd

    try:
        pw = pwd.getpwuid(int(want)) if want.isdigit() else pwd.getpwnam(want)
    except (KeyError, ValueError):
        return None
    if pw.pw_uid == 0:
        return None
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def reachable_by_others(path: str | os.PathLike) -> bool:
    """True when an unrelated user can reach ``path``: every directory above it
    (and above its resolved target) is o+x, and the path itself is o+r."""
    p = os.path.abspath(os.fspath(path))
    for q in {p, os.path.realpath(p)}:
        try:
            st = os.stat(q)
            if not st.st_mode & stat.S_IROTH or (stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH):
                return False
            parent = os.path.dirname(q)
            while True:
                if not os.stat(parent).st_mode & stat.S_IXOTH:
                    return False
                if parent == os.path.dirname(parent):
                    break
                parent = os.path.dirname(parent)
        except OSError:
            return False
    return True


_cache: dict = {}


def _cached(key: tuple, make):
    if key not in _cache:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = make()
    return _cache[key]


def interpreter_read_paths() -> list[str]:
    """Cached :func:`_interpreter_read_paths` (recomputed when imports or ``sys.path`` change)."""
    return list(_cached(("reads", len(sys.modules), tuple(sys.path)), _interpreter_read_paths))


def _interpreter_read_paths() -> list[str]:
    """What Python needs to keep importing: its prefixes' library directories, the
    import path entries inside them (site-packages), and the top directory of every
    package already imported from elsewhere (an editable install)."""
    import sysconfig

    roots: list[str] = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.append(sysconfig.get_paths()[key])
        except KeyError:
            pass
    for pfx in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        roots.append(os.path.join(pfx, "lib"))
        roots.append(os.path.join(pfx, "pyvenv.cfg"))  # read by a venv interpreter at start-up
    for entry in sys.path:
        if entry and (
            "site-packages" in entry
            or "dist-packages" in entry
            or entry.endswith(".zip")
            or any(entry.startswith(p) for p in (sys.prefix, sys.base_prefix))
        ):
            roots.append(entry)
    for name, mod in list(sys.modules.items()):
        if "." in name:
            continue
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        f = os.path.abspath(f)
        roots.append(os.path.dirname(f) if os.path.basename(f) == "__init__.py" else f)
    out: list[str] = []
    for r in roots:  # one rule per tree: a path inside one already listed adds nothing
        r = os.path.abspath(r)
        if r in out or not os.path.exists(r) or any(r.startswith(o + os.sep) for o in out):
            continue
        out = [o for o in out if not o.startswith(r + os.sep)] + [r]
    return out


def capabilities() -> dict:
    """What this machine offers the sandbox (for ``doctor``, ``describe`` and tests).

    Computed once per process (and user/``AFLOWCTL_SANDBOX_USER``); the copy returned
    may be changed by the caller.

    Keys: ``platform``, ``arch``, ``landlock_abi``, ``seccomp``, ``root``,
    ``sandbox_user`` (name or None), ``can_drop_uid``, ``interpreter_usable`` (the
    sandbox user can read the interpreter's files without help),
    ``needs_read_capability``, ``ok`` (every required layer is there) and
    ``problems``: a list of ``{"layer", "detail", "fix"}``, one line each.
    """
    caps = _cached(("caps", os.geteuid() if os.name == "posix" else 0, os.environ.get(SANDBOX_USER_ENV)), _capabilities)
    return {**caps, "problems": [dict(p) for p in caps["problems"]]}


def prepare() -> None:
    """Do the slow parts of :func:`confine_current_process` now (probing, path lists),
    e.g. before a fork, so that each confined process only makes system calls."""
    capabilities()
    _needs_read_cap(_read_list(()))


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def rollout_read_paths() -> list[str]:
    """Extra read-only paths a rollout worker needs: the benchmark data folders
    (:func:`aflowctl.paths.data_dir` and each ``AFLOWCTL_DATA_PATH`` entry) that exist.
    Never the store: it lives next to ``data/``, not in it, and only the parent writes it."""
    from aflowctl.benchmarks.data import search_dirs

    return [str(d) for d, _ in search_dirs() if d.is_dir()]


def _interpreter_executables() -> list[str]:
    """The interpreter binary and the dynamic loader it needs (execve opens both)."""
    import glob

    found = [os.path.realpath(sys.executable)]
    for pattern in (
        "/lib64/ld-linux*.so*",
        "/lib/ld-linux*.so*",
        "/lib/*/ld-linux*.so*",
        "/usr/lib/*/ld-linux*.so*",
        "/lib/ld-musl*.so*",
    ):
        found += [os.path.realpath(p) for p in glob.glob(pattern)]
    return list(dict.fromkeys(found))


def _read_list(read_paths: Iterable[str | os.PathLike]) -> list[str]:
    return list(
        dict.fromkeys(
            [
                *(os.path.abspath(os.fspath(p)) for p in read_paths),
                *interpreter_read_paths(),
                *SYSTEM_READ_PATHS,
            ]
        )
    )


def _needs_read_cap(reads: list[str]) -> bool:
    return _cached(("needcap", tuple(reads)), lambda: not all(reachable_by_others(p) for p in reads[:64]))


def _capabilities() -> dict:
    abi = landlock.abi()
    sc = seccomp.available()
    root = os.name == "posix" and os.geteuid() == 0
    user = sandbox_user()
    usable = all(reachable_by_others(p) for p in interpreter_read_paths()[:8]) and reachable_by_others(sys.executable)
    problems: list[dict] = []
    if not sc:
        problems.append(
            {
                "layer": "seccomp",
                "detail": f"no seccomp filters on {sys.platform}/{machine()}",
                "fix": "run on Linux x86_64 or aarch64 with CONFIG_SECCOMP_FILTER (or a container that allows it)",
            }
        )
    if abi == 0:
        problems.append(
            {
                "layer": "landlock",
                "detail": "Landlock is not available",
                "fix": "use Linux >= 5.13 with 'landlock' in the lsm= boot list "
                "(cat /sys/kernel/security/lsm), or a container runtime that allows it",
            }
        )
    if root and user is None:
        want = os.environ.get(SANDBOX_USER_ENV, DEFAULT_SANDBOX_USER)
        problems.append(
            {
                "layer": "uid",
                "detail": f"running as root and the sandbox user '{want}' is not usable",
                "fix": f"create it (useradd --system {want}) or set {SANDBOX_USER_ENV} to an unprivileged user",
            }
        )
    elif root and not usable and abi == 0:
        problems.append(
            {
                "layer": "uid",
                "detail": f"the sandbox user cannot read the interpreter {sys.executable} "
                "and without Landlock it cannot be given read access safely",
                "fix": "install Python in a world-readable place (e.g. /usr/local or /opt) and make the venv from it",
            }
        )
    return {
        "platform": sys.platform,
        "arch": machine(),
        "landlock_abi": abi,
        "seccomp": sc,
        "root": root,
        "sandbox_user": user[2] if user else None,
        "can_drop_uid": bool(user) and (usable or abi > 0),
        "interpreter": sys.executable,
        "interpreter_usable": usable,
        "needs_read_capability": bool(root and user and not usable),
        "ok": not problems,
        "problems": problems,
    }


# --------------------------------------------------------------------------- layers


def _set_rlimits(
    memory_mb: Optional[int], cpu_s: Optional[float], fsize_bytes: Optional[int], nofile: Optional[int]
) -> dict:
    wanted = [(resource.RLIMIT_CORE, 0, "core")]
    if memory_mb is not None:
        wanted.append((resource.RLIMIT_AS, int(memory_mb) * 1024 * 1024, "as"))
    if cpu_s is not None:
        wanted.append((resource.RLIMIT_CPU, max(int(cpu_s + 0.999), 1), "cpu"))
    if fsize_bytes is not None:
        wanted.append((resource.RLIMIT_FSIZE, int(fsize_bytes), "fsize"))
    if nofile is not None:
        wanted.append((resource.RLIMIT_NOFILE, int(nofile), "nofile"))
    done = {}
    for res, value, name in wanted:
        _soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError) as exc:
            raise SandboxError(
                f"could not set the {name} limit to {value}: {exc}", "check the limits given to the sandbox"
            ) from None
        done[name] = value
    return done


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> None:
    if libc().prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise SandboxError(f"{what} failed: {errno_text()}", "the sandbox cannot be set up on this platform")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capset(caps: int, inheritable: bool = False) -> None:
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    for i in range(2):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
        data[i].inheritable = word if inheritable else 0
    if libc().capset(ctypes.byref(hdr), data) != 0:
        raise SandboxError(f"capset failed: {errno_text()}", "the sandbox cannot drop privileges here")


def _drop_uid(uid: int, gid: int, keep_read_cap: bool, ambient: bool = False) -> tuple[str, ...]:
    """setgroups([]), setresgid, setresuid; every capability gone (bounding set too)
    except, when asked, CAP_DAC_READ_SEARCH (also ambient with ``ambient``, so that a
    Python child it executes can read the interpreter too)."""
    keep = (1 << _CAP_DAC_READ_SEARCH) if keep_read_cap else 0
    for cap in range(_CAP_LAST + 1):
        if not keep & (1 << cap):
            if libc().prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0 and ctypes.get_errno() != 22:
                raise SandboxError(
                    f"could not drop capability {cap} from the bounding set: {errno_text()}",
                    "the sandbox cannot drop privileges here",
                )
    libc().prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    if keep:
        _prctl(_PR_SET_KEEPCAPS, 1, what="PR_SET_KEEPCAPS")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise SandboxError(
            f"could not switch to uid {uid}: {exc.strerror}", "run as root or as the sandbox user"
        ) from None
    if keep:
        _capset(keep, inheritable=ambient)
        _prctl(_PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS")
        if ambient:
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, what="PR_CAP_AMBIENT_RAISE")
        return ("CAP_DAC_READ_SEARCH",)
    return ()


# --------------------------------------------------------------------------- the policy


def confine_current_process(
    *,
    scratch_dir: str | os.PathLike,
    memory_mb: Optional[int],
    cpu_s: Optional[float] = None,
    read_paths: Iterable[str | os.PathLike] = (),
    nofile: Optional[int] = None,
    fsize_bytes: Optional[int] = None,
    allow_unsandboxed: bool = False,
    allow_python_children: bool = False,
) -> ConfineReport:
    """Confine this process for good (see the module docstring for the layers).

    ``scratch_dir`` is the only place it may write (it is handed to the sandbox
    user when the uid is dropped); ``read_paths`` are extra read-only paths. No
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
    limits = _set_rlimits(memory_mb, cpu_s, fsize_bytes, nofile)
    os.environ["TMPDIR"] = scratch
    tempfile_mod: Any = sys.modules.get("tempfile")
    if tempfile_mod is not None:
        tempfile_mod.tempdir = None  # recomputed from TMPDIR on next use
    reads = _read_list(read_paths)
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
        kept = _drop_uid(uid, gid, need_cap, ambient=allow_python_children)
        dropped = True
        if allow_python_children:
            resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))
            limits["nproc"] = 512
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), what="PR_SET_PDEATHSIG")
    if os.getppid() != ppid:  # the parent died before PDEATHSIG was armed
        os.kill(os.getpid(), signal.SIGKILL)
    fs = net = scoped = False
    if abi > 0:
        fs, net, scoped = landlock.restrict(
            abi, scratch, reads, ["/dev/null"], executables=_interpreter_executables() if allow_python_children else ()
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
