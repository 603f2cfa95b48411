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
