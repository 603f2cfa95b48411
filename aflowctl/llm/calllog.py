"""The call log: ``llm_calls`` rows, how they are built and how they are committed.

* :func:`call_row` builds the row of a call (an answer, a failed attempt, a cache hit);
  :func:`make_row` is the plain form.
* :class:`CallLog` appends rows with group commit: rows written while an insert is in
  flight go into the next one, so hundreds of concurrent calls cost a few
  transactions; ``await log.write(rows)`` returns once the rows are committed;
  ``log.enqueue(rows)`` queues them without waiting (the insert runs in the
  background) and ``await log.flush()`` waits until everything queued on the
  current event loop is committed (and raises what an insert raised). Once rows are
  committed, their entries in the write-ahead journal
  (:mod:`aflowctl.store.calljournal`) are settled.
* Inside :func:`deferred_logging` (what rollout workers and the gateway use) the router
  queues its rows instead of waiting for their commit; :func:`flush_logs` waits for
  every queued row of the event loop.
* :func:`unflushed` tells what this process logged but has not committed yet (the
  budget check counts it too); :func:`committed_counter` is read before the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import threading
import weakref
from typing import Any, Optional

from sqlalchemy import text

from aflowctl.store import utcnow
from aflowctl.store.calljournal import journal_for

_INSERT = text(
    "INSERT INTO llm_calls (run_id, role, provider, model, request_hash, sample_index, messages_json, "
    "params_json, response, finish_reason, prompt_tokens, completion_tokens, cost_usd, latency_s, cached, "
    "error, created_at, journal_key) VALUES (:run_id, :role, :provider, :model, :request_hash, :sample_index, "
    ":messages_json, :params_json, :response, :finish_reason, :prompt_tokens, :completion_tokens, :cost_usd, "
    ":latency_s, :cached, :error, :created_at, :journal_key)"
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
    journal_key: Optional[str] = None,
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
        "journal_key": journal_key,
    }


def insert_rows(store, rows: list[dict]) -> None:
    """Insert rows in one ``BEGIN IMMEDIATE`` transaction (retried on a stubborn lock)."""
    if not rows:
        return

    def _do(session):
        session.connection().execute(_INSERT, rows)

    store.transact(_do)
    if any(r.get("journal_key") for r in rows):
        journal_for(store).settle(r.get("journal_key") for r in rows)


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
        self._indexes: weakref.WeakSet[Any] = weakref.WeakSet()

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

    def register(self, index: Any) -> None:
        """A :class:`~aflowctl.llm.cache.CacheIndex` told about every row this log writes."""
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


# --------------------------------------------------------------------------- rows of a call


def request_params(request: Any, mode: str) -> dict:
    """``params_json`` of a call: the sampling parameters, ``n``, whether it may be served from the cache."""
    p = request.sampling_params()
    p["n"] = request.n
    p["cache"] = mode in ("readwrite", "write")
    if request.api_base:
        p["api_base"] = request.api_base
    return p


def call_row(
    request: Any,
    run_id: Optional[str],
    role: Optional[str],
    rhash: str,
    idx: int,
    messages_json: str,
    mode: str,
    sample: Any = None,
    *,
    error: Optional[str] = None,
    latency: Optional[float] = None,
    provider: Optional[str] = None,
    model: Optional[str] = None,
    journal_key: Optional[str] = None,
) -> dict:
    """The row of one sample (``sample``: an answer, cached or not) or of a failed
    attempt (``error``, redacted here)."""
    from aflowctl.logging import redact

    common: dict[str, Any] = dict(
        run_id=run_id,
        role=role,
        request_hash=rhash,
        sample_index=idx,
        messages_json=messages_json,
        params=request_params(request, mode),
        journal_key=journal_key,
    )
    if sample is not None:
        return make_row(
            **common,
            provider=sample.provider,
            model=sample.model,
            response=sample.text,
            finish_reason=sample.finish_reason,
            prompt_tokens=sample.prompt_tokens,
            completion_tokens=sample.completion_tokens,
            cost_usd=sample.cost_usd,
            latency_s=sample.latency_s,
            cached=sample.cached,
        )
    return make_row(
        **common,
        provider=provider or request.provider_name,
        model=model or request.model_name,
        latency_s=latency,
        error=redact(error or "error"),
    )


# --------------------------------------------------------------------------- one log per store

# One call log per store path, shared by all routers of the process.
_call_logs: dict[str, CallLog] = {}

# Inside deferred_logging(): rows are queued and committed in the background.
_deferred: contextvars.ContextVar[bool] = contextvars.ContextVar("aflowctl_llm_deferred_logging", default=False)


def deferred() -> bool:
    return _deferred.get()


@contextlib.contextmanager
def deferred_logging(enabled: bool = True):
    """Within this block (and the asyncio tasks started in it) the router does not wait
    for its ``llm_calls`` rows to be committed: they are written in the background.
    Await :func:`flush_logs` (or ``Router.flush``) before treating the work as done;
    rows not committed when the process is killed are recorded from the write-ahead
    journal as interrupted calls when the store is next opened."""
    token = _deferred.set(enabled)
    try:
        yield
    finally:
        _deferred.reset(token)


async def flush_logs() -> None:
    """Wait until every ``llm_calls`` row queued on this event loop (any store) is
    committed; raises the error of a background insert that failed."""
    errors = []
    for log in list(_call_logs.values()):
        try:
            await log.flush()
        except Exception as exc:  # noqa: BLE001 - flush every store, then raise
            errors.append(exc)
    if errors:
        raise errors[0]


def call_log_for(store: Any) -> CallLog:
    key = str(store.path)
    log = _call_logs.get(key)
    if log is None or log.store is not store:
        log = _call_logs[key] = CallLog(store)
    return log
