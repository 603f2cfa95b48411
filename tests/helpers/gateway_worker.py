"""Rollout worker functions for the gateway tests (resolved by import string in the
pool's spawn workers: they see what workflow code would see)."""

from __future__ import annotations

import os


def environ(payload: dict) -> dict:
    """What a worker process can read of its own environment."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            proc = fh.read().decode(errors="replace")
    except OSError as exc:
        proc = f"unreadable: {exc}"
    return {"environ": dict(os.environ), "proc": proc, "pid": os.getpid()}


def generate(payload: dict) -> dict:
    """``payload["calls"]`` concurrent executor calls through the gateway."""
    import asyncio

    from aflowctl.llm.gateway import GatewayClient, flush
    from aflowctl.rollout.worker import run_async

    client = GatewayClient(payload["gateway_client"], "openai/test-model")

    async def go() -> list:
        out = await asyncio.gather(*(client.generate(f"{payload['tag']} call {i}") for i in range(payload["calls"])))
        await flush()
        return [s.text for s in out]

    return {"texts": run_async(go()), "pid": os.getpid()}


def hostile(payload: dict) -> dict:
    """Everything workflow code should not be able to do, tried from a confined worker;
    returns what each attempt gave (``"ok"`` means it worked: a sandbox failure)."""
    import socket
    import subprocess

    out: dict = {}

    def attempt(name: str, fn) -> None:
        try:
            res = fn()
            out[name] = "ok" if res is None else f"ok: {str(res)[:200]}"
        except BaseException as exc:  # noqa: BLE001 - every failure is the expected outcome
            out[name] = f"{type(exc).__name__}: {exc}"[:200]

    def read_store():
        with open(payload["db"], "rb") as fh:
            return len(fh.read(100))

    def write_store():
        with open(payload["db"], "ab") as fh:
            fh.write(b"x")

    def alloc():
        block = bytearray(10 * 1024**3)
        return len(block)

    def connect():
        s = socket.create_connection(("127.0.0.1", payload["port"]), timeout=2)
        s.close()

    def write_outside():
        with open(payload["outside"], "w") as fh:
            fh.write("pwned")

    def find_secret():
        found = [k for k, v in os.environ.items() if payload["secret"] in v]
        if not found:
            raise LookupError("no key in the environment")
        return found

    attempt("environ", find_secret)
    attempt("read_parent_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read(64))
    attempt("read_store", read_store)
    attempt("write_store", write_store)
    attempt("delete_home_file", lambda: os.remove(payload["home_file"]))
    attempt("alloc_10g", alloc)
    attempt("spawn_sh", lambda: subprocess.run(["sh", "-c", "echo hi"], capture_output=True, timeout=5).stdout)
    attempt("connect_loopback", connect)
    attempt("write_outside_scratch", write_outside)
    attempt("write_scratch", lambda: open("inside.txt", "w").write("fine"))
    if payload.get("unix_socket"):  # another service's socket on this machine

        def connect_unix():
            s = socket.socket(socket.AF_UNIX)
            s.connect(payload["unix_socket"])
            s.sendall(b"hello")
            return s.recv(16)

        def repoint_gateway_connection():  # the one socket it holds, pointed elsewhere
            from aflowctl.llm import gateway

            assert gateway._connection is not None
            gateway._connection.connect(payload["unix_socket"])

        attempt("connect_unix_socket", connect_unix)
        attempt("new_socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        attempt("socketpair_dgram", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
        attempt("repoint_gateway_connection", repoint_gateway_connection)
    return out


def escapes(res: dict) -> list:
    """What :func:`hostile` managed to do that it must not: every attempt but the
    scratch write must have failed, and the unix-socket ones with PermissionError."""
    bad = [name for name, outcome in res.items() if name != "write_scratch" and outcome.startswith("ok")]
    if not res.get("write_scratch", "").startswith("ok"):
        bad.append("write_scratch failed: " + res.get("write_scratch", "missing"))
    if "connect_unix_socket" in res and not res["connect_unix_socket"].startswith("PermissionError"):
        bad.append("connect_unix_socket: " + res["connect_unix_socket"])
    return bad


def drop_gateway(payload: dict) -> dict:
    """In the worker whose pid is ``payload["drop_in"]``: the connection to the gateway
    drops (shut down from this side), then a call is tried. Elsewhere: one call."""
    import socket

    from aflowctl.llm import gateway

    if os.getpid() == payload["drop_in"]:
        assert gateway._connection is not None
        gateway._connection.shutdown(socket.SHUT_RDWR)
    return {**generate({**payload, "calls": 1}), "pid": os.getpid()}


def evaluate_unchecked(payload: dict) -> dict:
    """The evaluate worker with the static check of workflow code switched off: what a
    graph that slipped past that first line can do is left to the sandbox alone."""
    from aflowctl.rollout import eval_worker
    from aflowctl.workflow import loader

    loader.check_source = lambda src, **kw: None
    return eval_worker.evaluate(payload)
