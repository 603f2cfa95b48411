"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for offline tests.

It speaks HTTP/1.1 with keep-alive (asyncio, in a background thread), answers
``POST /v1/chat/completions`` (and ``GET /v1/models``), and can add latency, inject
error statuses, and answer through any function you give it.

API
---
``OpenAIServer(responder=None, latency_s=0.0, model="test-model", api_key=None, models=None)``
    ``responder(messages, body) -> str | dict``: ``messages`` is the request's message
    list, ``body`` the whole JSON request. Return the reply text, or a dict with
    ``content`` and optionally ``finish_reason``, ``prompt_tokens``,
    ``completion_tokens``. It is called once per choice (``n`` in the body; the
    choice index is ``body["_index"]``). Default: ``"echo: <last user message>"``.
    Token counts default to whitespace word counts. With ``api_key``, every request
    without ``Authorization: Bearer <api_key>`` gets HTTP 401. It answers for any model
    name; ``GET /v1/models`` lists ``models`` (default: an empty list, as for a server
    that serves any name; pass a list to act as a server with fixed models).
``server.start() -> server`` / ``server.stop()``; also a context manager.
``server.url``      base URL to use as ``api_base`` / ``OPENAI_API_BASE``: ``http://127.0.0.1:PORT/v1``.
``server.latency_s``  seconds to wait before each answer (change it any time).
``server.fail_next(statuses, retry_after=None)``  the next requests get these HTTP
    statuses in order (e.g. ``[429, 500]``), with a ``Retry-After`` header when given.
``server.requests``   JSON bodies of every completions request received (failed ones too).
``server.auth_headers``  the ``Authorization`` header of each request.
``server.count``      number of completions requests received.
``server.max_in_flight``  most completions requests being answered at the same time.

pytest fixture ``openai_server`` (import it into your test module or conftest:
``from helpers.openai_server import openai_server``) yields a started server.

Run standalone (benchmarks, manual tests):
``python tests/helpers/openai_server.py --port 8000 --latency 0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import threading
import time
from typing import Any, Callable, Optional

Responder = Callable[[list, dict], Any]


def echo_responder(messages: list, body: dict) -> str:
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"echo: {last}"


def _words(x: Any) -> int:
    return len(str(x).split())


class OpenAIServer:
    def __init__(self, responder: Optional[Responder] = None, latency_s: float = 0.0, model: str = "test-model",
                 api_key: Optional[str] = None, models: Optional[list[str]] = None):
        self.responder = responder or echo_responder
        self.api_key = api_key
        self.models = list(models or [])
        self.latency_s = latency_s
        self.model = model
        self.requests: list[dict] = []
        self.auth_headers: list[Optional[str]] = []
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: collections.deque = collections.deque()
        self._retry_after: Optional[float] = None
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self.port: Optional[int] = None

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, statuses: list[int], retry_after: Optional[float] = None) -> None:
        with self._lock:
            self._failures.extend(statuses)
            self._retry_after = retry_after

    def start(self, port: int = 0) -> "OpenAIServer":
        ready = threading.Event()

        def _run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def _start():
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024)
                self.port = self._server.sockets[0].getsockname()[1]

            loop.run_until_complete(_start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=_run, name="openai-test-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def _close():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        fut = asyncio.run_coroutine_threadsafe(_close(), self._loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                status, payload, extra = await self._dispatch(method, path, headers, raw)
                data = json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                        "Content-Type: application/json", f"Content-Length: {len(data)}"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _dispatch(self, method: str, path: str, headers: dict, raw: bytes) -> tuple[int, Any, dict]:
        path = path.split("?", 1)[0].rstrip("/")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}, {}
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}, {}
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}, {}
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, {}
        with self._lock:
            self.count += 1
            self.requests.append(body)
            self.auth_headers.append(headers.get("authorization"))
            status = self._failures.popleft() if self._failures else 200
            retry_after = self._retry_after
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
        finally:
            with self._lock:
                self.in_flight -= 1
        if status != 200:
            extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            kind = "rate_limit_error" if status == 429 else "server_error"
            return status, {"error": {"message": f"injected {status}", "type": kind, "code": status}}, extra
        messages = body.get("messages") or []
        choices, pt_total, ct_total = [], None, 0
        for i in range(int(body.get("n") or 1)):
            reply = self.responder(messages, dict(body, _index=i))
            if not isinstance(reply, dict):
                reply = {"content": str(reply)}
            content = reply.get("content", "")
            pt = reply.get("prompt_tokens", sum(_words(m.get("content", "")) for m in messages))
            ct = reply.get("completion_tokens", _words(content))
            pt_total = pt
            ct_total += ct
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": reply.get("finish_reason", "stop")})
        usage = {"prompt_tokens": pt_total or 0, "completion_tokens": ct_total,
                 "total_tokens": (pt_total or 0) + ct_total}
        return 200, {"id": f"chatcmpl-{self.count}", "object": "chat.completion", "created": int(time.time()),
                     "model": body.get("model", self.model), "choices": choices, "usage": usage}, {}


try:
    import pytest

    @pytest.fixture
    def openai_server():
        """A started :class:`OpenAIServer` (echo responder, no latency)."""
        with OpenAIServer() as server:
            yield server
except ImportError:  # pragma: no cover - used outside pytest
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    server = OpenAIServer(latency_s=args.latency).start(args.port)
    print(f"listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
