"""The ``llm_calls`` table as response cache and budget ledger (writing it is
:mod:`aflowctl.llm.calllog`).

* :func:`lookup` finds cached answers by (request hash, sample index); rows
  written with the cache off (``params_json.cache = false``), cached replays and
  failed calls are never served.
* :class:`CacheIndex` keeps the (request hash, sample index) keys that
  :func:`lookup` could serve in memory, so that a miss (the common case) costs no
  database round trip; rows written by this process are added as they are queued.
* :func:`spent` sums a run's known costs (:func:`aflowctl.llm.calllog.unflushed` adds
  what this process logged but has not committed yet).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Optional

from sqlalchemy import text

CACHE_MODES = ("readwrite", "read", "write", "off")

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
        "SUM(cost_usd IS NULL AND (error IS NULL OR error LIKE 'interrupted%') AND cached = 0) "
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
