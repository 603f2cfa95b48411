"""The confined rollout worker's hostile-graph checks run by a parent that is itself an
unprivileged user (issue 10: fixes are tested as root and as an unprivileged user).

As root, the parent process (store, gateway, pool) is started as ``nobody`` with
``setpriv``; as any other user, it runs as that user. The worker then confines itself
without a uid change: Landlock and seccomp alone must hold. Real processes, the real
store, a real listening unix socket and loopback port."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

import pytest
from helpers.gateway_worker import escapes

from aflowctl.sandbox import confine

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
SECRET = "zq-not-a-pattern-" + "0b7e11c9a3d2f458"

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from aflowctl.config import RolloutConfig
    from aflowctl.rollout.pool import PRELOAD, RolloutPool, TaskSpec
    from aflowctl.store import open_store

    if __name__ == "__main__":  # spawn workers import this module again
        cfg = json.loads(sys.argv[1])
        store = open_store(cfg["db"], cached=False)
        opts = {"load_plugins": "", "preload": [*PRELOAD, "helpers.gateway_worker"]}
        with RolloutPool(store, RolloutConfig(workers=1), options=opts) as pool:
            out = pool.run([TaskSpec(cfg["payload"], worker="helpers.gateway_worker:hostile")])
        print(json.dumps({"uid": os.getuid(), "status": out[0].status, "error": out[0].error,
                          "result": out[0].result}))
    """
)


def _unprivileged_launch() -> tuple[list[str], str, tuple[int, int] | None]:
    """(argv prefix, interpreter, (uid, gid) to hand files to) for an unprivileged
    parent, or pytest.skip with the precise reason."""
    caps = confine.capabilities()
    if caps["problems"]:
        pytest.skip(f"the sandbox cannot be set up here: {caps['problems'][0]['detail']}")
    if os.geteuid() != 0:
        return [], sys.executable, None  # already unprivileged: run the parent as this user
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed to start an unprivileged parent")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no `nobody` user to start the parent as")
    python = sys.executable
    if not confine.reachable_by_others(python):
        # this venv's interpreter is private (e.g. under /root): a system Python of the same
        # version can load the same packages, if the venv's site-packages are readable
        candidates = [shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/usr/local/bin"),
                      shutil.which("python3", path="/usr/bin:/usr/local/bin")]
        python = next((p for p in candidates if p and confine.reachable_by_others(p) and _same_version(p)), "")
        if not python:
            pytest.skip(f"{sys.executable} is not readable by nobody and no world-readable system python "
                        f"{sys.version_info[0]}.{sys.version_info[1]} exists to start the parent with")
    for path in (REPO / "aflowctl", REPO / "tests", Path(sysconfig.get_paths()["purelib"])):
        if not confine.reachable_by_others(path):
            pytest.skip(f"{path} is not readable by nobody (needed by the unprivileged parent)")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"], python, (pw.pw_uid, pw.pw_gid)


def _same_version(python: str) -> bool:
    out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    return out.stdout.strip() == str(tuple(sys.version_info[:2]))


def test_hostile_graph_in_a_worker_of_an_unprivileged_parent_touches_nothing():
    prefix, python, owner = _unprivileged_launch()
    base = Path(tempfile.mkdtemp(prefix="aflowctl-unpriv-"))
    base.chmod(0o755)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    other = socket.socket(socket.AF_UNIX)
    try:
        run_dir = base / "run"  # the parent's own files: the store, the secret in its home
        run_dir.mkdir()
        home_file = run_dir / "precious.txt"
        home_file.write_text("keep me")
        outside_dir = base / "shared"  # writable by the parent's user: only the sandbox stops the worker
        outside_dir.mkdir()
        other_path = base / "other.sock"
        other.bind(str(other_path))
        other_path.chmod(0o777)
        other.listen(1)
        if owner:
            for p in (run_dir, home_file, outside_dir):
                os.chown(p, *owner)
        db = run_dir / "s.db"
        payload = {"db": str(db), "home_file": str(home_file), "port": listener.getsockname()[1],
                   "outside": str(outside_dir / "outside.txt"), "secret": SECRET, "unix_socket": str(other_path)}
        env = {"PATH": "/usr/bin:/bin", "HOME": str(run_dir), "MY_EXECUTOR_CRED": SECRET,
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), sysconfig.get_paths()["purelib"]]),
               "AFLOWCTL_LOAD_PLUGINS": ""}
        driver = base / "driver.py"
        driver.write_text(DRIVER)
        driver.chmod(0o644)
        proc = subprocess.run([*prefix, python, str(driver), json.dumps({"db": str(db), "payload": payload})],
                              env=env, capture_output=True, text=True, timeout=100, cwd=str(base))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == (owner[0] if owner else os.getuid()) and out["uid"] != 0
        assert out["status"] == "done", out["error"]
        res = out["result"]
        assert set(res) >= {"environ", "read_parent_environ", "read_store", "write_store", "delete_home_file",
                            "alloc_10g", "spawn_sh", "connect_loopback", "write_outside_scratch", "write_scratch",
                            "connect_unix_socket", "new_socket", "socketpair_dgram", "repoint_gateway_connection"}
        assert escapes(res) == [], res
        assert home_file.read_text() == "keep me" and not (outside_dir / "outside.txt").exists()
        assert SECRET not in json.dumps(res)
        other.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.accept()  # nobody reached the other unix socket
    finally:
        listener.close()
        other.close()
        shutil.rmtree(base, ignore_errors=True)
