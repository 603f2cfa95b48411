"""The ``local`` provider: a causal LM run in this process with transformers.

``local/smollm2`` and ``local/default`` mean the embedded SmolLM2-135M-Instruct (or
``llm.local_model`` when set); ``local/<path>`` a Hugging Face folder or a ``.gguf``
file; ``local/<org>/<name>`` a hub id (only when online). The model is loaded once per
process, lazily, on first use.

Concurrent requests (asyncio tasks of one event loop) arriving within
``llm.local_batch_window_ms`` are gathered into one left-padded batch of up to
``llm.local_max_batch`` sequences: one forward pass per token for all of them.
Generation runs on one worker thread per model so the event loop stays free.
Samples carry token ids and log-probs (for the trainer); the cost is 0.0 (known:
free).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from aflowctl.llm.types import LLMRequest, ProviderCallError, Sample

DEFAULT_MAX_NEW_TOKENS = 512

# Sizes of the most recent batches run by this process (for tests and benchmarks).
BATCH_SIZES: collections.deque[int] = collections.deque(maxlen=1000)


class _Engine:
    """One loaded model and the single thread that runs it."""

    def __init__(self, path):
        self.path = path
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="aflowctl-local")
        self._model = None
        self._tok = None
        self._lock = threading.Lock()

    def _ensure(self):
        with self._lock:
            if self._model is None:
                from aflowctl.llm import local_model

                self._model, self._tok = local_model.load(self.path)
        return self._model, self._tok

    def run_batch(self, prompts, kwargs) -> list:
        from aflowctl.llm import local_model

        model, tok = self._ensure()
        return local_model.generate_batch(model, tok, prompts, **kwargs)


_engines: dict[str, _Engine] = {}
_engines_lock = threading.Lock()


def _engine_for(spec: Optional[str]) -> _Engine:
    from aflowctl.llm import local_model

    with _engines_lock:
        key = spec or ""
        eng = _engines.get(key)
        if eng is None:
            path = local_model.resolve(spec)
            eng = _engines.get(str(path))
            if eng is None:
                eng = _Engine(path)
                _engines[str(path)] = eng
            _engines[key] = eng
        return eng


@dataclass
class _Pending:
    prompt: list
    seed: Optional[int]
    max_new: int
    stop: Optional[list]
    future: asyncio.Future


class _Batcher:
    """Gathers rows of one event loop for one engine and sampling setting into batches."""

    def __init__(self, engine: _Engine, window_s: float, max_batch: int):
        self.engine = engine
        self.window_s = window_s
        self.max_batch = max_batch
        self.queues: dict[tuple, list[_Pending]] = {}
        self.wakeups: dict[tuple, asyncio.Event] = {}
        self.runners: dict[tuple, asyncio.Task] = {}

    async def submit(self, key: tuple, rows: list[_Pending]) -> None:
        q = self.queues.setdefault(key, [])
        q.extend(rows)
        ev = self.wakeups.setdefault(key, asyncio.Event())
        ev.set()
        if key not in self.runners or self.runners[key].done():
            self.runners[key] = asyncio.ensure_future(self._run(key))

    async def _run(self, key: tuple) -> None:
        temperature, top_p = key
        loop = asyncio.get_running_loop()
        while self.queues.get(key):
            if len(self.queues[key]) < self.max_batch and self.window_s > 0:
                deadline = loop.time() + self.window_s
                while len(self.queues[key]) < self.max_batch:
                    ev = self.wakeups[key]
                    ev.clear()
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(ev.wait(), left)
                    except asyncio.TimeoutError:
                        break
            q = self.queues[key]
            batch, self.queues[key] = q[: self.max_batch], q[self.max_batch :]
            batch = [p for p in batch if not p.future.done()]  # cancelled callers
            if not batch:
                continue
            kwargs = {
                "temperature": temperature,
                "top_p": top_p,
                "max_new_tokens": [p.max_new for p in batch],
                "seed": [p.seed for p in batch],
                "stop": [p.stop for p in batch],
            }
            t0 = time.perf_counter()
            BATCH_SIZES.append(len(batch))
            try:
                results = await loop.run_in_executor(
                    self.engine.executor, self.engine.run_batch, [p.prompt for p in batch], kwargs
                )
            except Exception as exc:  # noqa: BLE001 - hand the error to every caller of the batch
                err = (
                    exc
                    if isinstance(exc, ProviderCallError)
                    else ProviderCallError(
                        f"local model failed: {type(exc).__name__}: {exc}", "see AFLOWCTL_DEBUG=1 for details"
                    )
                )
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            latency = time.perf_counter() - t0
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result((r, latency, len(batch)))


class LocalProvider:
    name = "local"
    # Generation runs in this process and cannot be cut short by cancelling: no
    # per-call timeout (a slow CPU is not a failing server).
    timeout_exempt = True

    def __init__(self, local_model: Optional[str] = None, window_ms: float = 20.0, max_batch: int = 8):
        self.local_model = local_model
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._batchers: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def bind(self, store, llm_cfg) -> LocalProvider:
        """The provider as configured by ``llm_cfg`` (shares loaded models process-wide)."""
        if llm_cfg is None:
            return self
        want = (llm_cfg.local_model, llm_cfg.local_batch_window_ms / 1000.0, llm_cfg.local_max_batch)
        if want == (self.local_model, self.window_s, self.max_batch):
            return self
        key = ("bound",) + want
        with _engines_lock:
            bound = _bound.get(key)
            if bound is None:
                bound = _bound[key] = LocalProvider(want[0], want[1] * 1000.0, want[2])
        return bound

    def worst_case_cost(self, request: LLMRequest) -> float:
        return 0.0

    def spec_for(self, model_name: str) -> Optional[str]:
        if model_name.lower() in ("smollm2", "default"):
            return self.local_model  # None -> embedded
        return model_name

    def _batcher(self, spec: Optional[str]) -> _Batcher:
        loop = asyncio.get_running_loop()
        with self._lock:
            per_loop = self._batchers.setdefault(loop, {})
            b = per_loop.get(spec)
            if b is None:
                b = per_loop[spec] = _Batcher(_engine_for(spec), self.window_s, self.max_batch)
            return b

    async def complete(self, request: LLMRequest) -> list[Sample]:
        spec = self.spec_for(request.model_name)
        loop = asyncio.get_running_loop()
        # resolve (and convert a GGUF, once) off the event loop
        await loop.run_in_executor(None, _engine_for, spec)
        batcher = self._batcher(spec)
        base_seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(4), "little")
        max_new = request.max_tokens or DEFAULT_MAX_NEW_TOKENS
        rows = [
            _Pending(
                request.messages,
                base_seed + i,
                max_new,
                list(request.stop) if request.stop else None,
                loop.create_future(),
            )
            for i in range(request.n)
        ]
        temperature = float(request.temperature)
        key = (temperature, float(request.top_p) if temperature > 0 else 1.0)
        await batcher.submit(key, rows)
        try:
            done = await asyncio.gather(*(r.future for r in rows))
        except asyncio.CancelledError:
            for r in rows:
                r.future.cancel()
            raise
        return [
            Sample(
                text=res.text,
                finish_reason=res.finish_reason,
                prompt_tokens=len(res.prompt_ids),
                completion_tokens=len(res.token_ids),
                cost_usd=0.0,
                latency_s=latency,
                provider="local",
                model=request.model_name,
                token_ids=list(res.token_ids),
                logprobs=list(res.logprobs),
            )
            for res, latency, _size in done
        ]


_bound: dict[tuple, LocalProvider] = {}
