"""Ray gateway benchmark: what the Ray paths cost per LLM call, next to the process backend
(worker -> gateway): ``ray`` (a task on the driver's node: confined child -> the gateway)
and ``ray-relay`` (the path of every other node: child -> node relay -> proxy actor ->
the gateway, forced here with the pool option ``ray_relay``).

An OpenAI-compatible server on 127.0.0.1 (tests/helpers/openai_server.py) answers after a
fixed latency. On each backend, a pool of W workers (through the gateway, confined) runs
W tasks of K concurrent executor calls each (``tests/helpers/gateway_worker.py:generate``)
under one per-model limit C. Reported per backend: pool start-up, wall time of the calls,
calls/s, and the ratio to the ideal (W x K x latency / C). Backends alternate over
``--rounds`` so that the machine's load hits both alike; medians.

    python bench/bench_ray.py                          # latency 0 and 0.1 s, 2 workers
    python bench/bench_ray.py --calls 200 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("process", "ray", "ray-relay")


def run_calls(pool, srv, *, workers: int, calls: int, limit: int) -> float:
    from aflowctl.config import LLMConfig, ModelConfig
    from aflowctl.rollout.pool import TaskSpec

    cid = pool.gateway.register(ModelConfig(model="openai/bench-model", api_base=srv.url),
                                llm_cfg=LLMConfig(concurrency_per_model=limit, max_retries=0))
    specs = [TaskSpec({"tag": f"w{k}-{time.time_ns()}", "calls": calls}, context={"gateway_client": cid},
                      worker="helpers.gateway_worker:generate") for k in range(workers)]
    t0 = time.perf_counter()
    out = pool.run(specs)
    wall = time.perf_counter() - t0
    bad = [o.error for o in out if o.status != "done"]
    if bad:
        raise SystemExit(f"bench tasks failed: {bad[0]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calls", type=int, default=200, help="concurrent calls per task")
    ap.add_argument("--limit", type=int, default=32, help="the gateway's per-model concurrency")
    ap.add_argument("--latency", type=float, action="append", help="server latency in s (repeatable; default 0, 0.1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tests = str(REPO / "tests")
    sys.path.insert(0, tests)
    os.environ["AFLOWCTL_HOME"] = tempfile.mkdtemp(prefix="bench_ray_")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import ray
    from helpers.openai_server import OpenAIServer

    from aflowctl.config import RolloutConfig
    from aflowctl.rollout.pool import PRELOAD, RolloutPool
    from aflowctl.store import open_store

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    opts = {"load_plugins": "", "preload": [*PRELOAD, "helpers.gateway_worker"], "env": {"PYTHONPATH": tests}}
    rows = []
    try:
        for latency in args.latency or [0.0, 0.1]:
            with OpenAIServer(lambda m, b: "ok", latency_s=latency) as srv:
                walls: dict = {k: [] for k in KINDS}
                startup: dict = {k: [] for k in KINDS}
                for r in range(args.rounds):
                    for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                        store = open_store(Path(os.environ["AFLOWCTL_HOME"]) / f"{kind}-{latency}-{r}.db", cached=False)
                        cfg = RolloutConfig(executor="process" if kind == "process" else "ray", workers=args.workers)
                        with RolloutPool(store, cfg, options={**opts, "ray_relay": kind == "ray-relay"}) as pool:
                            startup[kind].append(pool.startup_s)
                            walls[kind].append(run_calls(pool, srv, workers=args.workers, calls=args.calls,
                                                         limit=args.limit))
                        store.dispose()
            n = args.workers * args.calls
            ideal = n * latency / args.limit
            for kind in KINDS:
                wall = statistics.median(walls[kind])
                rows.append({"backend": kind, "latency_s": latency, "calls": n, "wall_s": round(wall, 3),
                             "calls_per_s": round(n / wall, 1), "ideal_s": round(ideal, 3),
                             "ratio": round(wall / ideal, 3) if ideal else None,
                             "startup_s": round(statistics.median(startup[kind]), 2), "walls": walls[kind]})
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        ratio = f", ratio to ideal {r['ratio']:.3f}" if r["ratio"] else ""
        print(f"{r['backend']:>9} latency {r['latency_s']:.2f} s: {r['calls']} calls in {r['wall_s']:.3f} s "
              f"({r['calls_per_s']:.0f} calls/s{ratio}); pool start-up {r['startup_s']:.2f} s")


if __name__ == "__main__":
    main()
