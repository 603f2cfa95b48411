"""Rollout benchmark: wall time of an evaluation against its ideal.

An OpenAI-compatible server on 127.0.0.1 (tests/helpers/openai_server.py) answers
every call after a fixed latency (100 ms by default). A 3-call workflow (three
sequential Custom calls) is evaluated on N problems of GSM8K's validation split at a
total concurrency C. The ideal time is calls x latency / C; the ratio is the
evaluation's wall time (pool start-up excluded: the pool starts once per run and
serves every round) divided by that ideal. Each configuration gets a fresh store (no
cached answers, no reused tasks).

    python bench/bench_rollout.py                      # C in {8, 32}, 200 problems
    python bench/bench_rollout.py --concurrency 32 --workers 2 --problems 200 --json

``--journal-ab N``: N rounds alternating the same evaluation with the write-ahead call
journal (store/calljournal.py) on and off (``Router._journal`` returning None in the
parent, where the gateway's routers run), so that the machine's load hits both alike;
medians and the on/off ratio of the wall-time ratios.

With ``--workers W`` the C problems in flight are spread over W processes (C/W each).
With ``--limit-calls``, C is instead the number of LLM calls in flight (the router's
per-model limit, C/W per process) and every problem may start at once.
Note: problems are the unit of concurrency, so at C=32 with 200 problems of 3 x
100 ms the best possible schedule is ceil(200/32) = 7 waves of 0.3 s = 2.1 s, i.e.
1.12x the ideal 1.875 s before any overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GRAPH = '''
import workspace.GSM8K.workflows.template.operator as operator
import workspace.GSM8K.workflows.round_1.prompt as prompt_custom
from scripts.async_llm import create_llm_instance


class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.name = name
        self.dataset = dataset
        self.llm = create_llm_instance(llm_config)
        self.custom = operator.Custom(self.llm)

    async def __call__(self, problem):
        plan = await self.custom(input=problem, instruction=prompt_custom.PLAN)
        work = await self.custom(input=problem + "\\n" + plan["response"], instruction=prompt_custom.SOLVE)
        final = await self.custom(input=work["response"], instruction=prompt_custom.ANSWER)
        return final["response"], self.llm.get_usage_summary()["total_cost"]
'''

PROMPT = '''
PLAN = "Make a short plan for this problem."
SOLVE = "Follow the plan and solve the problem."
ANSWER = "Give only the final number."
'''


def run_one(*, problems: int, concurrency: int, workers: int, latency: float, calls_per_problem: int = 3,
            limit_calls: bool = False) -> dict:
    from helpers.openai_server import OpenAIServer

    from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
    from aflowctl.rollout.evaluate import evaluate_workflow
    from aflowctl.rollout.pool import RolloutPool
    from aflowctl.store import open_store
    from aflowctl.workflow.loader import WorkflowSource

    home = tempfile.mkdtemp(prefix="bench_rollout_")
    os.environ["AFLOWCTL_HOME"] = home
    per_worker = max(1, concurrency // workers)
    def responder(messages: list, body: dict) -> str:  # distinct answers: no two requests hit the same cache entry
        import hashlib

        return "step " + hashlib.sha1(messages[-1]["content"].encode()).hexdigest()[:12]

    with OpenAIServer(responder, latency_s=latency) as srv:
        store = open_store(Path(home) / "bench.db", cached=False)
        if limit_calls:  # C = LLM calls in flight (the router's limit); every problem may start at once
            rcfg = RolloutConfig(workers=workers, concurrency=math.ceil(problems / workers))
            llm_cfg = LLMConfig(concurrency_per_model=per_worker)
        else:  # C = problems in flight
            rcfg = RolloutConfig(workers=workers, concurrency=per_worker)
            llm_cfg = LLMConfig(concurrency_per_model=max(32, per_worker))
        executor = ModelConfig(model="openai/bench-model", api_base=srv.url)
        src = WorkflowSource(graph=GRAPH, prompt=PROMPT)
        t0 = time.perf_counter()
        pool = RolloutPool(store, rcfg)
        startup = pool.start()
        try:
            t1 = time.perf_counter()
            res = evaluate_workflow(store, src, dataset="gsm8k", split="validate", executor=executor, llm_cfg=llm_cfg,
                                    rollout_cfg=rcfg, limit=problems, pool=pool, seed=int(time.time()))
            wall = time.perf_counter() - t1
        finally:
            pool.close()
        total = time.perf_counter() - t0
        calls = srv.count
        import sqlite3

        conn = sqlite3.connect(store.path)
        lat = conn.execute("SELECT AVG(latency_s), MAX(latency_s) FROM llm_calls WHERE cached = 0").fetchone()
        conn.close()
        per_problem = sum(d["duration_s"] for d in res.details) / max(1, len(res.details))
        max_in_flight = srv.max_in_flight
        store.dispose()
    expected_calls = problems * calls_per_problem
    ideal = expected_calls * latency / (per_worker * workers)
    if limit_calls:
        waves = math.ceil(expected_calls / (per_worker * workers)) * latency
    else:
        waves = math.ceil(problems / (per_worker * workers)) * calls_per_problem * latency
    return {
        "mode": "calls" if limit_calls else "problems",
        "problems": problems, "workers": workers, "concurrency_total": per_worker * workers, "concurrency_per_worker": per_worker,
        "latency_s": latency, "calls": calls, "expected_calls": expected_calls, "errors": res.errors,
        "wall_s": round(wall, 3), "ideal_s": round(ideal, 3), "ratio": round(wall / ideal, 3),
        "best_schedule_s": round(waves, 3), "ratio_to_best_schedule": round(wall / waves, 3),
        "pool_startup_s": round(startup, 3), "total_with_startup_s": round(total, 3), "max_in_flight": max_in_flight,
        "tasks": res.tasks,
        "call_latency_mean_s": round(lat[0] or 0, 4), "call_latency_max_s": round(lat[1] or 0, 4),
        "problem_duration_mean_s": round(per_problem, 4),
    }


def worker_overhead(*, problems: int, latency: float) -> dict:
    """CPU time of the workers per problem, confined vs not, for the 3-call workflow
    (calls through the gateway) on one worker: the sandbox's per-problem cost is the
    difference (confinement itself is paid once per worker and included)."""
    import resource

    from helpers.openai_server import OpenAIServer

    from aflowctl.config import LLMConfig, ModelConfig, RolloutConfig
    from aflowctl.rollout.evaluate import evaluate_workflow
    from aflowctl.rollout.pool import RolloutPool
    from aflowctl.store import open_store
    from aflowctl.workflow.loader import WorkflowSource

    out = {}
    with OpenAIServer(lambda m, b: "42", latency_s=latency) as srv:
        for confine in (False, True):
            home = tempfile.mkdtemp(prefix="bench_overhead_")
            os.environ["AFLOWCTL_HOME"] = home
            store = open_store(Path(home) / "o.db", cached=False)
            rcfg = RolloutConfig(workers=1, concurrency=16)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            pool = RolloutPool(store, rcfg, options={"confine": confine})
            pool.start()
            evaluate_workflow(store, WorkflowSource(graph=GRAPH, prompt=PROMPT), dataset="gsm8k", split="validate",
                              executor=ModelConfig(model="openai/bench-model", api_base=srv.url),
                              llm_cfg=LLMConfig(concurrency_per_model=32), rollout_cfg=rcfg, limit=problems, pool=pool,
                              seed=int(time.time()))
            pool.close()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            out["confined" if confine else "unconfined"] = round(1000 * cpu / problems, 3)
            store.dispose()
    out["overhead_ms_per_problem"] = round(out["confined"] - out["unconfined"], 3)
    return out


def journal_ab(rounds: int, *, problems: int, concurrency: int, workers: int, latency: float) -> dict:
    """Wall-time ratios with and without the call journal, alternated ``rounds`` times."""
    import statistics

    from aflowctl.llm import router

    real = router.Router._journal
    ratios: dict = {"on": [], "off": []}
    try:
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                router.Router._journal = real if mode == "on" else (lambda self, *a: None)  # type: ignore[method-assign]
                ratios[mode].append(run_one(problems=problems, concurrency=concurrency, workers=workers,
                                            latency=latency)["ratio"])
    finally:
        router.Router._journal = real  # type: ignore[method-assign]
    med = {k: statistics.median(v) for k, v in ratios.items()}
    return {"concurrency": concurrency, "workers": workers, "ratios": ratios, "median_ratio": med,
            "on_vs_off": round(med["on"] / med["off"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--concurrency", type=int, action="append", help="total concurrency (repeatable; default 8 and 32)")
    ap.add_argument("--workers", type=int, action="append", help="worker processes (repeatable; default 1 and 2)")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--limit-calls", action="store_true",
                    help="C limits LLM calls in flight (router concurrency) instead of problems in flight")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--journal-ab", type=int, default=0, metavar="N",
                    help="instead: N rounds with and without the call journal, alternated")
    ap.add_argument("--overhead", action="store_true",
                    help="instead: worker CPU ms per problem, confined vs unconfined (the sandbox's cost)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("AFLOWCTL_DATA_PATH", str(REPO.parent / "shared" / "data" / "aflow"))
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if args.overhead:
        r = worker_overhead(problems=args.problems, latency=args.latency)
        print(json.dumps(r) if args.json else
              f"worker CPU per problem: unconfined {r['unconfined']:.2f} ms, confined {r['confined']:.2f} ms, "
              f"sandbox overhead {r['overhead_ms_per_problem']:.2f} ms")
        return
    if args.journal_ab:
        out = [journal_ab(args.journal_ab, problems=args.problems, concurrency=c, workers=w, latency=args.latency)
               for c in args.concurrency or [8, 32] for w in args.workers or [2]]
        print(json.dumps(out, indent=2))
        return
    rows = []
    for c in args.concurrency or [8, 32]:
        for w in args.workers or [1, 2]:
            r = run_one(problems=args.problems, concurrency=c, workers=w, latency=args.latency, limit_calls=args.limit_calls)
            rows.append(r)
            if not args.json:
                print(f"[{r['mode']}] C={r['concurrency_total']:>3} (workers={w}, {r['concurrency_per_worker']} each): wall {r['wall_s']:.3f} s, "
                      f"ideal {r['ideal_s']:.3f} s, ratio {r['ratio']:.3f} (best schedule {r['best_schedule_s']:.2f} s: "
                      f"{r['ratio_to_best_schedule']:.3f}), pool start-up {r['pool_startup_s']:.2f} s, "
                      f"{r['calls']} calls, max in flight {r['max_in_flight']}, errors {r['errors']}; mean call {1000 * r['call_latency_mean_s']:.1f} ms, "
                      f"mean problem {1000 * r['problem_duration_mean_s']:.0f} ms", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
