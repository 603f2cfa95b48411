"""Turn aflowctl errors into one line on stderr and an exit code.

Tracebacks only with ``AFLOWCTL_DEBUG=1``. Under pytest, ``AFLOWCTL_RAISE_ERRORS=1``
re-raises so that a test can see the original exception.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import traceback

from aflowctl.errors import AflowctlError


def debug_enabled() -> bool:
    return os.environ.get("AFLOWCTL_DEBUG", "") not in ("", "0", "false")


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line (plus a traceback in debug mode); return the exit code."""
    from aflowctl.logging import redact

    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, AflowctlError):
        sys.stderr.write(f"Error: {redact(str(exc))}\n")
        return exc.exit_code
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, sqlite3.DatabaseError) and not isinstance(orig, sqlite3.IntegrityError):
        # a store error raised outside an opened store (no path known): one line, no SQL
        sys.stderr.write(
            f"Error: the store cannot be used ({orig}). Check --db/AFLOWCTL_HOME, or restore it from a backup\n"
        )
        return 1
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("Interrupted: everything finished so far is stored; resume with --resume RUN_ID\n")
        return 130
    sys.stderr.write(
        f"Error: unexpected {type(exc).__name__}: {redact(str(exc))}. "
        "Re-run with AFLOWCTL_DEBUG=1 for a traceback and report it\n"
    )
    return 1
