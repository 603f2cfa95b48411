"""The ``llm_calls`` table as call log, response cache and budget ledger.

* :class:`CallLog` appends rows with group commit: rows written while an insert is in
  flight go into the next one, so hundreds of concurrent calls cost a few
  transactions; ``await log.write(rows)`` returns once the rows are committed.
* :func:`lookup` finds cached answers by (request hash, sample index); rows
  written with the cache off (``params_json.cache = false``), cached replays and
  failed calls are never served.
* :func:`spent` sums a run's known costs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from typing import Any, Optional

from sqlalchemy import text

from aflowctl.store import utcnow

CACHE_MODES = ("readwrite", "read", "write", "off")

_INSERT = text(
    "INSERT INTO llm_calls (run_id, role, provider, model, request_hash, sample_index, messages_json, "
    "params_json, response, finish_reason, prompt_tokens, completion_tokens, cost_usd, latency_s, cached, "
    "error, created_at) VALUES (:run_id, :role, :provider, :model, :request_hash, :sample_index, "
    ":messages_json, :params_json, :response, :finish_reason, :prompt_tokens, :completion_tokens, :cost_usd, "
    ":latency_s, :cached, :error, :created_at)"
)


def make_row(
    *,
    run_id: Optional[str],
    role: Optional[str],
    provider: str,
    model: str,
    request_hash: str,
    sample_index: int,
    messages_json: str,
    params: dict,
    response: Optional[str] = None,
    finish_reason: Optional[str] = None,
    prompt_tokens: Optional[int] = None,
    completion_tokens: Optional[int] = None,
    cost_usd: Optional[float] = None,
    latency_s: Optional[float] = None,
    cached: bool = False,
    error: Optional[str] = None,
) -> dict:
    return {
        "run_id": run_id,
        "role": role,
        "provider": provider,
        "model": model,
        "request_hash": request_hash,
        "sample_index": sample_index,
        "messages_json": messages_json,
        "params_json": json.dumps(params, sort_keys=True),
        "response": response,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost_usd,
        "latency_s": latency_s,
        "cached": 1 if cached else 0,
        "error": error,
        "created_at": utcnow(),
    }


def insert_rows(store, rows: list[dict]) -> None:
    """Insert rows in one ``BEGIN IMMEDIATE`` transaction (retried on a stubborn lock)."""
    if not rows:
        return

    def _do(session):
        session.connection().execute(_INSERT, rows)

    store.transact(_do)


class CallLog:
    """Group-commit writer of ``llm_calls`` rows for one store, usable from any event loop."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()
        self._per_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue]" = weakref.WeakKeyDictionary()

    async def write(self, rows: list[dict]) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            q = self._per_loop.get(loop)
            if q is None:
                q = self._per_loop[loop] = _LoopQueue(self.store)
        await q.write(rows)

    def write_sync(self, rows: list[dict]) -> None:
        insert_rows(self.store, rows)


class _LoopQueue:
    def __init__(self, store):
        self.store = store
        self.pending: list[tuple[list[dict], asyncio.Future]] = []
        self.flushing = False

    async def write(self, rows: list[dict]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((rows, fut))
        if not self.flushing:
            self.flushing = True
            asyncio.ensure_future(self._flush())
        await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                rows = [r for rs, _ in batch for r in rs]
                try:
                    await asyncio.to_thread(insert_rows, self.store, rows)
                except BaseException as exc:  # noqa: BLE001 - hand the error to every waiter
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, f in batch:
                        if not f.done():
                            f.set_result(None)
        finally:
            self.flushing = False


def lookup(
    store, request_hash: str, indices: list[int], *, run_id: Optional[str], scope: str = "run"
) -> dict[int, dict]:
    """Cached answers by sample index: successful, cacheable rows of this hash.

    ``scope="run"``: only rows of the same run (``NULL`` run id matches ``NULL``);
    ``scope="global"``: any run.
    """
    if not indices:
        return {}
    sql = (
        "SELECT sample_index, response, finish_reason, prompt_tokens, completion_tokens, provider, model "
        "FROM llm_calls WHERE request_hash = :h AND error IS NULL AND cached = 0 AND response IS NOT NULL "
        "AND json_extract(params_json, '$.cache') IS NOT 0"
    )
    params: dict[str, Any] = {"h": request_hash}
    if scope == "run":
        sql += " AND run_id IS :run_id"
        params["run_id"] = run_id
    sql += " ORDER BY id"
    want = set(indices)
    found: dict[int, dict] = {}
    with store.read() as session:
        for row in session.connection().execute(text(sql), params):
            idx = row[0]
            if idx in want and idx not in found:
                found[idx] = {
                    "response": row[1],
                    "finish_reason": row[2],
                    "prompt_tokens": row[3],
                    "completion_tokens": row[4],
                    "provider": row[5],
                    "model": row[6],
                }
    return found


def replay_lookup(store, request_hash: str, indices: list[int], run_id: Optional[str] = None) -> dict[int, dict]:
    """Answers recorded for this request hash (any run, or only ``run_id``); cached rows count too."""
    sql = (
        "SELECT sample_index, response, finish_reason, prompt_tokens, completion_tokens, provider, model "
        "FROM llm_calls WHERE request_hash = :h AND error IS NULL AND response IS NOT NULL"
    )
    params: dict[str, Any] = {"h": request_hash}
    if run_id is not None:
        sql += " AND run_id = :run_id"
        params["run_id"] = run_id
    sql += " ORDER BY id"
    want = set(indices)
    found: dict[int, dict] = {}
    with store.read() as session:
        for row in session.connection().execute(text(sql), params):
            if row[0] in want and row[0] not in found:
                found[row[0]] = {
                    "response": row[1],
                    "finish_reason": row[2],
                    "prompt_tokens": row[3],
                    "completion_tokens": row[4],
                    "provider": row[5],
                    "model": row[6],
                }
    return found


def spent(store, run_id: str) -> tuple[float, Optional[float]]:
    """(USD spent by the run's calls so far, the run's own budget cap or None)."""
    with store.read() as session:
        conn = session.connection()
        total = conn.execute(
            text("SELECT COALESCE(SUM(cost_usd), 0) FROM llm_calls WHERE run_id = :r"), {"r": run_id}
        ).scalar()
        cap = conn.execute(text("SELECT budget_usd FROM runs WHERE id = :r"), {"r": run_id}).scalar()
    return float(total or 0.0), (None if cap is None else float(cap))


def totals(store, run_id: str) -> list[dict]:
    """Per-run totals by role and model: calls, cached calls, errors, tokens, cost."""
    sql = text(
        "SELECT role, provider, model, COUNT(*), SUM(cached), SUM(error IS NOT NULL), "
        "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), SUM(cost_usd), "
        "SUM(cost_usd IS NULL AND error IS NULL AND cached = 0) "
        "FROM llm_calls WHERE run_id = :r GROUP BY role, provider, model ORDER BY role, provider, model"
    )
    out = []
    with store.read() as session:
        for row in session.connection().execute(sql, {"r": run_id}):
            out.append(
                {
                    "role": row[0],
                    "model": f"{row[1]}/{row[2]}",
                    "calls": int(row[3]),
                    "cached": int(row[4] or 0),
                    "errors": int(row[5] or 0),
                    "prompt_tokens": int(row[6]),
                    "completion_tokens": int(row[7]),
                    "cost_usd": None if row[8] is None else float(row[8]),
                    "unknown_cost_calls": int(row[9] or 0),
                }
            )
    return out
