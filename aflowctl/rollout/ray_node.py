"""What a Ray task runs on its node: workflow code in a confined child process.

A Ray worker process is started by Ray (on a local instance it inherits the
driver's environment, keys included, less what the backend's ``runtime_env``
blanks), runs many threads and serves many pools, so it can neither be confined
nor trusted to hold nothing. :func:`run_task` (the function the Ray backend
submits) therefore does not run workflow code itself when the pool has a gateway:

* it keeps one *child* per Ray worker process and pool, started like a process
  backend worker: from an allow-listed environment
  (:func:`aflowctl.rollout.launcher.worker_environ`: no provider key, no store path,
  a private empty home), dying with this process (``PR_SET_PDEATHSIG``), running
  :func:`aflowctl.rollout.worker.init_worker` with the pool's options: it connects
  to this process's :class:`~aflowctl.rollout.ray_gateway.NodeRelay` (the run's
  gateway, through the proxy actor; on the driver's own node to the gateway's socket
  directly), imports what it needs, then confines itself
  (``rollout.allow_unsandboxed`` decides what happens where it cannot);
* it sends the task to the child over a pipe (4-byte length + JSON frames) and
  returns the child's envelope unchanged. A child that dies under a task raises
  :class:`WorkerDied` (the backend makes it a charged, retried attempt); the next
  task starts a new child. Killing the task (``ray.cancel(force=True)``) kills this
  process, and the kernel kills the child with it.

Without a gateway in the options (``use_gateway=False``) the task runs here, as
before (:func:`aflowctl.rollout.worker.run_task`).

Run as ``python -m aflowctl.rollout.ray_node``, this module is the child.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import IO, Any, Optional

HEADER = struct.Struct(">I")


class WorkerDied(Exception):
    """The confined child died under a task (its exit status in ``exitcode``)."""

    def __init__(self, exitcode: Optional[int]):
        super().__init__(f"the task's sandboxed worker died (exit status {exitcode})")
        self.exitcode = exitcode

    def __reduce__(self) -> Any:
        return (WorkerDied, (self.exitcode,))


def _send(fh: IO[bytes], obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    fh.write(HEADER.pack(len(data)) + data)
    fh.flush()


def _recv(fh: IO[bytes]) -> Any:
    head = fh.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError
    (size,) = HEADER.unpack(head)
    data = fh.read(size)
    if len(data) < size:
        raise EOFError
    return json.loads(data)


# --------------------------------------------------------------------------- the Ray worker's side


class _Child:
    """One confined child of this Ray worker process, for one pool."""

    def __init__(self, options: dict):
        from aflowctl.rollout.launcher import worker_environ
        from aflowctl.rollout.ray_gateway import NodeRelay

        self.pool = options.get("ray_pool")
        address = _direct_gateway(options)
        self.relay: Optional[NodeRelay] = None
        if address is None:
            self.relay = NodeRelay(options["gateway_proxy"], _node_dir())
            address = self.relay.address
        env = worker_environ(options.get("env") or {})
        # its private home moves into this process's folder, which the next Ray worker removes if this one is killed
        self.home = tempfile.mkdtemp(prefix="home-", dir=_node_dir())
        os.chmod(self.home, 0o755)
        shutil.rmtree(env["HOME"], ignore_errors=True)
        env = {k: self.home if v == env["HOME"] else v for k, v in env.items()}
        skip = ("gateway_proxy", "gateway_direct", "driver_node", "ray_relay", "env")
        opts = {k: v for k, v in options.items() if k not in skip}
        # the child's own environment already holds the variables of options["env"] (never the store's home)
        opts.update(gateway=address, parent_pid=os.getpid())
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aflowctl.rollout.ray_node"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                cwd=self.home,
                close_fds=True,
            )
            assert self.proc.stdin is not None and self.proc.stdout is not None
            _send(self.proc.stdin, opts)
            self.ready = _recv(self.proc.stdout)  # {"ok": true, "pid"} or an error envelope
        except (OSError, EOFError):
            self.ready = {"ok": False, "error": f"the sandboxed worker did not start ({self._status()})"}
        if not self.ready.get("ok"):
            self.close()

    def _status(self) -> str:
        from aflowctl.rollout.backend import exit_text

        return exit_text(self.proc.wait(5)) if getattr(self, "proc", None) else "not started"

    def alive(self) -> bool:
        return self.ready.get("ok", False) and self.proc.poll() is None

    def run(self, worker: str, key: str, payload: dict) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _send(self.proc.stdin, {"worker": worker, "key": key, "payload": payload})
            return str(_recv(self.proc.stdout))
        except (OSError, EOFError):
            code = self.proc.wait()
            self.close()
            raise WorkerDied(code) from None

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self.relay is not None:
            self.relay.close()
        shutil.rmtree(self.home, ignore_errors=True)


def _direct_gateway(options: dict) -> Optional[dict]:
    """The driver's own gateway address when this task runs on the driver's node and can
    reach its socket (a local Ray instance): the child then calls it as a process backend
    worker does, without the relay and the actor. ``ray_relay`` forces the relay."""
    address = options.get("gateway_direct")
    if not address or options.get("ray_relay"):
        return None
    import ray

    if ray.get_runtime_context().get_node_id() != options.get("driver_node"):
        return None
    return address if os.access(address["socket"], os.R_OK | os.W_OK) else None


_child: Optional[_Child] = None
_folder: Optional[str] = None
NODE_DIR_PREFIX = "aflowctl-ray-"


def _node_dir() -> str:
    """This Ray worker process's folder for its children's homes and relay sockets
    (``aflowctl-ray-PID-*`` in the temporary directory). Ray kills its workers without
    notice, so the first call also removes the folders of processes that are gone."""
    global _folder
    if _folder is None:
        import glob

        for old in glob.glob(os.path.join(tempfile.gettempdir(), NODE_DIR_PREFIX + "*-*")):
            pid = os.path.basename(old)[len(NODE_DIR_PREFIX) :].split("-")[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(old, ignore_errors=True)
        _folder = tempfile.mkdtemp(prefix=f"{NODE_DIR_PREFIX}{os.getpid()}-")
        os.chmod(_folder, 0o711)  # the sandbox user reaches its home inside, and lists nothing
    return _folder


def run_task(worker: str, key: str, payload: dict, options: Optional[dict] = None) -> str:
    """The Ray backend's task: the worker's JSON envelope (see
    :func:`aflowctl.rollout.worker.run_task`), computed in this node's confined child."""
    global _child
    options = options or {}
    if not options.get("gateway_proxy"):
        from aflowctl.rollout.worker import run_task as run_here

        return run_here(worker, key, payload, options)
    if _child is not None and (_child.pool != options.get("ray_pool") or not _child.alive()):
        _child.close()
        _child = None
    if _child is None:
        child = _Child(options)
        if not child.ready.get("ok"):  # cannot start (the sandbox, imports): the task says why
            return json.dumps(child.ready)
        _child = child
    return _child.run(worker, key, payload)


# --------------------------------------------------------------------------- the child


def main() -> None:
    """The child: read the pool's options, initialise (connect, import, confine), then
    run tasks until stdin closes. Its own stdout is moved to stderr first, so nothing
    workflow code prints can be taken for a frame."""
    import time

    from aflowctl.rollout.envelope import error_envelope
    from aflowctl.rollout.worker import init_worker
    from aflowctl.rollout.worker import run_task as run_here

    inp = os.fdopen(0, "rb")
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    try:
        init_worker(_recv(inp))
    except BaseException as exc:  # noqa: BLE001 - reported to the Ray worker as the task's error
        _send(out, error_envelope(exc, time.perf_counter() - t0))
        raise SystemExit(1) from None
    _send(out, {"ok": True, "pid": os.getpid()})
    while True:
        try:
            task = _recv(inp)
        except EOFError:
            return
        _send(out, run_here(task["worker"], task["key"], task["payload"]))


if __name__ == "__main__":
    main()
