"""Many processes writing one store: rows/s and "database is locked" errors.

    python bench/bench_store.py [--procs 8] [--rows 2000] [--batch 1]

Each process opens the store and does read-then-write transactions (a COUNT, then an
insert of ``--batch`` rows) through ``Store.transact`` (``BEGIN IMMEDIATE`` + retry).
Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def _writer(path: str, proc: int, rows: int, batch: int) -> tuple[int, int]:
    from aflowctl.store import LLMCall, open_store, utcnow

    store = open_store(path, cached=False)
    errors = 0
    for start in range(0, rows, batch):
        def work(s, start=start):
            s.connection().exec_driver_sql("SELECT COUNT(*) FROM llm_calls").scalar()
            for i in range(start, min(start + batch, rows)):
                s.add(LLMCall(provider="bench", model="m", request_hash=f"{proc}-{i}", created_at=utcnow()))

        try:
            store.transact(work)
        except Exception:  # noqa: BLE001 - counted, not raised
            errors += 1
    return rows, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    from aflowctl.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        open_store(path, cached=False).dispose()
        ctx = mp.get_context("spawn")
        with ctx.Pool(a.procs) as pool:
            t0 = time.perf_counter()
            res = pool.starmap(_writer, [(path, k, a.rows, a.batch) for k in range(a.procs)])
            wall = time.perf_counter() - t0
        total = sum(r for r, _ in res)
        errors = sum(e for _, e in res)
    print(json.dumps({"procs": a.procs, "rows": total, "batch": a.batch, "wall_s": round(wall, 2),
                      "rows_per_s": round(total / wall), "locked_errors": errors}, indent=2))


if __name__ == "__main__":
    main()
