"""Small ctypes helpers shared by the confinement layers."""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache


def machine() -> str:
    return os.uname().machine if hasattr(os, "uname") else ""


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.prctl.restype = ctypes.c_int
    return lib


def errno_text() -> str:
    e = ctypes.get_errno()
    return f"{os.strerror(e)} (errno {e})"
