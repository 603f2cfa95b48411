"""What this machine offers the sandbox, read without confining anything: the
sandbox user, who can reach which path, the interpreter's own paths, and
:func:`capabilities` (the layers available, with the fix for each missing one).

``doctor``, ``describe`` and the pool's start-up read these; :mod:`aflowctl.sandbox.confine`
decides from them before it applies anything (and re-exports them).
"""

from __future__ import annotations

import os
import stat
import sys

from aflowctl.sandbox import landlock, seccomp
from aflowctl.sandbox._sys import machine
from aflowctl.sandbox.readable import SYSTEM_READ_PATHS as SYSTEM_READ_PATHS  # re-exported (confine)
from aflowctl.sandbox.readable import ReadRules, child_rules, interpreter_rules, package_rules, system_rules

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

SANDBOX_USER_ENV = "AFLOWCTL_SANDBOX_USER"
DEFAULT_SANDBOX_USER = "nobody"


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


def read_rules(read_paths: Iterable[str | os.PathLike] = (), packages: Iterable[str] = ()) -> ReadRules:
    """What a process confined now may read (:mod:`aflowctl.sandbox.readable`): the
    interpreter and the code of what it imported, the code of ``packages``, the system
    paths, and ``read_paths`` whole. Cached until imports or ``sys.path`` change."""
    packages = tuple(packages)
    own = _cached(("reads", len(sys.modules), tuple(sys.path), packages), lambda: interpreter_rules(packages))
    system = _cached(("system", tuple(sys.path)), system_rules)  # less the site folders, found from sys.path
    return own + system + ReadRules(trees=[os.path.abspath(os.fspath(p)) for p in read_paths])


def child_read_rules() -> dict:
    """:func:`aflowctl.sandbox.readable.child_rules` as a dict for a child's spec, cached."""
    return _cached(("child", tuple(sys.path)), lambda: child_rules().to_dict())


def package_read_rules(packages: Iterable[str]) -> dict:
    """The code of ``packages`` (:func:`aflowctl.sandbox.readable.package_rules`) as a dict, cached."""
    packages = tuple(packages)
    return _cached(("packages", tuple(sys.path), packages), lambda: package_rules(packages).to_dict())


def interpreter_read_paths() -> list[str]:
    """The folders of :func:`read_rules` (given whole or listable), for reachability checks."""
    rules = read_rules()
    return [*rules.trees, *rules.listable]


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


def prepare(rules: Optional[ReadRules] = None) -> None:
    """Do the slow parts of :func:`confine_current_process` now (probing, path lists),
    e.g. before a fork, so that each confined process only makes system calls.
    ``rules``: those the process will be confined with, when given to it."""
    capabilities()
    _needs_read_cap(rules if rules is not None else read_rules())


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


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


def _needs_read_cap(rules: ReadRules) -> bool:
    folders = (*rules.trees, *rules.listable)[:64]
    return _cached(("needcap", folders), lambda: not all(reachable_by_others(p) for p in folders))


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
