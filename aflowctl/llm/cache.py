"""The ``llm_calls`` table as call log, response cache and budget ledger.

* :class:`CallLog` appends rows with group commit: rows written while an insert is in
  flight go into the next one, so hundreds of concurrent calls cost a few
  transactions; ``await log.write(rows)`` returns once the rows are committed;
  ``log.enqueue(rows)`` queues them without waiting (the insert runs in the
  background) and ``await log.flush()`` waits until everything queued on the
  current event loop is committed (and raises what an insert raised).
* :func:`lookup` finds cached answers by (request hash, sample index); rows
  written with the cache off (``params_json.cache = false``), cached replays and
  failed calls are never served.
* :class:`CacheIndex` keeps the (request hash, sample index) keys that
  :func:`lookup` could serve in memory, so that a miss (the common case) costs no
  database round trip; rows written by this process are added as they are queued.
* :func:`spent` sums a run's known costs; :func:`unflushed` tells what this process
  logged but has not committed yet (the budget check counts it too).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
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


# --------------------------------------------------------------------------- unflushed costs
# Per run id: USD of rows queued in this process but not committed yet, and the USD
# committed so far by this process (a monotonic counter). A budget check reads the
# counter before it reads the database and adds what was committed meanwhile, so a
# row is never missed between "queued" and "visible in the database" (it may be
# counted twice for an instant, which errs on the safe side).
_ledger_lock = threading.Lock()
_pending_cost: dict = collections.defaultdict(float)
_committed_cost: dict = collections.defaultdict(float)


def _row_costs(store, rows: list[dict]) -> dict:
    out: dict = {}
    path = str(store.path)
    for r in rows:
        c = r.get("cost_usd")
        if c:
            key = (path, r.get("run_id"))
            out[key] = out.get(key, 0.0) + float(c)
    return out


def _ledger_add(costs: dict) -> None:
    if costs:
        with _ledger_lock:
            for run, c in costs.items():
                _pending_cost[run] += c


def _ledger_commit(costs: dict) -> None:
    if costs:
        with _ledger_lock:
            for run, c in costs.items():
                _pending_cost[run] = max(0.0, _pending_cost[run] - c)
                _committed_cost[run] += c


def committed_counter(store, run_id: Optional[str]) -> float:
    """USD this process has committed for ``run_id`` so far (read before :func:`spent`)."""
    with _ledger_lock:
        return _committed_cost[(str(store.path), run_id)]


def unflushed(store, run_id: Optional[str], committed_before: Optional[float] = None) -> float:
    """USD of this process's rows of ``run_id`` not committed yet, plus (when given) what
    was committed since ``committed_counter()`` returned ``committed_before``."""
    key = (str(store.path), run_id)
    with _ledger_lock:
        since = 0.0 if committed_before is None else max(0.0, _committed_cost[key] - committed_before)
        return _pending_cost[key] + since


class CallLog:
    """Group-commit writer of ``llm_calls`` rows for one store, usable from any event loop."""

    def __init__(self, store):
        self.store = store
        self._lock = threading.Lock()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()
        self._indexes: weakref.WeakSet[CacheIndex] = weakref.WeakSet()

    def _queue(self) -> _LoopQueue:
        loop = asyncio.get_running_loop()
        with self._lock:
            q = self._per_loop.get(loop)
            if q is None:
                q = self._per_loop[loop] = _LoopQueue(self.store)
        return q

    def _note(self, rows: list[dict]) -> None:
        if rows:
            for index in list(self._indexes):
                index.note(rows)

    async def write(self, rows: list[dict]) -> None:
        """Queue ``rows`` and return once they are committed."""
        await asyncio.shield(self.submit(rows))

    def submit(self, rows: list[dict]) -> asyncio.Future:
        """Queue ``rows`` now; the returned future is done once they are committed."""
        self._note(rows)
        return self._queue().submit(rows)

    def enqueue(self, rows: list[dict]) -> None:
        """Queue ``rows`` for the background group commit and return at once (call from
        a running event loop; :meth:`flush` waits for them)."""
        self._note(rows)
        self._queue().enqueue(rows)

    async def flush(self) -> None:
        """Wait until every row queued on this event loop is committed; raise the first
        error a background insert met since the last flush."""
        loop = asyncio.get_running_loop()
        with self._lock:
            q = self._per_loop.get(loop)
        if q is not None:
            await q.flush()

    def register(self, index: CacheIndex) -> None:
        self._indexes.add(index)

    def write_sync(self, rows: list[dict]) -> None:
        self._note(rows)
        costs = _row_costs(self.store, rows)
        _ledger_add(costs)
        insert_rows(self.store, rows)
        _ledger_commit(costs)


class _LoopQueue:
    def __init__(self, store):
        self.store = store
        self.pending: list[tuple[list[dict], Optional[asyncio.Future]]] = []
        self.flushing = False
        self.idle: Optional[asyncio.Event] = None
        self.error: Optional[BaseException] = None  # of a background insert, raised by flush()

    def _push(self, rows: list[dict], fut: Optional[asyncio.Future]) -> None:
        _ledger_add(_row_costs(self.store, rows))
        self.pending.append((rows, fut))
        if not self.flushing:
            self.flushing = True
            if self.idle is None:
                self.idle = asyncio.Event()
            self.idle.clear()
            asyncio.ensure_future(self._flush())

    def submit(self, rows: list[dict]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._push(rows, fut)
        return fut

    def enqueue(self, rows: list[dict]) -> None:
        self._push(rows, None)

    async def flush(self) -> None:
        while self.flushing or self.pending:
            if not self.flushing:  # rows queued without a flusher running: start one
                self._push([], None)
            assert self.idle is not None
            await asyncio.shield(self.idle.wait())
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                rows = [r for rs, _ in batch for r in rs]
                try:
                    await asyncio.to_thread(insert_rows, self.store, rows)
                except BaseException as exc:  # noqa: BLE001 - hand the error to every waiter
                    for _, f in batch:
                        if f is not None and not f.done():
                            f.set_exception(exc)
                    if any(f is None for _, f in batch) and self.error is None:
                        self.error = exc  # rows nobody waits for: flush() raises it
                    if not isinstance(exc, Exception):
                        raise
                else:
                    _ledger_commit(_row_costs(self.store, rows))
                    for _, f in batch:
                        if f is not None and not f.done():
                            f.set_result(None)
        finally:
            self.flushing = False
            if self.idle is not None:
                self.idle.set()


# --------------------------------------------------------------------------- cache index
_index_generation = 0


def invalidate_indexes() -> None:
    """Make every :class:`CacheIndex` of this process read the rows added since its
    last refresh on its next lookup (rollout workers call this at the start of each
    task, so a task sees every answer committed before it started)."""
    global _index_generation
    _index_generation += 1


class CacheIndex:
    """In-memory keys of the cacheable rows of one run (or of all runs, ``scope="global"``).

    Loaded at first use, then read incrementally (rows with a larger id) after
    :func:`invalidate_indexes` or every ``refresh_s`` seconds; rows this process
    writes are added as they are queued, their answers kept in memory (the most recent
    ``recent_max``) until they are found in the database. A key that is absent is a miss
    without a database round trip. A row that another process committed since the last
    refresh may be missed: that costs a duplicate call, never a wrong answer.
    """

    REFRESH_S = 5.0

    def __init__(
        self, store, *, scope: str, run_id: Optional[str], refresh_s: Optional[float] = None, recent_max: int = 20000
    ):
        self.store = store
        self.scope = scope
        self.run_id = run_id
        self.refresh_s = self.REFRESH_S if refresh_s is None else refresh_s
        self.recent_max = recent_max
        self.keys: set[tuple[str, int]] = set()
        self.recent: collections.OrderedDict[tuple[str, int], dict] = collections.OrderedDict()
        self.last_id = 0
        self.loaded = False
        self._generation = -1
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def stale(self) -> bool:
        return (
            not self.loaded
            or self._generation != _index_generation
            or time.monotonic() - self._loaded_at > self.refresh_s
        )

    def refresh(self) -> None:
        """Read the keys of rows added since the last refresh (blocking: run it in a thread)."""
        with self._lock:
            if not self.stale():
                return
            gen = _index_generation
            sql = (
                "SELECT id, request_hash, sample_index FROM llm_calls WHERE id > :last AND error IS NULL "
                "AND cached = 0 AND response IS NOT NULL AND json_extract(params_json, '$.cache') IS NOT 0"
            )
            params: dict[str, Any] = {"last": self.last_id}
            if self.scope == "run":
                # first load: the run_id index; later: the id range (unary + keeps the planner off run_id)
                sql += " AND run_id IS :run_id" if not self.loaded else " AND +run_id IS :run_id"
                params["run_id"] = self.run_id
            last = self.last_id
            with self.store.read() as session:
                for rid, h, idx in session.connection().execute(text(sql), params):
                    self.keys.add((h, idx))
                    if rid > last:
                        last = rid
            self.last_id = last
            self.loaded = True
            self._generation = gen
            self._loaded_at = time.monotonic()

    def note(self, rows: list[dict]) -> None:
        """Rows this process is about to write: their cacheable answers become hits now."""
        for r in rows:
            if r.get("cached") or r.get("error") is not None or r.get("response") is None:
                continue
            if self.scope == "run" and r.get("run_id") != self.run_id:
                continue
            if '"cache": true' not in (r.get("params_json") or ""):
                continue
            key = (r["request_hash"], r["sample_index"])
            if key in self.keys or key in self.recent:
                continue
            with self._lock:
                self.recent[key] = {
                    "response": r["response"],
                    "finish_reason": r.get("finish_reason"),
                    "prompt_tokens": r.get("prompt_tokens"),
                    "completion_tokens": r.get("completion_tokens"),
                    "provider": r["provider"],
                    "model": r["model"],
                }
                while len(self.recent) > self.recent_max:
                    self.recent.popitem(last=False)

    def split(self, request_hash: str, indices: list[int]) -> tuple[list[int], dict[int, dict]]:
        """(indices to fetch from the database, answers known in memory); the rest are misses."""
        in_db: list[int] = []
        in_memory: dict[int, dict] = {}
        for i in indices:
            key = (request_hash, i)
            if key in self.keys:
                in_db.append(i)
            else:
                hit = self.recent.get(key)
                if hit is not None:
                    in_memory[i] = dict(hit)
        return in_db, in_memory


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
    return _first_answers(store, sql, params, indices)


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
    return _first_answers(store, sql, params, indices)


def _first_answers(store, sql: str, params: dict[str, Any], indices: list[int]) -> dict[int, dict]:
    """Run ``sql`` (selecting sample_index, response, finish_reason, prompt_tokens,
    completion_tokens, provider, model) in id order; the earliest row of each wanted index."""
    want = set(indices)
    found: dict[int, dict] = {}
    with store.read() as session:
        for row in session.connection().execute(text(sql + " ORDER BY id"), params):
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
