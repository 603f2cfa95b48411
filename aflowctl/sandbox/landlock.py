"""Landlock: file-system, TCP and scope rules for the calling process (Linux >= 5.13).

See include/uapi/linux/landlock.h. :func:`restrict` builds one ruleset (what the
kernel's ABI supports: every file access right it knows is handled, so anything
not granted by a rule is denied), adds read-only rules, read-write rules and the
scratch directory, and enforces it on the calling thread and its future threads.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
import sys

from aflowctl.errors import SandboxError
from aflowctl.sandbox._sys import errno_text, libc

TYPE_CHECKING = False  # typing is not imported at run time: sandboxed children start faster
if TYPE_CHECKING:
    from collections.abc import Iterable

# landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every arch
_SYS_LL_CREATE, _SYS_LL_ADD_RULE, _SYS_LL_RESTRICT = 444, 445, 446
_LL_VERSION = 1
_LL_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ = FS_READ_FILE | FS_READ_DIR
WRITE = (
    FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM | FS_REFER | FS_TRUNCATE
)


def abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is absent or disabled."""
    if sys.platform != "linux":
        return 0
    try:
        v = libc().syscall(_SYS_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_LL_VERSION))
    except (OSError, AttributeError):
        return 0
    return int(v) if v > 0 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def restrict(
    version: int,
    scratch: str,
    read_paths: Iterable[str],
    extra_rw_files: Iterable[str],
    executables: Iterable[str] = (),
    listable: Iterable[str] = (),
    read_files: Iterable[str] = (),
) -> tuple[bool, bool, bool]:
    """Build and enforce the ruleset; returns (fs, net, scoped). ``read_paths`` may be
    read whole (a folder's tree), ``listable`` folders only listed (their files stay
    unreadable unless a rule gives them), ``read_files`` read one by one;
    ``executables`` are files that may be executed (and read); nothing else may."""
    lib = libc()
    fs_all = _FS_BY_ABI[min(version, 5)]
    attr = _RulesetAttr(
        fs_all,
        (NET_BIND_TCP | NET_CONNECT_TCP) if version >= 4 else 0,
        (SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL) if version >= 6 else 0,
    )
    size = 8 if version < 4 else 16 if version < 6 else 24
    fd = lib.syscall(_SYS_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise SandboxError(f"landlock_create_ruleset failed: {errno_text()}", "see `aflowctl doctor`")
    fd = int(fd)
    try:

        def add(path: str, rights: int) -> None:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return  # a path that does not exist needs no rule
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    rights &= _FILE_RIGHTS
                rights &= fs_all
                rule = struct.pack("=Qi", rights, pfd)
                if (
                    lib.syscall(
                        _SYS_LL_ADD_RULE,
                        ctypes.c_int(fd),
                        ctypes.c_int(_LL_RULE_PATH_BENEATH),
                        ctypes.c_char_p(rule),
                        ctypes.c_uint32(0),
                    )
                    != 0
                ):
                    raise SandboxError(f"landlock_add_rule for {path} failed: {errno_text()}", "see `aflowctl doctor`")
            finally:
                os.close(pfd)

        for p in read_paths:
            add(p, READ)
        for p in listable:
            add(p, FS_READ_DIR)
        for p in read_files:
            add(p, FS_READ_FILE)
        for p in extra_rw_files:
            add(p, FS_READ_FILE | FS_WRITE_FILE)
        for p in executables:
            add(p, FS_EXECUTE | FS_READ_FILE)
        add(scratch, READ | WRITE)
        if lib.syscall(_SYS_LL_RESTRICT, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise SandboxError(f"landlock_restrict_self failed: {errno_text()}", "see `aflowctl doctor`")
    finally:
        os.close(fd)
    return True, version >= 4, version >= 6
