"""A minimal asyncio HTTP/1.1 client for JSON POSTs to local servers.

Why not httpx here: with tens of requests in flight, httpcore's connection-pool
bookkeeping dominated the client's CPU (FACTS.md; encode/httpcore#1035) and capped a
100 ms server at well under half its ideal throughput on this machine. This client
keeps one idle-connection list per (event loop, host, port), opens a new connection
when none is idle, speaks keep-alive HTTP/1.1 with Content-Length or chunked bodies,
and nothing else. It is used only for OpenAI-compatible servers on this machine.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_mod
import weakref
from typing import Any, Optional
from urllib.parse import urlsplit


class HTTPResponse:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _Pool:
    def __init__(self, host: str, port: int, use_ssl: bool):
        self.host, self.port, self.use_ssl = host, port, use_ssl
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(self):
        ctx = ssl_mod.create_default_context() if self.use_ssl else None
        return await asyncio.open_connection(self.host, self.port, ssl=ctx, limit=2**22)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()


def _pool(host: str, port: int, use_ssl: bool) -> _Pool:
    loop = asyncio.get_running_loop()
    per_loop = _pools.get(loop)
    if per_loop is None:
        per_loop = _pools[loop] = {}
    key = (host, port, use_ssl)
    p = per_loop.get(key)
    if p is None:
        p = per_loop[key] = _Pool(host, port, use_ssl)
    return p


async def _read_response(reader: asyncio.StreamReader) -> tuple[HTTPResponse, bool]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("connection closed by the server")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n"):
            break
        if not h:
            raise ConnectionResetError("connection closed in the headers")
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
        keep = headers.get("connection", "").lower() != "close"
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        keep = headers.get("connection", "").lower() != "close"
    else:
        body = await reader.read()
        keep = False
    return HTTPResponse(status, headers, body), keep


async def post_json(url: str, payload: Any, headers: Optional[dict] = None) -> HTTPResponse:
    """POST ``payload`` as JSON; raises OSError/ConnectionError subclasses on network failure."""
    parts = urlsplit(url)
    use_ssl = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if use_ssl else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = json.dumps(payload).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(data)}",
        "Connection: keep-alive",
    ]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data
    pool = _pool(host, port, use_ssl)
    for attempt in range(2):
        reused = bool(pool.idle)
        reader, writer = pool.idle.pop() if reused else await pool.connect()
        try:
            writer.write(raw)
            await writer.drain()
            resp, keep = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            writer.close()
            if reused and attempt == 0:  # a stale keep-alive connection: try a fresh one
                continue
            if isinstance(exc, asyncio.IncompleteReadError):
                raise ConnectionResetError("connection closed mid-response") from None
            raise
        except BaseException:
            writer.close()
            raise
        if keep:
            pool.idle.append((reader, writer))
        else:
            writer.close()
        return resp
    raise ConnectionResetError("connection closed by the server")  # pragma: no cover


async def close_all() -> None:
    loop = asyncio.get_running_loop()
    for pool in (_pools.pop(loop, None) or {}).values():
        for _, w in pool.idle:
            w.close()
        pool.idle.clear()
