"""The run's LLM gateway as Ray workers reach it: a proxy actor and a relay per node.

On the process backend a worker talks to the parent's :class:`~aflowctl.llm.gateway.Gateway`
over its unix socket. A Ray task may run on another machine, so two hops are added,
and the protocol (:mod:`aflowctl.llm.gateway`: hello, then ``generate`` / ``flush`` /
``run_python`` / ``check_solution`` frames answered by ``id``) is carried unchanged:

* :class:`GatewayProxy`, one Ray actor per pool (``num_cpus=0``), pinned to the
  driver's node with a hard ``NodeAffinitySchedulingStrategy``. It holds one
  connection to the driver's gateway socket (same machine, same user) and forwards
  each request it is given, unchanged but for the ``id``; it holds no key (its
  process gets the same key-less ``runtime_env`` as the tasks) and decides nothing.
* :class:`NodeRelay`, in the Ray worker process that runs a task (trusted code of
  aflowctl, never workflow code): a unix socket in a private directory on that
  node, which the task's confined child (:mod:`aflowctl.rollout.ray_node`) connects
  to exactly as a process-backend worker connects to the gateway. Every frame after
  the hello goes to the proxy actor as ``call.remote(frame)``; the reply goes back.

So the keys, the cache, the budget, the retries, the per-model limits and the call
log stay in the driver's gateway, once for all Ray workers of the run.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import InfrastructureError
from aflowctl.llm.gateway import encode, error_payload, read_frame


def _failed(rid: Any, text: str) -> dict:
    return {"id": rid, "ok": False, "error": error_payload(InfrastructureError(text, "the run's driver stopped"))}


class GatewayProxy:
    """The Ray actor on the driver's node: forwards frames to the driver's gateway."""

    def __init__(self, address: dict):
        self.address = address
        self.writer: Optional[asyncio.StreamWriter] = None
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.lost: Optional[str] = None
        self._connecting: Optional[asyncio.Future] = None
        self.forwarded = 0  # requests forwarded (for tests and benches)

    async def count(self) -> int:
        return self.forwarded

    async def ping(self) -> int:
        import os

        await self._connected()
        return os.getpid()

    async def _connected(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.address["socket"])
        writer.write(encode({"hello": self.address["token"]}))
        if not (await read_frame(reader)).get("ok"):
            raise InfrastructureError("the LLM gateway refused the Ray gateway proxy", "this is a bug in aflowctl")
        self.writer = writer
        asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_frame(reader)
                fut = self.pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except BaseException:  # noqa: BLE001 - every waiter learns the gateway is gone
            self.lost = "the connection to the run's LLM gateway was lost"
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_result({"ok": False, "lost": True})
            self.pending.clear()

    async def call(self, msg: dict) -> dict:
        """Forward one request frame; the reply carries the caller's ``id`` back."""
        rid = msg.get("id")
        try:
            await self._connected()
        except Exception as exc:  # noqa: BLE001 - the caller gets it as a reply
            return _failed(rid, f"the Ray gateway proxy cannot reach the run's LLM gateway: {exc}")
        if self.lost or self.writer is None:
            return _failed(rid, self.lost or "the run's LLM gateway is gone")
        own = next(self.ids)
        self.forwarded += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[own] = fut
        self.writer.write(encode({**msg, "id": own}))
        reply = await fut
        if reply.get("lost"):
            return _failed(rid, self.lost or "the run's LLM gateway is gone")
        return {**reply, "id": rid}


def start_proxy(ray: Any, address: dict, runtime_env: dict, timeout_s: float = 120.0) -> Any:
    """Start the proxy actor on this (the driver's) node and wait until it has
    connected to the gateway; returns its handle."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = (
        ray.remote(GatewayProxy)
        .options(
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=0,
            runtime_env=runtime_env,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        )
        .remote(address)
    )
    ray.get(actor.ping.remote(), timeout=timeout_s)
    return actor


class NodeRelay:
    """The unix socket a task's confined child calls, in the Ray worker process that
    runs the task; a thread with its own event loop, forwarding to the proxy actor."""

    def __init__(self, actor: Any, parent: Optional[str] = None):
        self.actor = actor
        self.token = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="aflowctl-relay-", dir=parent))  # mode 0700
        self.loop = asyncio.new_event_loop()
        self._server: Any = None
        ready = threading.Event()
        box: list = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self._server = self.loop.run_until_complete(asyncio.start_unix_server(self._serve, path=self.path))
            except BaseException as exc:  # noqa: BLE001 - handed to the constructor
                box.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="aflowctl-ray-relay", daemon=True)
        self._thread.start()
        ready.wait()
        if box:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise InfrastructureError(f"the node's LLM gateway relay could not start: {box[0]}")

    @property
    def path(self) -> str:
        return str(self.dir / "relay.sock")

    @property
    def address(self) -> dict:
        return {"socket": self.path, "token": self.token}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await read_frame(reader)
            if not isinstance(hello, dict) or not secrets.compare_digest(str(hello.get("hello", "")), self.token):
                writer.write(encode(_failed(None, "bad LLM gateway token")))
                return
            writer.write(encode({"ok": True}))
            while True:
                msg = await read_frame(reader)
                asyncio.ensure_future(self._forward(msg if isinstance(msg, dict) else {}, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _forward(self, msg: dict, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self.actor.call.remote(msg)
        except Exception as exc:  # noqa: BLE001 - the actor died (the driver is gone)
            reply = _failed(msg.get("id"), f"the Ray gateway proxy is gone ({type(exc).__name__})")
        if not writer.is_closing():
            writer.write(encode(reply))

    def close(self) -> None:
        if self.loop.is_running():
            if self._server is not None:
                self.loop.call_soon_threadsafe(self._server.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)
