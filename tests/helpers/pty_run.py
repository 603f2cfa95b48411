"""Run the CLI on a pseudo-terminal (stdin, stdout and stderr), to check what a terminal shows."""

from __future__ import annotations

import os
import pty
import re
import select
import struct
import subprocess
import sys
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLI = [sys.executable, "-m", "aflowctl.cli"]


def run_on_pty(args: list[str], env: dict, *, cols: int = 80, rows: int = 40, timeout: float = 120) -> tuple[int, str]:
    """``aflowctl ARGS`` on a ``cols`` x ``rows`` terminal; (exit code, everything it wrote).

    Reads until the terminal closes, or the process has exited and nothing more came for a
    second, or ``timeout`` seconds have passed."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(CLI + args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([master], [], [], 1)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=60)
    os.close(master)
    return rc, out.decode("utf-8", "replace")
