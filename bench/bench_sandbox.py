"""Cost of the sandbox: per check and per run, before and after, and of confinement itself.

    python bench/bench_sandbox.py [--n 40] [--json] [--baseline-rev REV]

In one run, on this machine:
  bare_python      `python -I -c pass` in a subprocess (the floor any child process pays)
  run_python       run_python("pass"): before (the single-process sandbox of REV) and now
  check_empty      check_solution(<empty function>, <empty check>, entry_point): before / now
  check_humaneval  HumanEval/0's reference solution against its real test: before / now
  confine          CPU time of confine_current_process() itself, measured inside fresh
                   processes (median of --n); a rollout worker pays it once, when it
                   starts, not per problem
and the ratios now/before of the median wall time and of the children's CPU time.
The baseline is aflowctl/workflow/sandbox.py as it was before aflowctl/sandbox/ existed
(found with git; pass --baseline-rev to choose), loaded from git into a module.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _time(fn, n: int) -> dict:
    fn()  # warm-up (page cache)
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = _children_cpu(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((_children_cpu() - c0) * 1000)
    wall.sort()
    return {"median_ms": round(statistics.median(wall), 1), "p90_ms": round(wall[int(0.9 * (len(wall) - 1))], 1),
            "child_cpu_ms": round(statistics.fmean(cpu), 1), "n": n}


def _baseline(rev: str | None) -> tuple[types.ModuleType, str]:
    if rev is None:
        added = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "--diff-filter=A", "--",
                                "aflowctl/sandbox/harness.py"], capture_output=True, text=True, check=True)
        rev = added.stdout.split()[-1] + "~1"
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:aflowctl/workflow/sandbox.py"],
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("aflowctl_sandbox_baseline")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:aflowctl/workflow/sandbox.py", "exec"), mod.__dict__)
    return mod, rev


CONFINE_PROBE = """
import json, tempfile, time
t0 = time.process_time()
from aflowctl.sandbox.confine import confine_current_process
t1 = time.process_time()
rep = confine_current_process(scratch_dir=tempfile.mkdtemp(), memory_mb=1024)
t2 = time.process_time()
print(json.dumps({"import_ms": (t1 - t0) * 1000, "confine_ms": (t2 - t1) * 1000, "summary": rep.summary()}))
"""


def _confine_cost(n: int) -> dict:
    imp, conf = [], []
    summary = ""
    for _ in range(n):
        out = subprocess.run([sys.executable, "-I", "-c", CONFINE_PROBE], capture_output=True, text=True, check=True)
        d = json.loads(out.stdout)
        imp.append(d["import_ms"])
        conf.append(d["confine_ms"])
        summary = d["summary"]
    return {"confine_cpu_ms_median": round(statistics.median(conf), 2), "confine_cpu_ms_max": round(max(conf), 2),
            "import_cpu_ms_median": round(statistics.median(imp), 1), "layers": summary, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--baseline-rev", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from aflowctl import benchmarks
    from aflowctl.sandbox import confine
    from aflowctl.sandbox.harness import check_solution
    from aflowctl.sandbox.process import run_python

    old, rev = _baseline(args.baseline_rev)
    sol = "def f():\n    pass\n"
    test = "def check(candidate):\n    pass\n"
    he = benchmarks.get("humaneval")
    prob = he.load("sample")[0]
    he_prog = he.program(he.reference_solution(prob), prob)

    def ok(r):
        assert r.ok, r.reason

    out: dict = {"baseline_rev": rev, "capabilities": {k: v for k, v in confine.capabilities().items()
                                                       if k in ("landlock_abi", "seccomp", "root", "can_drop_uid",
                                                                "needs_read_capability")}}
    out["bare_python"] = _time(lambda: subprocess.run([sys.executable, "-I", "-c", "pass"], check=True), args.n)
    for name, before, now in (
        ("run_python", lambda: ok(old.run_python("pass")), lambda: ok(run_python("pass"))),
        ("check_empty", lambda: ok(old.check_solution(sol, test, "f")), lambda: ok(check_solution(sol, test, "f"))),
        ("check_humaneval", lambda: ok(old.check_solution(he_prog, prob["test"], prob["entry_point"])),
         lambda: ok(check_solution(he_prog, prob["test"], prob["entry_point"], prelude=he.prelude(prob)))),
    ):
        b, a = _time(before, args.n), _time(now, args.n)
        out[name] = {"before": b, "now": a, "wall_ratio": round(a["median_ms"] / b["median_ms"], 2),
                     "cpu_ratio": round(a["child_cpu_ms"] / max(b["child_cpu_ms"], 1e-9), 2)}
    out["confine"] = _confine_cost(max(args.n // 2, 5))
    out["note"] = ("confine runs once per rollout worker (in its initializer), so a worker's per-problem "
                   "overhead from confinement is 0; the per-check figures above are per solution check")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:16s} {v}")


if __name__ == "__main__":
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    main()
