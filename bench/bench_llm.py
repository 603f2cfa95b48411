"""Benchmark of the LLM layer (issue 3).

1. Router overhead: calls/s through ``make_llm(...).generate`` (call log on, cache
   off) against the loopback OpenAI-compatible server with zero latency, at
   concurrency 1 and 32, versus a bare ``httpx.AsyncClient`` and the ``openai``
   client doing the same requests; both router transports (direct HTTP for loopback
   servers, and litellm, the route of remote providers).
2. Throughput with 100 ms server latency at concurrency 32, against the ideal
   320 calls/s (target: at least 90%).
3. Local provider: load time, resident memory, tokens/s of batched generation
   (batch 1 and 8) on this CPU.
4. ``--journal-ab``: the cost of the write-ahead call journal (store/calljournal.py):
   routed calls with the journal and without it (``Router._journal`` returning None),
   alternated in one process so that the machine's load hits both alike; zero latency
   and 100 ms latency at concurrency 32, the median of ``--rounds`` rounds.

The server runs in its own process so that it does not share the client's GIL.

    python bench/bench_llm.py [--calls 400] [--skip-local] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "helpers" / "openai_server.py"), "--port", str(port), "--latency", str(latency)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    if "listening" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}/v1"


async def run_calls(fn, calls: int, concurrency: int) -> float:
    """Wall seconds for ``calls`` calls of ``fn(i)`` with at most ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await fn(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - t0


def body(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0.0}


async def bare_httpx(url: str, calls: int, conc: int) -> float:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024)) as client:
        async def fn(i):
            r = await client.post(f"{url}/chat/completions", json=body(i), headers={"Authorization": "Bearer EMPTY"})
            r.raise_for_status()
            r.json()["choices"][0]["message"]["content"]

        await fn(-1)  # warm the connection
        return await run_calls(fn, calls, conc)


async def bare_openai(url: str, calls: int, conc: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)

    async def fn(i):
        r = await client.chat.completions.create(**body(i))
        r.choices[0].message.content

    await fn(-1)
    try:
        return await run_calls(fn, calls, conc)
    finally:
        await client.close()


async def routed(url: str, calls: int, conc: int, transport: str, db) -> float:
    from aflowctl.config import LLMConfig, ModelConfig
    from aflowctl.llm.client import make_llm

    llm = make_llm(
        ModelConfig(model="openai/gpt-4o-mini", api_base=url),
        role="executor",
        run_id=f"bench-{transport}-{conc}",
        store=db,
        llm_cfg=LLMConfig(cache="off", http_client=transport, concurrency_per_model=max(conc, 1)),
    )

    async def fn(i):
        await llm.generate(f"question {i}")

    await fn(-1)
    return await run_calls(fn, calls, conc)


def http_section(calls: int, store_mode: str) -> dict:
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_llm_"))
    db = False if store_mode == "none" else tmp / "bench.db"
    proc0, url0 = start_server(0.0)
    proc1, url1 = start_server(0.1)
    try:
        for conc in (1, 32):
            n = calls if conc == 32 else max(calls // 4, 50)
            row = {}
            row["bare_httpx"] = n / asyncio.run(bare_httpx(url0, n, conc))
            row["bare_openai"] = n / asyncio.run(bare_openai(url0, n, conc))
            row["router_direct"] = n / asyncio.run(routed(url0, n, conc, "direct", db))
            row["router_litellm"] = n / asyncio.run(routed(url0, n, conc, "litellm", db))
            row["ratio_direct_vs_httpx"] = row["router_direct"] / row["bare_httpx"]
            row["ratio_litellm_vs_httpx"] = row["router_litellm"] / row["bare_httpx"]
            row["overhead_ms_per_call_direct"] = 1000 * (1 / row["router_direct"] - 1 / row["bare_httpx"])
            row["overhead_ms_per_call_litellm"] = 1000 * (1 / row["router_litellm"] - 1 / row["bare_httpx"])
            out[f"latency0_conc{conc}_calls_per_s"] = row
        n = 640  # 2 s of ideal time at 320 calls/s
        lat = {}
        lat["bare_httpx"] = n / asyncio.run(bare_httpx(url1, n, 32))
        lat["router_direct"] = n / asyncio.run(routed(url1, n, 32, "direct", db))
        lat["router_litellm"] = n / asyncio.run(routed(url1, n, 32, "litellm", db))
        for k in list(lat):
            lat[k + "_pct_of_ideal_320"] = 100 * lat[k] / 320.0
        out["latency100ms_conc32_calls_per_s"] = lat
    finally:
        for p in (proc0, proc1):
            p.terminate()
            p.wait(5)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def local_section(new_tokens: int) -> dict:
    from aflowctl.llm import local_model

    out: dict = {"rss_mb_before": rss_mb()}
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    out["import_torch_transformers_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = local_model.resolve()
    out["resolve_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, tok = local_model.load(path)
    out["load_s"] = time.perf_counter() - t0
    out["rss_mb_after_load"] = rss_mb()
    out["torch_threads"] = torch.get_num_threads()
    local_model.generate_batch(model, tok, ["warm up"], max_new_tokens=4)
    for batch in (1, 8):
        prompts = [f"Write a short story about a robot number {i}." for i in range(batch)]
        t0 = time.perf_counter()
        res = local_model.generate_batch(
            model, tok, prompts, temperature=1.0, max_new_tokens=new_tokens, seed=list(range(batch))
        )
        dt = time.perf_counter() - t0
        toks = sum(len(r.token_ids) for r in res)
        out[f"batch{batch}"] = {"tokens": toks, "seconds": dt, "tokens_per_s": toks / dt}
    # through the provider: 8 concurrent requests gathered into one batch
    from aflowctl.config import LLMConfig, ModelConfig
    from aflowctl.llm.client import make_llm
    from aflowctl.llm.providers import local as local_provider

    llm = make_llm(ModelConfig(model="local/smollm2"), role="policy", store=False, llm_cfg=LLMConfig(cache="off"))

    async def eight():
        return await asyncio.gather(*(
            llm.generate(f"Write a short story about a robot number {i}.", temperature=1.0, seed=i,
                         max_tokens=new_tokens) for i in range(8)
        ))

    local_provider.BATCH_SIZES.clear()
    t0 = time.perf_counter()
    samples = asyncio.run(eight())
    dt = time.perf_counter() - t0
    toks = sum(s.completion_tokens for s in samples)
    out["provider_8_concurrent"] = {"tokens": toks, "seconds": dt, "tokens_per_s": toks / dt,
                                    "batches": list(local_provider.BATCH_SIZES)}
    out["rss_mb_end"] = rss_mb()
    return out


def journal_ab(calls: int, rounds: int) -> dict:
    """Routed calls/s with and without the write-ahead journal, alternated."""
    import statistics

    from aflowctl.llm import router

    tmp = Path(tempfile.mkdtemp(prefix="bench_journal_"))
    db = tmp / "bench.db"
    proc0, url0 = start_server(0.0)
    proc1, url1 = start_server(0.1)
    real = router.Router._journal
    runs: dict = {k: [] for k in ("on_lat0", "off_lat0", "on_lat100", "off_lat100")}
    try:
        for r in range(rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                router.Router._journal = real if mode == "on" else (lambda self, *a: None)  # type: ignore[method-assign]
                runs[f"{mode}_lat0"].append(calls / asyncio.run(routed(url0, calls, 32, "direct", db)))
                runs[f"{mode}_lat100"].append(640 / asyncio.run(routed(url1, 640, 32, "direct", db)))
    finally:
        router.Router._journal = real  # type: ignore[method-assign]
        for p in (proc0, proc1):
            p.terminate()
            p.wait(5)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "calls_per_s": runs,
        "median_calls_per_s": med,
        "overhead_ms_per_call_lat0": 1000 * (1 / med["on_lat0"] - 1 / med["off_lat0"]),
        "ratio_on_vs_off_lat100": med["on_lat100"] / med["off_lat100"],
        "pct_of_ideal_320_lat100": {"on": 100 * med["on_lat100"] / 320, "off": 100 * med["off_lat100"] / 320},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400, help="calls per measurement at concurrency 32")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (local)")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--no-store", action="store_true", help="router without the call log (store=False)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--journal-ab", action="store_true", help="only: calls/s with and without the call journal")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of --journal-ab")
    args = ap.parse_args()
    os.environ.setdefault("AFLOWCTL_HOME", tempfile.mkdtemp(prefix="bench_home_"))
    report: dict = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if args.journal_ab:
        report["journal_ab"] = journal_ab(args.calls, args.rounds)
    elif not args.skip_http:
        report["http"] = http_section(args.calls, "none" if args.no_store else "db")
    if not args.skip_local and not args.journal_ab:
        report["local"] = local_section(args.new_tokens)
    report["load_avg_end"] = os.getloadavg()
    text = json.dumps(report, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else str(x))
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
