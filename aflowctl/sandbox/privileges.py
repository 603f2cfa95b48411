"""The privilege system calls of confinement: resource limits, ``prctl``, capability
sets and the switch to the sandbox user (:func:`drop_uid`). Only
:func:`aflowctl.sandbox.confine.confine_current_process` calls them, in its order.
"""

from __future__ import annotations

import ctypes
import os
import resource

from aflowctl.errors import SandboxError
from aflowctl.sandbox._sys import errno_text, libc

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from typing import Optional

# prctl options
PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_CAP_AMBIENT_RAISE = 2
_CAP_DAC_READ_SEARCH = 2
_CAP_LAST = 63


def set_rlimits(
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


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> None:
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


def drop_uid(uid: int, gid: int, keep_read_cap: bool, ambient: bool = False) -> tuple[str, ...]:
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
        prctl(_PR_SET_KEEPCAPS, 1, what="PR_SET_KEEPCAPS")
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
        prctl(_PR_SET_KEEPCAPS, 0, what="PR_SET_KEEPCAPS")
        if ambient:
            prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, what="PR_CAP_AMBIENT_RAISE")
        return ("CAP_DAC_READ_SEARCH",)
    return ()
