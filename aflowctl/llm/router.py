"""The router: the one path every LLM call takes.

For a request of ``n`` samples it (1) resolves the provider from ``provider/model``,
(2) serves what it can from the response cache, (3) checks the run's budget against
a worst-case estimate of the rest, (4) calls the provider under a per-model
concurrency limit (one semaphore per event loop) and an optional requests-per-minute
limit, with a timeout, retrying rate limits, 5xx, timeouts and connection errors
with exponential back-off and jitter (honouring Retry-After), and (5) logs every
attempt, success or failure, and every cache hit to ``llm_calls``.

Per-call store round trips are kept off the common path: cache misses are decided
from an in-memory index of the run's cached keys (:class:`~aflowctl.llm.cache.CacheIndex`),
and inside :func:`~aflowctl.llm.calllog.deferred_logging` (what rollout workers and
the gateway use) rows are committed in the background instead of holding each call
until its group commit ends; the task then awaits :func:`~aflowctl.llm.calllog.flush_logs`
before its result counts as done. Costs logged but not committed yet still count
against the budget. Just before a request is sent, the row that would describe it if
it never came back is appended to the store's write-ahead journal
(:mod:`aflowctl.store.calljournal`), so a call in flight when the process is killed
is still logged (as interrupted) when the store is next opened.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time
import weakref
from typing import Any, Optional

from loguru import logger

from aflowctl.config import LLMConfig
from aflowctl.errors import (
    AflowctlError,
    BudgetExceeded,
    MissingKeyError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailableError,
    ProviderUnreachableError,
    UnknownModelError,
)
from aflowctl.llm import cache as cache_mod
from aflowctl.llm import calllog, pricing, registry
from aflowctl.llm.calllog import call_log_for, call_row, deferred_logging, flush_logs
from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample
from aflowctl.store.calljournal import journal_for

# Per event loop: model -> semaphore / request timestamps (asyncio objects are per loop).
_semaphores: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()
_rpm_windows: weakref.WeakKeyDictionary[Any, dict[str, collections.deque]] = weakref.WeakKeyDictionary()
_limits_lock = threading.Lock()

# Worst-case cost of calls in flight in this process, per run (run id or None).
_reserved: dict[Optional[str], float] = collections.defaultdict(float)
_reserved_lock = threading.Lock()
# Spend of calls without a run id, per process (the budget of one-off calls).
_spent_no_run: dict[int, float] = collections.defaultdict(float)

__all__ = ["Router", "call_log_for", "classify", "deferred_logging", "flush_logs"]  # the last three: calllog's


def _semaphore(model: str, limit: int) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    with _limits_lock:
        per_loop = _semaphores.setdefault(loop, {})
        sem = per_loop.get(model)
        if sem is None:
            sem = per_loop[model] = asyncio.Semaphore(limit)
        return sem


RPM_WINDOW_S = 60.0


async def _rpm_wait(model: str, rpm: int, window_s: Optional[float] = None) -> None:
    """Wait until fewer than ``rpm`` requests to ``model`` started in the last ``window_s``."""
    window_s = RPM_WINDOW_S if window_s is None else window_s
    loop = asyncio.get_running_loop()
    with _limits_lock:
        window = _rpm_windows.setdefault(loop, {}).setdefault(model, collections.deque())
    while True:
        now = time.monotonic()
        while window and now - window[0] >= window_s:
            window.popleft()
        if len(window) < rpm:
            window.append(now)
            return
        await asyncio.sleep(window_s - (now - window[0]) + 0.001)


class Router:
    """Routes requests to providers with cache, budget, limits, retries and logging.

    ``store`` is an opened :class:`~aflowctl.store.Store` or ``None`` (then nothing is
    cached, budgeted against the store, or logged: benchmarks and embedding only).
    """

    def __init__(self, llm_cfg: Optional[LLMConfig] = None, store=None):
        self.cfg = llm_cfg or LLMConfig()
        self.store = store
        if self.cfg.prices:
            pricing.register_prices(self.cfg.prices)
        self.log = call_log_for(store) if store is not None else None
        self._run_caps: dict[str, Optional[float]] = {}
        self._indexes: dict[tuple[str, Optional[str]], cache_mod.CacheIndex] = {}

    async def flush(self) -> None:
        """Wait until the rows this process queued on this event loop are committed."""
        if self.log is not None:
            await self.log.flush()

    async def _write(self, rows: list[dict]) -> None:
        assert self.log is not None, "only called with a store"
        if calllog.deferred():
            self.log.enqueue(rows)
        else:
            await self.log.write(rows)

    async def _lookup(self, rhash: str, indices: list[int], run_id: Optional[str]) -> dict[int, dict]:
        scope = getattr(self.cfg, "cache_scope", "run")
        key = (scope, run_id if scope == "run" else None)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = cache_mod.CacheIndex(self.store, scope=scope, run_id=key[1])
            assert self.log is not None, "only called with a store"
            self.log.register(index)
        if index.stale():
            await asyncio.to_thread(index.refresh)
        in_db, found = index.split(rhash, indices)
        if in_db:
            found.update(
                await asyncio.to_thread(cache_mod.lookup, self.store, rhash, in_db, run_id=run_id, scope=scope)
            )
        return found

    # ------------------------------------------------------------------ public
    async def complete(
        self, request: LLMRequest, *, role: Optional[str] = None, run_id: Optional[str] = None
    ) -> list[Sample]:
        """``request.n`` samples, in sample-index order (cached ones included)."""
        if request.n < 1:
            raise ProviderError(f"n must be at least 1 (got {request.n})", "ask for one or more samples")
        if self.cfg.replay_from and not request.model.startswith("replay/"):
            request = request.with_(model="replay/" + request.model)
        provider, prefix, name = registry.resolve(request.model)
        if hasattr(provider, "bind"):  # providers that read the store (replay)
            provider = provider.bind(self.store, self.cfg)
        if request.transport is None and getattr(self.cfg, "http_client", None):
            request = request.with_(transport=self.cfg.http_client)
        if request.timeout_s is None:
            request = request.with_(timeout_s=self.cfg.timeout_s)
        rhash = request.request_hash()
        messages_json = json.dumps(request.messages, ensure_ascii=False)
        mode = self.cfg.cache
        results: dict[int, Sample] = {}

        if self.store is not None and mode in ("readwrite", "read"):
            hits = await self._lookup(rhash, list(range(request.n)), run_id)
            if hits:
                rows = []
                for idx, hit in sorted(hits.items()):
                    results[idx] = Sample(
                        text=hit["response"],
                        finish_reason=hit["finish_reason"],
                        prompt_tokens=hit["prompt_tokens"],
                        completion_tokens=hit["completion_tokens"],
                        cost_usd=0.0,
                        latency_s=0.0,
                        provider=hit["provider"],
                        model=hit["model"],
                        cached=True,
                        request_hash=rhash,
                        sample_index=idx,
                    )
                    rows.append(call_row(request, run_id, role, rhash, idx, messages_json, mode, results[idx]))
                await self._write(rows)
        missing = [i for i in range(request.n) if i not in results]
        if missing:
            if hasattr(provider, "indices"):
                provider.indices = missing
            fresh = await self._call_provider(
                provider, prefix, name, request.with_(n=len(missing)), role, run_id, rhash, messages_json, missing
            )
            for idx, s in zip(missing, fresh):
                results[idx] = s
        return [results[i] for i in range(request.n)]

    # ----------------------------------------------------------------- internals
    async def _budget_check(self, request: LLMRequest, prefix: str, name: str, run_id: Optional[str]) -> float:
        """Raise BudgetExceeded if the worst case of this call would pass the cap; return the reservation."""
        cap = self.cfg.budget_usd
        spent_db = 0.0
        if self.store is not None and run_id is not None:
            if cap is None and self._run_caps.get(run_id, 1.0) is None:
                return 0.0  # the run has no cap (looked up once per router)
            committed_before = calllog.committed_counter(self.store, run_id)
            spent_db, run_cap = await asyncio.to_thread(cache_mod.spent, self.store, run_id)
            self._run_caps[run_id] = run_cap
            if cap is None:
                cap = run_cap
        elif run_id is None:
            spent_db = _spent_no_run[id(self)]
        if cap is None:
            return 0.0
        estimate = getattr(registry.get_provider(prefix), "worst_case_cost", None)
        if callable(estimate):
            worst = estimate(request)
        else:
            worst = pricing.worst_case_cost(prefix, name, request.messages, request.max_tokens, request.n)
        worst = worst or 0.0
        with _reserved_lock:
            in_flight = _reserved[run_id]
            if self.store is not None and run_id is not None:
                # logged by this process but not committed yet (read after the reservations:
                # a finished call is queued before its reservation is released)
                spent_db += calllog.unflushed(self.store, run_id, committed_before)
            total = spent_db + in_flight
            if total >= cap or total + worst > cap:
                where = f"run {run_id}" if run_id else "this session"
                raise BudgetExceeded(
                    f"budget of ${cap:.4f} for {where} reached: ${spent_db:.4f} spent"
                    + (f" (+${in_flight:.4f} in flight)" if in_flight else "")
                    + f", the next call to {request.model} may cost up to ${worst:.4f}",
                    "everything done so far is stored; resume with a higher cap, e.g. "
                    f"--budget-usd {max(cap * 2, total + worst + 0.01):.2f} (or llm.budget_usd in the config)",
                )
            _reserved[run_id] += worst
        return worst

    def _journal(self, request, run_id, role, rhash, idx, messages_json, prefix, name, reserved) -> Optional[str]:
        """Append the row of this call, as interrupted, to the write-ahead journal before
        it is sent (a copy into a shared mapping); its real row settles it. None without a store."""
        if self.store is None:
            return None
        row = calllog.make_row(
            run_id=run_id,
            role=role,
            provider=prefix,
            model=name,
            request_hash=rhash,
            sample_index=idx,
            messages_json=messages_json,
            params=calllog.request_params(request, self.cfg.cache),
            error="interrupted",  # the text is written when the entry is reconciled
        )
        row["worst_case_usd"] = reserved or None  # known only when the run has a budget
        return journal_for(self.store).begin(row)

    def _release(self, run_id: Optional[str], amount: float) -> None:
        if amount:
            with _reserved_lock:
                _reserved[run_id] = max(0.0, _reserved[run_id] - amount)

    async def _call_provider(
        self,
        provider,
        prefix: str,
        name: str,
        request: LLMRequest,
        role,
        run_id,
        rhash: str,
        messages_json: str,
        indices: list[int],
    ) -> list[Sample]:
        cfg = self.cfg
        mode = cfg.cache
        attempts = cfg.max_retries + 1
        sem = _semaphore(request.model, cfg.concurrency_per_model)
        last: Optional[ProviderError] = None
        for attempt in range(attempts):
            reserved = await self._budget_check(request, prefix, name, run_id)
            wait_s = 0.0
            t0 = time.perf_counter()
            jkey: Optional[str] = None
            sent = False
            try:
                async with sem:
                    if cfg.requests_per_minute:
                        await _rpm_wait(request.model, cfg.requests_per_minute)
                    jkey = self._journal(
                        request, run_id, role, rhash, indices[0], messages_json, prefix, name, reserved
                    )
                    t0 = time.perf_counter()
                    sent = True
                    if getattr(provider, "timeout_exempt", False):  # e.g. in-process models
                        samples = await provider.complete(request)
                    else:
                        samples = await asyncio.wait_for(provider.complete(request), timeout=request.timeout_s)
                if len(samples) != request.n:
                    raise ProviderCallError(
                        f"{request.model}: provider {prefix} returned {len(samples)} samples for n={request.n}",
                        "this is a bug in the provider plugin",
                    )
            except asyncio.TimeoutError:
                err: ProviderError = ProviderCallError(
                    f"{request.model}: no answer within {request.timeout_s:g} s",
                    "raise llm.timeout_s (or the model's timeout_s) or check the provider",
                    retryable=True,
                )
            except AflowctlError as exc:
                if isinstance(exc, ProviderError):
                    err = exc
                else:
                    self._release(run_id, reserved)
                    raise
            except Exception as exc:  # noqa: BLE001 - a plugin's bug becomes one clear line
                from aflowctl.llm.providers._common import one_line

                err = ProviderCallError(
                    f"{request.model}: provider {prefix} raised {type(exc).__name__}: {one_line(str(exc))}",
                    "this is a bug in the provider or its plugin; see AFLOWCTL_DEBUG=1",
                )
            except BaseException as exc:
                self._release(run_id, reserved)
                if isinstance(exc, asyncio.CancelledError) and self.log is not None and sent:
                    # sent but never answered (Ctrl-C, the run stopped): it may be billed, so it is logged
                    self.log.enqueue(
                        [
                            call_row(
                                request,
                                run_id,
                                role,
                                rhash,
                                indices[0],
                                messages_json,
                                mode,
                                error="interrupted: the call was in flight when the run stopped",
                                latency=time.perf_counter() - t0,
                                provider=prefix,
                                model=name,
                                journal_key=jkey,
                            )
                        ]
                    )
                raise
            else:
                from aflowctl.logging import mask_secrets

                for idx, s in zip(indices, samples):
                    s.request_hash = rhash
                    s.sample_index = idx
                    s.text = mask_secrets(s.text)  # a server that echoes the key must not leak it
                if run_id is None:
                    _spent_no_run[id(self)] += sum(s.cost_usd or 0.0 for s in samples)
                if self.log is None:
                    self._release(run_id, reserved)
                    return samples
                rows = [
                    call_row(request, run_id, role, rhash, idx, messages_json, mode, s, journal_key=jkey)
                    for idx, s in zip(indices, samples)
                ]
                # queue the rows (their cost now counts as unflushed) before the reservation goes
                if calllog.deferred():
                    self.log.enqueue(rows)
                    self._release(run_id, reserved)
                else:
                    committed = self.log.submit(rows)
                    self._release(run_id, reserved)
                    await asyncio.shield(committed)
                return samples
            # failure
            self._release(run_id, reserved)
            last = err
            latency = time.perf_counter() - t0
            if self.log is not None:
                await self._write(
                    [
                        call_row(
                            request,
                            run_id,
                            role,
                            rhash,
                            indices[0],
                            messages_json,
                            mode,
                            error=str(err),
                            latency=latency,
                            provider=prefix,
                            model=name,
                            journal_key=jkey,
                        )
                    ]
                )
            retryable = getattr(err, "retryable", False)
            if not retryable or attempt == attempts - 1:
                break
            delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2**attempt)) * (0.5 + random.random())
            retry_after = getattr(err, "retry_after", None)
            if retry_after is not None:
                delay = max(delay, retry_after)  # the server knows best (parse caps it at 600 s)
            logger.info(
                "{}: attempt {}/{} failed ({}); retrying in {:.2f} s",
                request.model,
                attempt + 1,
                attempts,
                err.message,
                delay,
            )
            wait_s = delay
            await asyncio.sleep(wait_s)
        assert last is not None
        raise classify(last, attempts)


def classify(last: ProviderError, attempts: int) -> ProviderError:
    """The error to raise after the last attempt: credentials refused (401/403) ->
    :class:`ProviderAuthError`, the key variable unset -> :class:`MissingKeyError`,
    the server unreachable -> :class:`ProviderUnreachableError`, the model unknown
    (404) -> :class:`UnknownModelError` (all stop the run: ``errors.stops_run``);
    still failing after every retry (a 429 storm, 5xx) ->
    :class:`ProviderUnavailableError` (infrastructure: the task is retried, never
    scored); anything else (a bad request) as it is. Messages are redacted."""
    from aflowctl.logging import redact

    message = redact(last.message)
    hint = redact(last.hint) if last.hint else last.hint
    status = getattr(last, "status", None)
    if isinstance(last, (ProviderAuthError, ProviderUnreachableError, UnknownModelError)):
        return last
    if message.startswith("missing API key"):
        return MissingKeyError(message, hint)
    if status in (401, 403):
        return ProviderAuthError(message, hint or "check the API key variable (api_key_env) and the model's api_base")
    if status == 404:
        return UnknownModelError(message, hint or "check the model name and the server (api_base)")
    if status is None and "cannot reach" in message:
        return ProviderUnreachableError(message, hint or "check that the server (api_base) is running")
    if getattr(last, "retryable", False):
        if attempts > 1:
            message = f"{message} (gave up after {attempts} attempts)"
        return ProviderUnavailableError(message, hint or "check the server (api_base) and try again later")
    if message != last.message or hint != last.hint:
        return ProviderCallError(message, hint, status=status)
    return last
