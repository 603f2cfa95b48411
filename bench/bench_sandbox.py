"""Per-task overhead of the sandbox: an empty solution checked, in milliseconds.

    python bench/bench_sandbox.py [--n 50] [--json]

Measures, sequentially on this machine:
  bare_python   `python -I -c pass` in a subprocess (the floor any child process pays)
  run_python    sandbox.run_python("pass")
  check_empty   sandbox.check_solution(<empty function>, <empty check>, entry_point)
and, with --parallel K, the wall time per task of K concurrent check_empty runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time


def _time(fn, n: int) -> dict:
    fn()  # warm-up (page cache)
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t0) * 1000)
    xs.sort()
    return {"median_ms": round(statistics.median(xs), 1), "mean_ms": round(statistics.fmean(xs), 1),
            "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 1), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from aflowctl.workflow import sandbox

    sol = "def f():\n    pass\n"
    test = "def check(candidate):\n    pass\n"

    def check() -> None:
        r = sandbox.check_solution(sol, test, "f")
        assert r.ok, r.reason

    out = {
        "sandbox": sandbox.describe(),
        "bare_python": _time(lambda: subprocess.run([sys.executable, "-I", "-c", "pass"], check=True), args.n),
        "run_python": _time(lambda: sandbox.run_python("pass"), args.n),
        "check_empty": _time(check, args.n),
    }

    async def par(k: int) -> float:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(sandbox.check_solution_async(sol, test, "f") for _ in range(k)))
        assert all(r.ok for r in rs)
        return (time.perf_counter() - t0) * 1000 / k

    out["check_empty_parallel"] = {"k": args.parallel, "wall_ms_per_task": round(asyncio.run(par(args.parallel)), 1)}
    out["overhead_over_bare_ms"] = round(out["check_empty"]["median_ms"] - out["bare_python"]["median_ms"], 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:24s} {v}")


if __name__ == "__main__":
    main()
