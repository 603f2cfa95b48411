"""Benchmark of `aflowctl optimize` (issues 5 and 7).

1. A 5-round GSM8K run (validation sample 50, 5 repeats, executor latency 100 ms,
   concurrency 32 = workers x per-worker concurrency) against a loopback
   OpenAI-compatible server that plays executor and optimizer: wall time versus the
   ideal (sum of LLM latencies / concurrency), and the per-round overhead outside LLM
   waits (selection, prompt rendering, store writes).
2. K = 4 candidates versus K = 1: wall time of a round (target <= 1.3x).

    python bench/bench_optimize.py [--rounds 5] [--limit 50] [--repeats 5] [--latency 0.1]

Prints a JSON summary. Needs ../shared/data/aflow (GSM8K validation split) or a
fetched gsm8k split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the loopback server lives with the tests

os.environ.setdefault("AFLOWCTL_DATA_PATH", str(REPO.parent / "shared" / "data" / "aflow"))
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key-000000")


def run(rounds: int, limit: int, repeats: int, latency: float, workers: int, concurrency: int, candidates: int,
        optimizer: str, home: Path) -> dict:
    from helpers.openai_server import OpenAIServer
    from test_optimize_e2e import OPT_SYSTEM_MARK, executor_reply, optimizer_reply

    from aflowctl.config import load_config
    from aflowctl.optimizer.search import Optimizer
    from aflowctl.rollout.pool import RolloutPool
    from aflowctl.store import open_store, runs

    calls = {"executor": 0, "optimizer": 0}

    def responder(messages, body):
        if messages and OPT_SYSTEM_MARK in str(messages[0].get("content", "")):
            calls["optimizer"] += 1
            # K candidates carry different seeds: give each its own modification
            reply = optimizer_reply(messages, "good")
            tag = f"seed {body.get('seed')}"
            return reply.replace("variant ", f"{tag} variant ")
        calls["executor"] += 1
        return executor_reply("\n".join(str(m.get("content")) for m in messages))

    server = OpenAIServer(responder=responder, latency_s=latency).start()
    try:
        opt_model = {"model": "mutate"} if optimizer == "mutate" else {"model": "openai/bench-opt", "api_base": server.url, "temperature": 1.0}
        cfg = load_config(None, {
            "optimize.dataset": "gsm8k", "optimize.max_rounds": rounds, "optimize.validation_rounds": repeats,
            "optimize.validation_limit": limit, "optimize.candidates": candidates, "optimize.check_convergence": False,
            "optimize.operators": ["Custom", "ScEnsemble"],
            "optimize.optimizer": opt_model,
            "optimize.executor": {"model": "openai/bench-exec", "api_base": server.url, "temperature": 0.0},
            "rollout.workers": workers, "rollout.concurrency": concurrency,
            "llm.concurrency_per_model": max(32, concurrency * workers),
        })
        store = open_store(home / f"bench-{candidates}.db")
        opened = runs.create_run(store, kind="optimize", cfg=cfg, dataset=cfg.optimize.dataset, seed=cfg.optimize.seed,
                                 budget_usd=cfg.optimize.budget_usd, state={"completed_round": 0})
        rid = opened.id
        t_pool = time.perf_counter()
        with RolloutPool(store, cfg.rollout) as pool:
            pool.start()
            startup = time.perf_counter() - t_pool
            opt = Optimizer(store, cfg, rid, pool=pool)
            t0 = time.perf_counter()
            out = opt.run()
            wall = time.perf_counter() - t0
        opened.lease.release()
        n_calls = calls["executor"] + calls["optimizer"]
        C = workers * concurrency
        ideal = n_calls * latency / C
        # What no schedule can overlap: each round after the first waits for its optimizer
        # call and then for the one-problem smoke run (one call: the loopback optimizer's
        # children keep the seed's one-call graph) before its evaluations can start.
        sequential = (out.rounds - 1) * 2 * latency
        ideal_with_sequential = (calls["executor"] * latency / C) + sequential
        return {
            "candidates": candidates, "rounds": out.rounds, "status": out.status, "best_score": out.best_score,
            "executor_calls": calls["executor"], "optimizer_calls": calls["optimizer"], "concurrency": C,
            "pool_startup_s": round(startup, 3), "wall_s": round(wall, 3), "ideal_s": round(ideal, 3),
            "ratio": round(wall / ideal, 3) if ideal else None,
            "ideal_with_sequential_s": round(ideal_with_sequential, 3),
            "ratio_to_ideal_with_sequential": round(wall / ideal_with_sequential, 3),
            "round_wall_s": [round(r["wall_s"], 3) for r in opt.round_stats],
            "round_overhead_ms": [round(1000 * r["overhead_s"], 1) for r in opt.round_stats],
            "mean_round_overhead_ms": round(1000 * sum(r["overhead_s"] for r in opt.round_stats) / max(len(opt.round_stats), 1), 1),
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--optimizer", default="llm", choices=["llm", "mutate"])
    ap.add_argument("--skip-k", action="store_true", help="skip the K=4 vs K=1 comparison")
    ap.add_argument("--fixed-concurrency", action="store_true",
                    help="K=4 with the same total concurrency as K=1 (default: K times the concurrency, so that the "
                         "K evaluations run in parallel, each with the concurrency of a K=1 evaluation)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AFLOWCTL_HOME"] = tmp
        home = Path(tmp)
        res = {"k1": run(args.rounds, args.limit, args.repeats, args.latency, args.workers, args.concurrency, 1, args.optimizer, home)}
        if not args.skip_k:
            conc = args.concurrency if args.fixed_concurrency else 4 * args.concurrency
            res["k4"] = run(args.rounds, args.limit, args.repeats, args.latency, args.workers, conc, 4, args.optimizer, home)
            k1 = sum(res["k1"]["round_wall_s"]) / max(len(res["k1"]["round_wall_s"]), 1)
            k4 = sum(res["k4"]["round_wall_s"]) / max(len(res["k4"]["round_wall_s"]), 1)
            res["k4_over_k1_round_wall"] = round(k4 / k1, 3)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
