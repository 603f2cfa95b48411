"""The LLM gateway: every LLM call (and sandboxed code run) of workflow code goes through the run's
parent process.

Rollout workers run untrusted workflow code, so they hold no provider key and no store path. The
parent runs one :class:`Gateway`: an asyncio server on a unix socket in a private (mode 0700)
directory, on its own thread and event loop. It owns the keys (the parent's environment), one
:class:`~aflowctl.llm.client.LLM` (router) per registered client, hence the cache, the budget, the
retries and the per-model concurrency and requests-per-minute limits, once for all workers, and the
call log: only the parent writes ``llm_calls``.

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object. The first frame of a
connection is ``{"hello": TOKEN}`` (a random per-gateway token handed to the workers in their
initializer options, never through the environment or the store); then any number of requests,
answered out of order by ``id``:

* ``{"id", "op": "generate", "client": CID, "prompt": str | messages, "n": int, "overrides":
  {...}}`` -> ``{"id", "ok": true, "samples": [Sample dicts]}``. The client id names a model
  configuration registered by the parent (:meth:`Gateway.register`): a worker cannot choose the
  model, ``api_base`` or key variable, only the sampling overrides in :data:`WORKER_OVERRIDES`.
* ``{"id", "op": "flush"}``: answered once every ``llm_calls`` row queued so far is committed (a
  task's result counts as done only after its calls are stored).
* ``{"id", "op": "run_python", "code", "limits"}`` and ``{"id", "op": "check_solution", "solution",
  "test", "entry_point", "limits"}``: code the operators (Programmer, Test) run, executed by the
  parent in the sandbox (:mod:`aflowctl.sandbox`), since a confined worker cannot start processes.

Errors come back as ``{"id", "ok": false, "error": {"class": "module:QualName", "message",
"hint"}}`` and are raised in the worker as their own class
(:func:`aflowctl.rollout.backend.rebuild_error`).

Calls in flight when the gateway closes (Ctrl-C, an error) are cancelled and logged as failed calls
("interrupted"), so the call log counts every call that was sent."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import AflowctlError, InfrastructureError, WorkflowError

HEADER = struct.Struct(">I")
MAX_FRAME = 32 * 1024 * 1024
#: generate() overrides a worker may send (never model, api_base or the key variable)
WORKER_OVERRIDES = ("temperature", "top_p", "max_tokens", "stop", "seed", "timeout_s", "system")
CODE_LIMITS = ("timeout_s", "memory_mb")


def encode(obj: Any) -> bytes:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    return HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(HEADER.size)
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise InfrastructureError(f"LLM gateway frame of {size} bytes is over the {MAX_FRAME} limit")
    return json.loads(await reader.readexactly(size))


def error_payload(exc: BaseException) -> dict:
    from aflowctl.logging import redact

    if isinstance(exc, AflowctlError):
        return {
            "class": f"{type(exc).__module__}:{type(exc).__qualname__}",
            "message": redact(exc.message),
            "hint": redact(exc.hint) if exc.hint else None,
        }
    return {
        "class": "aflowctl.errors:InfrastructureError",
        "message": redact(f"LLM gateway error: {type(exc).__name__}: {exc}"),
        "hint": None,
    }


# --------------------------------------------------------------------------- server


class Gateway:
    """The parent's side. ``Gateway(store).start()``; ``register(...)`` a client per
    executor configuration; hand :attr:`address` to the workers; :meth:`close`."""

    def __init__(self, store: Any):
        self.store = store
        self.dir: Optional[Path] = None
        self.token = secrets.token_hex(16)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Any = None
        self._clients: dict[str, Any] = {}
        self._client_keys: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._inflight: set[asyncio.Task] = set()
        self.calls = 0  # generate requests served (for tests and benches)

    @property
    def socket_path(self) -> str:
        assert self.dir is not None, "start() the gateway first"
        return str(self.dir / "gw.sock")

    @property
    def address(self) -> dict:
        """What a worker needs to connect: ``{"socket", "token"}`` (never stored)."""
        return {"socket": self.socket_path, "token": self.token}

    def start(self) -> Gateway:
        if self._thread is not None:
            return self
        self.dir = Path(tempfile.mkdtemp(prefix="aflowctl-gw-"))  # mode 0700
        ready = threading.Event()
        box: list = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_unix_server(self._serve, path=self.socket_path))
                os.chmod(self.socket_path, 0o600)
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                box.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="aflowctl-llm-gateway", daemon=True)
        self._thread.start()
        ready.wait()
        if box:
            raise InfrastructureError(f"the LLM gateway could not start: {box[0]}", "check that /tmp is writable")
        return self

    def register(
        self, model_cfg: Any, *, role: str = "executor", run_id: Optional[str] = None, llm_cfg: Any = None
    ) -> str:
        """A client id for one model configuration (the same configuration, the same id)."""
        from aflowctl.config import LLMConfig, ModelConfig
        from aflowctl.llm.client import make_llm

        mc = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.model_validate(model_cfg)
        lc = llm_cfg if isinstance(llm_cfg, LLMConfig) or llm_cfg is None else LLMConfig.model_validate(llm_cfg)
        key = json.dumps(
            [mc.model_dump(mode="json"), role, run_id, lc.model_dump(mode="json") if lc else None], sort_keys=True
        )
        with self._lock:
            cid = self._client_keys.get(key)
            if cid is None:
                cid = f"c{next(self._ids)}"
                self._clients[cid] = make_llm(mc, role=role, run_id=run_id, store=self.store, llm_cfg=lc)
                self._client_keys[key] = cid
            return cid

    def client(self, cid: str) -> Any:
        return self._clients[cid]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (me := asyncio.current_task()) is not None:  # close() cancels it: no request is read after
            self._inflight.add(me)
            me.add_done_callback(self._inflight.discard)
        try:
            hello = await read_frame(reader)
            if not isinstance(hello, dict) or not secrets.compare_digest(str(hello.get("hello", "")), self.token):
                writer.write(
                    encode({"ok": False, "error": error_payload(InfrastructureError("bad LLM gateway token"))})
                )
                return
            writer.write(encode({"ok": True}))
            while True:
                msg = await read_frame(reader)
                task = asyncio.ensure_future(self._answer(msg, writer))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # cancelled by close(): ends quietly (asyncio logs a handler task that ends cancelled)
        finally:
            writer.close()

    async def _answer(self, msg: dict, writer: asyncio.StreamWriter) -> None:
        rid = msg.get("id") if isinstance(msg, dict) else None
        try:
            out = await self._handle(msg)
            reply = {"id": rid, "ok": True, **out}
        except asyncio.CancelledError:
            stopped = InfrastructureError("the LLM gateway stopped (the run was interrupted)")
            _write(writer, {"id": rid, "ok": False, "error": error_payload(stopped)})
            raise
        except Exception as exc:  # noqa: BLE001 - every error goes back to the worker
            reply = {"id": rid, "ok": False, "error": error_payload(exc)}
        _write(writer, reply)

    async def _handle(self, msg: dict) -> dict:
        from aflowctl.llm.calllog import deferred_logging, flush_logs

        op = msg.get("op")
        if op == "generate":
            llm = self._clients.get(str(msg.get("client")))
            if llm is None:
                raise WorkflowError(f"unknown LLM gateway client {msg.get('client')!r}", "this is a bug in aflowctl")
            overrides = dict(msg.get("overrides") or {})
            bad = sorted(set(overrides) - set(WORKER_OVERRIDES))
            if bad:
                raise WorkflowError(
                    f"workflow code may not set {', '.join(bad)} of the executor's LLM calls",
                    f"only {', '.join(WORKER_OVERRIDES)} can be overridden",
                )
            with deferred_logging():
                samples = await llm.generate_n(msg.get("prompt") or "", max(1, int(msg.get("n") or 1)), **overrides)
            self.calls += 1
            return {"samples": [s.to_dict() for s in samples]}
        if op == "flush":
            await flush_logs()
            return {}
        if op in ("run_python", "check_solution"):
            from aflowctl.workflow import sandbox

            limits = {k: v for k, v in (msg.get("limits") or {}).items() if k in CODE_LIMITS}
            if op == "run_python":
                res = await sandbox.run_python_async(str(msg.get("code") or ""), **limits)
            else:
                res = await sandbox.check_solution_async(
                    str(msg.get("solution") or ""), msg.get("test") or "", msg.get("entry_point"), **limits
                )
            return {
                "result": {k: getattr(res, k) for k in ("ok", "reason", "returncode", "stdout", "stderr", "duration_s")}
            }
        raise WorkflowError(f"unknown LLM gateway operation {op!r}", "this is a bug in aflowctl")

    def flush(self, timeout_s: float = 60.0) -> None:
        """Commit every queued ``llm_calls`` row (from any thread)."""
        if self.loop is None or not self.loop.is_running():
            return
        from aflowctl.llm.calllog import flush_logs

        asyncio.run_coroutine_threadsafe(flush_logs(), self.loop).result(timeout_s)

    def close(self) -> None:
        """Cancel the calls in flight (each is logged as interrupted), commit the call
        log, stop the server and remove the private directory."""
        loop, thread = self.loop, self._thread
        if loop is not None and thread is not None and loop.is_running():

            async def shutdown() -> None:
                from aflowctl.llm.calllog import flush_logs

                if self._server is not None:
                    self._server.close()
                tasks = list(self._inflight)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                try:
                    await flush_logs()
                except Exception:  # noqa: BLE001 - closing: what could be stored is stored
                    pass

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(60)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
        self._thread = self.loop = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _write(writer: asyncio.StreamWriter, reply: dict) -> None:
    if not writer.is_closing():
        writer.write(encode(reply))


# --------------------------------------------------------------------------- worker side


_connection: Optional[socket.socket] = None
_lost = False


def connect(address: dict) -> socket.socket:
    """Connect to the gateway (blocking, in a worker's initializer, before it confines
    itself: a confined process can make no socket) and say hello; the socket is kept
    for :class:`GatewayClient`. Call it once per process: a worker whose connection
    drops is replaced, never reconnected."""
    global _connection
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address["socket"])
        sock.sendall(encode({"hello": address["token"]}))
        head = _recv_exact(sock, HEADER.size)
        reply = json.loads(_recv_exact(sock, HEADER.unpack(head)[0]))
    except OSError as exc:
        sock.close()
        raise InfrastructureError(
            f"cannot reach the LLM gateway: {exc.strerror or exc}", "the run's parent process is gone or overloaded"
        ) from None
    if not reply.get("ok"):
        sock.close()
        raise InfrastructureError("the LLM gateway refused this worker", "this is a bug in aflowctl")
    _connection = sock
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the LLM gateway closed the connection")
        buf += chunk
    return buf


def connected() -> bool:
    return _connection is not None


def lost() -> bool:
    """True once this worker's connection to the gateway is gone: a confined worker
    cannot open another (no sockets after confinement), so it must be replaced
    (:func:`aflowctl.rollout.worker.run_task` then ends the process)."""
    return _lost


class _Channel:
    """The worker's connection on its event loop: requests multiplexed by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.dead: Optional[BaseException] = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await read_frame(self.reader)
                fut = self.pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except BaseException as exc:  # noqa: BLE001 - every waiter learns the connection is gone
            global _lost
            if not isinstance(exc, asyncio.CancelledError):  # not just this event loop closing
                _lost = True
            self.dead = InfrastructureError(
                "the connection to the LLM gateway was lost", "the run's parent process stopped"
            )
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(self.dead)
            self.pending.clear()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def request(self, msg: dict) -> dict:
        if self.dead is not None:
            raise self.dead
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.writer.write(encode({**msg, "id": rid}))
        reply = await fut
        if not reply.get("ok"):
            from aflowctl.rollout.backend import rebuild_error

            err = reply.get("error") or {}
            exc = rebuild_error(
                {"error_class": err.get("class"), "message": err.get("message"), "hint": err.get("hint")},
                err.get("message") or "LLM gateway error",
            )
            raise exc
        return reply


_channels: dict[int, asyncio.Future[_Channel]] = {}


async def channel() -> _Channel:
    """This process's channel on the running event loop (built once, on the socket
    opened by :func:`connect`; concurrent first callers share the same one)."""
    loop = asyncio.get_running_loop()
    fut = _channels.get(id(loop))
    if fut is None:
        if _connection is None:
            raise InfrastructureError("this worker is not connected to an LLM gateway", "this is a bug in aflowctl")

        async def make() -> _Channel:
            reader, writer = await asyncio.open_unix_connection(sock=_connection)
            return _Channel(reader, writer)

        fut = _channels[id(loop)] = asyncio.ensure_future(make())
    return await asyncio.shield(fut)


class GatewayClient:
    """The executor LLM in a worker: the facade of :class:`~aflowctl.llm.client.LLM`
    (``generate``, ``generate_n``, ``model``) over the gateway."""

    def __init__(self, client_id: str, model: str):
        self.client_id = client_id
        self.model = model

    def __repr__(self) -> str:
        return f"GatewayClient({self.model!r})"

    async def generate(self, prompt_or_messages: Any, **overrides: Any) -> Any:
        return (await self.generate_n(prompt_or_messages, 1, **overrides))[0]

    async def generate_n(self, prompt_or_messages: Any, n: int, **overrides: Any) -> list:
        from aflowctl.llm.types import Sample

        ch = await channel()
        reply = await ch.request(
            {
                "op": "generate",
                "client": self.client_id,
                "prompt": prompt_or_messages,
                "n": int(n),
                "overrides": overrides,
            }
        )
        return [Sample(**s) for s in reply["samples"]]


async def flush() -> None:
    """Wait until the gateway has committed the calls made so far (no-op unconnected)."""
    if _connection is not None:
        await (await channel()).request({"op": "flush"})


async def run_code(op: str, **fields: Any) -> Any:
    """``run_python`` / ``check_solution`` through the gateway -> a SandboxResult."""
    from aflowctl.workflow.sandbox import SandboxResult

    reply = await (await channel()).request({"op": op, **fields})
    return SandboxResult(**reply["result"])
