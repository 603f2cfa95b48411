"""The evaluate worker (``aflowctl.rollout.worker:evaluate``, re-exported there): runs
one workflow on a batch of (repeat, problem) items inside a worker process, problems
concurrently on the process's event loop, each under a wall-clock limit (asyncio
cancellation, and a SIGALRM watchdog for busy synchronous code)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Optional

from aflowctl.rollout.envelope import error_text

PREDICTION_MAX_CHARS = 2000


def evaluate(payload: dict) -> dict:
    """Evaluate a workflow on a batch of items; see :mod:`aflowctl.rollout.evaluate`.

    Payload keys: ``graph``, ``prompt`` (the workflow sources), ``name``, ``dataset``,
    ``split``, ``items`` (a list of ``[repeat, index]``), ``problems`` (one
    :func:`~aflowctl.workflow.problem.worker_view` per index: the inputs, never the
    answer; the worker reads no benchmark file), ``executor`` (a ModelConfig
    dict), ``seed``, ``code_timeout_s``, ``code_memory_mb``, and the context
    ``llm`` (an LLMConfig dict), ``run_id``, ``db_path`` (where the executor's calls
    are logged), ``concurrency`` (problems at once), ``problem_timeout_s``.

    Returns ``{"items": [{repeat, index, id, answer, prediction, cost_usd, tokens,
    error, error_type, duration_s}, ...]}``: ``answer`` is the workflow's answer as
    plain text, scored by the parent (:mod:`aflowctl.rollout.evaluate`), never here.
    A workflow exception, or its wall-clock limit ``problem_timeout_s`` (awaiting
    code by ``asyncio.wait_for``; a busy loop of synchronous code by a SIGALRM
    watchdog that raises into it), gives that problem an error (score 0); it does
    not fail the task. A workflow that cannot be compiled at all raises a
    WorkflowError, a budget stop a BudgetExceeded, an infrastructure failure
    (gateway, provider after every retry, credentials) its own error: the task fails.
    """
    return run_async(_evaluate_async(payload))


_loop: Optional[asyncio.AbstractEventLoop] = None


def run_async(coro: Any) -> Any:
    """Run ``coro`` on this process's event loop, created once and kept between tasks:
    what the LLM layer keeps per loop (HTTP connection pools, routers, concurrency
    limits) then serves every task of the worker instead of being rebuilt each time."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop.run_until_complete(coro)


def _repeat_seed(seed: int, repeat: int) -> int:
    """The executor's sampling seed for one repeat (repeats must not share cached answers)."""
    return int(seed) * 1000 + int(repeat)


async def _evaluate_async(payload: dict) -> dict:
    from aflowctl.errors import BenchmarkError

    problems = {int(v["index"]): v for v in payload.get("problems") or ()}
    items = [(int(r), int(i)) for r, i in payload["items"]]
    for _, idx in items:
        if idx not in problems:
            raise BenchmarkError(
                f"problem {idx} of {payload['dataset']}/{payload['split']} was not sent with the task",
                "evaluate through aflowctl.rollout.evaluate.evaluate_workflow, which sends each problem's inputs",
            )
    factory = _WorkflowFactory(payload)  # compiles once: bad code fails the task here
    sem = asyncio.Semaphore(max(1, int(payload.get("concurrency") or 1)))
    timeout = payload.get("problem_timeout_s")
    from aflowctl.llm import cache as llm_cache
    from aflowctl.llm.router import deferred_logging, flush_logs

    async def one(repeat: int, idx: int) -> dict:
        async with sem:
            return await _run_problem(factory, problems[idx], repeat, timeout)

    # The executor's calls are logged in the background; the task's result counts as
    # done only after they are committed (flush below), so a kill loses only calls of
    # tasks that are not done, which a resume runs again. Cached answers committed
    # before this task started (other processes, earlier tasks) are all seen.
    from aflowctl.llm import gateway

    flush = gateway.flush if gateway.connected() else flush_logs  # the parent logs the calls made through it
    llm_cache.invalidate_indexes()
    with deferred_logging():
        tasks = [asyncio.ensure_future(one(r, i)) for r, i in items]
    try:
        with _Watchdog():
            results = await asyncio.gather(*tasks)
    except BaseException:
        # The loop outlives this task: leave nothing of it running (budget stop, cancel).
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:  # the calls made so far are logged (and count against the budget)
            await asyncio.shield(flush())
        except Exception:  # noqa: BLE001 - the task's own error is the one to report
            pass
        raise
    await flush()
    return {"items": list(results)}


_class_cache: dict[tuple[str, str], Any] = {}


class _WorkflowFactory:
    """Compiles the workflow once per task (once per process for the same sources) and
    builds one instance per (repeat, problem)."""

    def __init__(self, payload: dict):
        from aflowctl.workflow.loader import WorkflowSource, compile_sources

        self.payload = payload
        src = WorkflowSource(graph=payload["graph"], prompt=payload.get("prompt") or "")
        key = (src.graph, src.prompt)
        if key not in _class_cache:
            if len(_class_cache) > 64:
                _class_cache.clear()
            _class_cache[key] = compile_sources(src, payload.get("name") or "workflow")
        self.cls = _class_cache[key]
        self._configs: dict[int, dict] = {}

    def llm_config(self, repeat: int) -> dict:
        if repeat not in self._configs:
            from aflowctl.workflow.api import executor_config

            p = self.payload
            self._configs[repeat] = executor_config(
                p["executor"],
                llm_cfg=p.get("llm") or {},
                run_id=p.get("run_id"),
                db_path=p.get("db_path"),
                seed=_repeat_seed(p.get("seed", 0), repeat),
                dataset=p["dataset"],
                code_timeout_s=float(p.get("code_timeout_s", 10.0)),
                code_memory_mb=int(p.get("code_memory_mb", 1024)),
                gateway=p.get("gateway_client"),
            )
        return self._configs[repeat]

    def build(self, repeat: int) -> Any:
        return self.cls(
            name=self.payload.get("name") or self.payload["dataset"],
            llm_config=self.llm_config(repeat),
            dataset=self.payload["dataset"],
        )


def _fatal(exc: BaseException) -> bool:
    """Errors that must not score the problem 0: the budget, and infrastructure (the
    gateway, a provider after every retry, credentials): the task fails instead
    (retried when retrying can help; else the run stops)."""
    from aflowctl.errors import BudgetExceeded, InfrastructureError, stops_run

    return isinstance(exc, (BudgetExceeded, InfrastructureError)) or stops_run(exc)


class ProblemTimeout(Exception):
    """Raised into a problem's own code when its wall-clock limit has passed (even
    inside a busy loop of synchronous code, by the SIGALRM watchdog)."""


_deadlines: dict[Any, float] = {}  # asyncio task -> monotonic deadline of the problem it runs
WATCHDOG_INTERVAL_S = 0.5


def _watchdog(signum: int, frame: Any) -> None:
    """SIGALRM handler: runs in the main thread between two bytecodes of whatever runs
    there; if that is a problem whose deadline passed, its code gets ProblemTimeout."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return
    deadline = _deadlines.get(task)
    if deadline is not None and time.monotonic() > deadline:
        _deadlines.pop(task, None)
        raise ProblemTimeout()


def _expire(task: Any, expired: list) -> None:
    expired.append(True)
    task.cancel()


class _Watchdog:
    """Arms the interval timer while a task's problems run (main thread only)."""

    def __enter__(self) -> _Watchdog:
        import threading

        self.armed = threading.current_thread() is threading.main_thread()
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, _watchdog)
            signal.setitimer(signal.ITIMER_REAL, WATCHDOG_INTERVAL_S, WATCHDOG_INTERVAL_S)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, self.previous)


#: the longest answer sent back to the parent for scoring (the stored prediction is shorter)
ANSWER_MAX_CHARS = 200_000


def answer_text(prediction: Any) -> Optional[str]:
    """A workflow's answer as plain text: the parent scores text, never an object the
    workflow made (one whose ``__eq__`` is always true would otherwise pass)."""
    if prediction is None:
        return None
    if isinstance(prediction, (int, float, bool)):
        return str(prediction)
    text = str.__str__(prediction) if isinstance(prediction, str) else repr(prediction)
    return text[:ANSWER_MAX_CHARS]


async def _run_problem(factory: _WorkflowFactory, view: dict, repeat: int, timeout: Optional[float]) -> dict:
    """One problem of the task, from its :func:`~aflowctl.workflow.problem.worker_view`."""
    from aflowctl.workflow.api import problem_context

    t0 = time.perf_counter()
    out: dict = {
        "repeat": repeat,
        "index": int(view["index"]),
        "id": view["id"],
        "score": 0.0,
        "prediction": None,
        "answer": None,
        "cost_usd": None,
        "tokens": 0,
        "error": None,
    }
    task = asyncio.current_task()
    expired: list = []
    timer = None
    if timeout:  # awaiting code: the task is cancelled at the deadline; busy code: the SIGALRM watchdog
        _deadlines[task] = time.monotonic() + float(timeout)
        timer = asyncio.get_running_loop().call_later(float(timeout), _expire, task, expired)
    seen = {"id": view["id"], "inputs": list(view["inputs"])}
    with problem_context(seen, public_tests=list(view["public_tests"]), dataset=factory.payload["dataset"]) as scope:
        try:
            wf = factory.build(repeat)
            try:  # the workflow runs in this very task, so both mechanisms can find it
                answer = await wf(*tuple(view["inputs"]))
            except asyncio.CancelledError:
                if not expired:
                    raise
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                raise ProblemTimeout() from None
            prediction = answer[0] if isinstance(answer, tuple) and len(answer) >= 1 else answer
            text = answer_text(prediction)
            out["answer"] = text  # scored by the parent
            out["prediction"] = _truncate(text)
        except (asyncio.TimeoutError, ProblemTimeout):
            out["error"] = f"problem timed out after {timeout:g} s"
            out["error_type"] = "ProblemTimeout"
        except Exception as exc:  # noqa: BLE001 - one problem's failure is that problem's score 0
            if _fatal(exc):
                raise
            out["error"] = error_text(exc)
            out["error_type"] = type(exc).__name__  # the caller tells the workflow's faults from infrastructure
        except BaseException as exc:  # e.g. SystemExit from workflow code: still only this problem's failure
            if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                raise
            out["error"] = error_text(exc)
            out["error_type"] = type(exc).__name__
        finally:
            _deadlines.pop(task, None)
            if timer is not None:
                timer.cancel()
    # Cost is unknown (None) only when calls were made and none had a known price.
    known = scope.usage.known_cost
    out["cost_usd"] = None if known is None else round(known, 10)
    out["tokens"] = scope.tokens
    out["calls"] = scope.calls
    out["duration_s"] = round(time.perf_counter() - t0, 4)
    return out


def _truncate(prediction: Any) -> Any:
    if prediction is None:
        return None
    text = prediction if isinstance(prediction, str) else repr(prediction)
    return text if len(text) <= PREDICTION_MAX_CHARS else text[:PREDICTION_MAX_CHARS] + "...[truncated]"
