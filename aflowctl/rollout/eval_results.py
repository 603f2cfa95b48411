"""An evaluation's results in the parent: the workers' answers scored here (trusted), the
error for tasks that failed for good, and the ``evaluations`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from aflowctl.errors import AflowctlError, InfrastructureError, SandboxError
from aflowctl.rollout.pool import RolloutError


class Scorer:
    """Scores the workers' plain-text answers in this (trusted) process, on a few
    threads, as tasks finish. A code benchmark's check runs in the sandbox's judge
    (:mod:`aflowctl.sandbox.harness`); a harness failure (``SandboxError``) is
    infrastructure: the evaluation fails (resumable), no item is scored 0 for it."""

    def __init__(self, bench: Any, problems: dict, threads: int):
        import concurrent.futures as cf
        import threading

        self.bench, self.problems = bench, problems
        self.pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="aflowctl-score")
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.futures: list = []
        self.done_items, self.score_sum = 0, 0.0

    def add(self, key: str, items: list[dict]) -> None:
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
        for item in items:
            self.futures.append(self.pool.submit(self._score, item))

    def _score(self, item: dict) -> None:
        answer = item.get("answer")
        score = 0.0
        if not item.get("error") and answer is not None:
            problem = self.problems.get(item["index"])
            if problem is not None:
                try:
                    score = float(self.bench.score(answer, problem))
                except SandboxError:
                    raise
                except Exception as exc:  # noqa: BLE001 - an answer the scorer cannot read is wrong
                    item["error"] = f"could not score the answer: {type(exc).__name__}: {exc}"[:1000]
                if not 0.0 <= score <= 1.0 or score != score:
                    score = 0.0
        item["score"] = score
        with self.lock:
            self.done_items += 1
            self.score_sum += score

    def progress(self) -> tuple[int, float]:
        with self.lock:
            return self.done_items, self.score_sum

    def wait(self) -> None:
        import concurrent.futures as cf

        cf.wait(self.futures)
        for f in self.futures:
            exc = f.exception()
            if isinstance(exc, SandboxError):
                raise InfrastructureError(
                    f"a solution could not be checked: {exc.message}",
                    "nothing was scored 0 for it; run the same evaluation again",
                ) from None
            if exc is not None:
                raise exc

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def mean_of(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def task_failure(failed: list, total: int) -> AflowctlError:
    """The error to raise for tasks that failed for good: a user's error (bad code,
    budget reached, missing data) keeps its class and message."""
    first = failed[0]
    err = first.error or "unknown error"
    exc = first.exception()
    if not isinstance(exc, RolloutError):
        return exc
    return RolloutError(
        f"{len(failed)} of {total} rollout tasks failed (first: {err})",
        "finished tasks are stored; run the same evaluation again to retry the failed ones",
    )


def store_evaluations(
    store: Any,
    per_repeat: dict,
    repeats: int,
    *,
    dataset: str,
    split: str,
    run_id: Optional[str],
    workflow_id: Optional[int],
    n: int,
) -> list[int]:
    """One ``evaluations`` row per repeat, in one transaction. Within a run, an
    evaluation of the same workflow, split and repeat replaces itself (a resumed run
    does not duplicate rows)."""
    import json

    from sqlmodel import select

    from aflowctl.store import Evaluation, utcnow

    def txn(session: Any) -> list[int]:
        ids = []
        now = utcnow()
        for r in range(repeats):
            ds = per_repeat.get(r, [])
            known = [d["cost_usd"] for d in ds if d.get("cost_usd") is not None]
            cost = float(sum(known)) if known or not any(d.get("calls") for d in ds) else None
            row = None
            if run_id is not None and workflow_id is not None:
                row = session.exec(
                    select(Evaluation).where(
                        Evaluation.run_id == run_id,
                        Evaluation.workflow_id == workflow_id,
                        Evaluation.dataset == dataset,
                        Evaluation.split == split,
                        Evaluation.repeat == r,
                    )
                ).first()
            if row is None:
                row = Evaluation(
                    workflow_id=workflow_id,
                    run_id=run_id,
                    dataset=dataset,
                    split=split,
                    repeat=r,
                    score=0.0,
                    n=n,
                    created_at=now,
                )
            row.score = mean_of([d["score"] for d in ds])
            row.cost_usd = cost
            row.n = n
            row.tokens = int(sum(int(d.get("tokens") or 0) for d in ds))
            row.details_json = json.dumps(ds)
            session.add(row)
            session.flush()
            assert row.id is not None  # assigned by the flush
            ids.append(row.id)
        return ids

    return store.transact(txn)
