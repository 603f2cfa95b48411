"""Measure the embedded SmolLM2-135M-Instruct on the arith splits with a plain prompt.

    HF_HUB_OFFLINE=1 python plugins/aflowctl-arith/scripts/measure_smollm2.py [--split validate] [--limit N]

One chat message per problem (the question as is, or ``--prompt`` with
``{question}``), greedy decoding, 64 new tokens, batches of 8; scored like GSM8K (last
number). ``--programmer`` asks for Python code that prints the answer and scores what
the code prints, run in aflowctl's sandbox (what a Programmer step would do). Prints
accuracy overall and by kind.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run_code(text: str) -> str:
    import re

    from aflowctl.workflow.sandbox import run_python

    m = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    res = run_python(m.group(1) if m else text, timeout_s=5)
    return res.stdout if res.ok else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="validate")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="{question}", help="template with {question}")
    ap.add_argument("--programmer", action="store_true", help="ask for code and score its output")
    args = ap.parse_args()
    if args.programmer:
        args.prompt = "Write Python code that prints the answer.\n\n{question}"
        args.max_new_tokens = max(args.max_new_tokens, 96)

    from aflowctl.benchmarks.scoring import score_last_number
    from aflowctl.llm import local_model
    from aflowctl_arith import ArithBenchmark

    bench = ArithBenchmark()
    rows = bench.load(args.split)
    if args.limit:
        rows = rows[: args.limit]
    t0 = time.time()
    model, tok = local_model.load(local_model.resolve(None))
    load_s = time.time() - t0
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    outputs = []
    t0 = time.time()
    for i in range(0, len(rows), 8):
        batch = rows[i : i + 8]
        prompts = [[{"role": "user", "content": args.prompt.format(question=bench.inputs(r)[0])}] for r in batch]
        gens = local_model.generate_batch(model, tok, prompts, temperature=0.0, max_new_tokens=args.max_new_tokens)
        for r, g in zip(batch, gens):
            answer = _run_code(g.text) if args.programmer else g.text
            s = score_last_number(answer, r["answer"])
            by_kind[r["kind"]].append(s)
            outputs.append({"id": r["id"], "answer": r["answer"], "output": g.text, "score": s})
    gen_s = time.time() - t0
    allscores = [s for v in by_kind.values() for s in v]
    print(json.dumps({
        "split": args.split, "mode": "programmer" if args.programmer else args.prompt, "n": len(allscores), "accuracy": round(sum(allscores) / len(allscores), 3),
        "by_kind": {k: [round(sum(v) / len(v), 2), len(v)] for k, v in sorted(by_kind.items())},
        "load_s": round(load_s, 1), "generate_s": round(gen_s, 1),
    }))
    for o in outputs[:6]:
        print(json.dumps(o)[:300])


if __name__ == "__main__":
    main()
