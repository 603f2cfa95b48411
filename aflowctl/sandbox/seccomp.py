"""seccomp: the system-call filter of a confined process (x86_64 and aarch64 Linux).

What it refuses is listed in docs/sandbox.md. The BPF program is assembled from
symbolic jumps so that offsets stay right; it is installed with
``PR_SET_SECCOMP`` after ``PR_SET_NO_NEW_PRIVS``.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

from aflowctl.errors import SandboxError
from aflowctl.sandbox._sys import errno_text, libc, machine

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from typing import Optional

_PR_GET_SECCOMP = 21
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# System calls added since Linux 5.1 share one number on every architecture.
_UNIFIED = dict(
    io_uring_setup=425,
    io_uring_enter=426,
    io_uring_register=427,
    open_tree=428,
    move_mount=429,
    fsopen=430,
    fsconfig=431,
    fsmount=432,
    fspick=433,
    mount_setattr=442,
)

# seccomp: AUDIT_ARCH and syscall numbers per machine
_ARCH = {
    "x86_64": (
        0xC000003E,
        dict(
            fork=57,
            vfork=58,
            clone=56,
            clone3=435,
            execve=59,
            execveat=322,
            socket=41,
            socketpair=53,
            connect=42,
            accept=43,
            bind=49,
            listen=50,
            accept4=288,
            kill=62,
            tkill=200,
            tgkill=234,
            ptrace=101,
            process_vm_readv=310,
            process_vm_writev=311,
            pidfd_send_signal=424,
            pidfd_getfd=438,
            setrlimit=160,
            prlimit64=302,
            unshare=272,
            setns=308,
            mount=165,
            umount2=166,
            pivot_root=155,
            chroot=161,
            bpf=321,
            userfaultfd=323,
            perf_event_open=298,
            keyctl=250,
            add_key=248,
            request_key=249,
            kexec_load=246,
            init_module=175,
            finit_module=313,
            delete_module=176,
            open_by_handle_at=304,
            name_to_handle_at=303,
            **_UNIFIED,
            setsid=112,
            setpgid=109,
        ),
    ),
    "aarch64": (
        0xC00000B7,
        dict(
            clone=220,
            clone3=435,
            execve=221,
            execveat=281,
            socket=198,
            socketpair=199,
            bind=200,
            listen=201,
            accept=202,
            connect=203,
            accept4=242,
            kill=129,
            tkill=130,
            tgkill=131,
            ptrace=117,
            process_vm_readv=270,
            process_vm_writev=271,
            pidfd_send_signal=424,
            pidfd_getfd=438,
            setrlimit=164,
            prlimit64=261,
            unshare=97,
            setns=268,
            mount=40,
            umount2=39,
            pivot_root=41,
            chroot=51,
            bpf=280,
            userfaultfd=282,
            perf_event_open=241,
            keyctl=219,
            add_key=217,
            request_key=218,
            kexec_load=104,
            init_module=105,
            finit_module=273,
            delete_module=106,
            open_by_handle_at=265,
            name_to_handle_at=264,
            **_UNIFIED,
            setsid=157,
            setpgid=154,
        ),
    ),
}
_DENIED = (
    "socket",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "fork",
    "vfork",
    "execve",
    "execveat",
    "tkill",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_send_signal",
    "pidfd_getfd",
    "setrlimit",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setsid",
    "setpgid",
)
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_SOCK_STREAM = 1
_SOCK_TYPE_MASK = 0xF  # the type without SOCK_NONBLOCK / SOCK_CLOEXEC


def available() -> bool:
    """True when this kernel accepts seccomp filters on this machine's architecture."""
    if sys.platform != "linux" or machine() not in _ARCH:
        return False
    try:
        if libc().prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


#: clone flags that create namespaces: refused even where children are allowed
_CLONE_NEW_NS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
#: what a process that may start sandboxed Python children needs besides the rest
#: (setrlimit too: a child lowers its own limits; soft = hard and no CAP_SYS_RESOURCE, so none can rise)
_CHILD_CALLS = ("fork", "vfork", "execve", "setsid", "setpgid", "setrlimit")


def _seccomp_filter(allow_children: bool = False) -> bytes:
    """The BPF program (struct sock_filter array) for this machine.

    No socket can be made or reached: ``socket``, ``connect``, ``bind``, ``listen`` and
    ``accept`` are refused; a connection the process needs (a rollout worker's to the
    LLM gateway) is opened before it confines itself. ``socketpair`` stays, for
    ``AF_UNIX`` ``SOCK_STREAM`` only (asyncio's self-pipe): a connected pair of its own
    that cannot be pointed anywhere else (a datagram pair could ``sendto`` any path).

    ``allow_children``: fork/vfork/clone (without namespace flags), execve (Landlock
    decides which file: only the interpreter), setsid/setpgid, and signals to any
    process (Landlock's scoping keeps them inside the sandbox's own domain)."""
    audit, nr = _ARCH[machine()]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    pid = os.getpid()
    prog: list[tuple[int, int, Optional[str], Optional[str]]] = []
    labels: dict[str, int] = {}

    def ld(off: int) -> None:
        prog.append((0x20, off, None, None))

    def jeq(k: int, t: Optional[str], f: Optional[str] = None) -> None:
        prog.append((0x15, k, t, f))

    def jset(k: int, t: Optional[str], f: Optional[str] = None) -> None:
        prog.append((0x45, k, t, f))

    def ret(k: int) -> None:
        prog.append((0x06, k, None, None))

    ld(4)
    jeq(audit, None, "deny")
    ld(0)
    if machine() == "x86_64":
        prog.append((0x35, 0x40000000, "deny", None))  # x32 ABI
    for name in _DENIED:
        if name in nr and not (allow_children and name in _CHILD_CALLS):
            jeq(nr[name], "deny")
    jeq(nr["clone3"], "enosys")
    jeq(nr["clone"], "clone")
    jeq(nr["kill"], "kill")
    jeq(nr["tgkill"], "tgkill")
    jeq(nr["prlimit64"], "prlimit")
    jeq(nr["socketpair"], "socketpair")
    ret(allow)
    if allow_children:
        labels["clone"] = len(prog)
        ld(16)
        jset(_CLONE_NEW_NS, "deny", "allow")
        labels["kill"] = labels["tgkill"] = labels["prlimit"] = len(prog)
        ret(allow)
    else:
        labels["clone"] = len(prog)
        ld(16)
        jset(_CLONE_THREAD, "allow", "deny")
        labels["kill"] = len(prog)
        ld(16)
        jeq(pid, "allow")
        jeq(0, "allow", "deny")
        labels["tgkill"] = len(prog)
        ld(16)
        jeq(pid, "allow", "deny")
    # prlimit64(pid, resource, new, old): only reading (new == NULL) of this process
    labels.setdefault("prlimit", len(prog))
    ld(16)
    jeq(0, "prl_new")
    jeq(pid, "prl_new", "deny")
    labels["prl_new"] = len(prog)
    ld(32)
    jeq(0, None, "deny")
    ld(36)
    jeq(0, "allow", "deny")
    # socketpair(domain, type, protocol, sv): AF_UNIX and SOCK_STREAM only
    labels["socketpair"] = len(prog)
    ld(16)
    jeq(_AF_UNIX, None, "deny")
    ld(24)
    prog.append((0x54, _SOCK_TYPE_MASK, None, None))  # A &= mask
    jeq(_SOCK_STREAM, "allow", "deny")
    labels["allow"] = len(prog)
    ret(allow)
    labels["deny"] = len(prog)
    ret(eperm)
    labels["enosys"] = len(prog)
    ret(enosys)
    out = b""
    for i, (code, k, t, f) in enumerate(prog):
        jt = 0 if t is None else labels[t] - i - 1
        jf = 0 if f is None else labels[f] - i - 1
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise SandboxError("seccomp filter jump out of range", "report this as a bug")
        out += struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(allow_children: bool = False) -> None:
    prog = _seccomp_filter(allow_children)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
    if libc().prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0) != 0:
        raise SandboxError(f"installing the seccomp filter failed: {errno_text()}", "see `aflowctl doctor`")
