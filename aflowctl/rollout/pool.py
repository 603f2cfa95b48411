"""The rollout pool: a durable task queue in the store, run by worker processes.

A task is a JSON payload handed to a worker function of the installed package
(``aflowctl.rollout.worker:evaluate`` by default), named by its import string.
Life of a task:

1. Its *key* (a hash of the worker name, the payload and an optional scope, not of
   the run id, database path or concurrency) is looked up in ``rollout_tasks``. A
   task that is already ``done`` is not run again: its stored result is returned.
   Otherwise a ``pending`` row is written (or reset) **before** submission.
2. When a worker starts it, the row becomes ``running`` and ``attempts`` grows.
3. Its result and ``status=done`` are committed in one transaction. A killed parent
   therefore loses at most the tasks that were running; re-running the same work
   finds the done ones.
4. A worker that dies (SIGKILL, out of memory, segfault) breaks a
   ``ProcessPoolExecutor``: the pool is shut down and rebuilt, the tasks that were
   running on the dead process are charged an attempt, and every unfinished task is
   resubmitted; after ``max_attempts`` a task is marked ``failed`` with the reason.
   A task that raises an :class:`~aflowctl.errors.AflowctlError` fails at once (a
   user's mistake does not fix itself); other exceptions are retried. A task
   running longer than ``task_timeout_s`` has its process killed and fails.

Processes are started with the ``spawn`` method (``fork`` deadlocks after torch
ran threads in the parent), once per pool: the pool serves many :meth:`run` calls
(every round of a search). :meth:`run` may be called from several threads at once
(K candidates evaluated in parallel share one pool).

``executor = "ray"`` runs the same tasks as Ray tasks (:mod:`.ray_backend`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from aflowctl.config import RolloutConfig
from aflowctl.errors import AflowctlError
from aflowctl.rollout.worker import DEFAULT_WORKER

POLL_S = 0.05
# What the evaluate worker needs, imported by each worker at start-up (not litellm:
# the LLM layer imports it lazily, only for models that go through it).
PRELOAD = ("aflowctl.llm.client", "aflowctl.workflow.api", "aflowctl.workflow.loader", "aflowctl.workflow.operators",
           "aflowctl.benchmarks", "aflowctl.rollout.evaluate")


class RolloutError(AflowctlError):
    """The rollout pool cannot run (workers fail to start, Ray unreachable, ...)."""


@dataclass
class TaskSpec:
    """One unit of work. ``payload`` defines it (and its key); ``context`` says where
    to log and how fast to go (run id, db path, concurrency) and is not hashed."""

    payload: dict
    context: dict = field(default_factory=dict)
    worker: str = DEFAULT_WORKER
    label: str = ""


@dataclass
class TaskOutcome:
    key: str
    task_id: int
    status: str  # done | failed
    result: Any = None
    error: Optional[str] = None
    attempts: int = 0
    reused: bool = False  # done by an earlier run() (or an earlier, killed process)
    label: str = ""
    error_type: Optional[str] = None  # the exception's class name, for failed tasks


@dataclass
class PoolProgress:
    """Handed to the ``progress`` callback after every change."""

    total: int
    done: int
    failed: int
    running: int
    reused: int
    last: Optional[TaskOutcome] = None


def task_key(spec: TaskSpec, scope: Optional[str] = None) -> str:
    blob = json.dumps({"worker": spec.worker, "payload": spec.payload, "scope": scope}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _signal_name(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------- backends


@dataclass
class _Handle:
    key: str
    gen: int
    fut: Any
    submitted: float
    ticket: str = ""  # unique per submission: start messages name it


@dataclass
class _Died:
    reason: str
    charge: bool  # counts as an attempt of this task
    final: bool = False  # no retry (timeout)


class _ProcessBackend:
    """A spawn ``ProcessPoolExecutor`` rebuilt after a worker dies."""

    name = "process"

    def __init__(self, cfg: RolloutConfig, options: dict):
        self.cfg = cfg
        self.options = options
        self.ctx = mp.get_context("spawn")
        self.lock = threading.RLock()
        self.gen = 0
        self.executor: Optional[cf.ProcessPoolExecutor] = None
        self.queue: Any = None
        self.started: dict[str, tuple[int, int, float]] = {}  # ticket -> (gen, pid, t)
        self.tickets = itertools.count()
        self.ready: set[int] = set()
        self.dead: dict[int, dict[int, Optional[int]]] = {}  # gen -> {pid: exitcode}
        self.killed: dict[tuple[int, str], str] = {}  # (gen, ticket) -> reason
        self.rebuilds = 0

    def _new_executor(self) -> None:
        from aflowctl.rollout.worker import init_worker

        self.options = {**self.options, "parent_pid": os.getpid()}
        self.queue = self.ctx.SimpleQueue()
        self.ready = set()
        self.executor = cf.ProcessPoolExecutor(
            max_workers=self.cfg.workers, mp_context=self.ctx, initializer=init_worker, initargs=(self.options, self.queue)
        )

    def start(self, timeout_s: float = 300.0) -> None:
        """Spawn every worker process and wait until each has initialised."""
        from aflowctl.rollout.worker import selftest

        with self.lock:
            if self.executor is None:
                self._new_executor()
            futs = [self.executor.submit(selftest, {}) for _ in range(self.cfg.workers)]
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if len(self.ready) >= self.cfg.workers or all(f.done() for f in futs):
                break
            if time.monotonic() > deadline:
                raise RolloutError(f"rollout workers did not start within {timeout_s:g} s", "check the machine's load and memory")
            time.sleep(0.01)
        for f in futs:
            try:
                f.result()
            except BrokenProcessPool:
                raise RolloutError("a rollout worker died while starting", "run with -vv to see the worker's log") from None
            except Exception as exc:  # an initializer failure breaks the pool too
                raise RolloutError(f"rollout workers failed to start: {exc}", "run aflowctl doctor") from None

    def submit(self, worker: str, key: str, payload: dict) -> _Handle:
        from aflowctl.rollout.worker import run_task

        ticket = f"{key}#{next(self.tickets)}"
        with self.lock:
            if self.executor is None:
                self._new_executor()
            gen = self.gen
            try:
                fut = self.executor.submit(run_task, worker, ticket, payload, self.options)
            except BrokenProcessPool:
                self._rebuild(gen)
                gen = self.gen
                fut = self.executor.submit(run_task, worker, ticket, payload, self.options)
        return _Handle(key, gen, fut, time.monotonic(), ticket)

    def poll(self) -> None:
        """Read start messages from the workers."""
        with self.lock:
            q = self.queue
            if q is None:
                return
            while not q.empty():
                key, pid, t = q.get()
                if key == "ready":
                    self.ready.add(pid)
                else:
                    self.started[key] = (self.gen, pid, t)

    def started_info(self, h: _Handle) -> Optional[tuple[int, float]]:
        info = self.started.get(h.ticket)
        if info is None or info[0] != h.gen:
            return None
        return info[1], info[2]

    def wait(self, handles: list[_Handle], timeout: float) -> set[int]:
        futs = {h.fut: i for i, h in enumerate(handles)}
        done, _ = cf.wait(list(futs), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return {futs[f] for f in done}

    def outcome(self, h: _Handle) -> Any:
        """The envelope (a JSON string), or a :class:`_Died`."""
        try:
            res = h.fut.result()
            self.started.pop(h.ticket, None)
            return res
        except BrokenProcessPool:
            pass
        except cf.CancelledError:
            return _Died("cancelled", charge=False)
        with self.lock:
            self._rebuild(h.gen)
            killed = self.killed.pop((h.gen, h.ticket), None)
            if killed:
                return _Died(killed, charge=True, final=True)
            info = self.started.pop(h.ticket, None)
            if info is None or info[0] != h.gen:
                return _Died("requeued", charge=False)  # never started: not its fault
            pid = info[1]
            dead = self.dead.get(h.gen, {})
            culprits = {p: c for p, c in dead.items() if c != -signal.SIGTERM}
            if pid in culprits:
                return _Died(f"worker process died ({_signal_name(culprits[pid])})", charge=True)
            if not culprits:  # cannot tell which one died: charge every running task
                return _Died("worker process died", charge=True)
            return _Died("requeued", charge=False)

    def _rebuild(self, gen: int) -> None:
        """Shut down a broken executor (once per generation) and start a new one."""
        with self.lock:
            if gen != self.gen or self.executor is None:
                return
            self.poll()  # start messages written before the death
            procs = dict(getattr(self.executor, "_processes", None) or {})
            self.executor.shutdown(wait=True, cancel_futures=True)
            for p in procs.values():
                p.join(timeout=5)
            self.dead[gen] = {pid: p.exitcode for pid, p in procs.items()}
            self.gen += 1
            self.rebuilds += 1
            self._new_executor()

    def kill(self, h: _Handle, reason: str) -> None:
        """Kill the process running ``h`` (task timeout); the pool then rebuilds."""
        info = self.started_info(h)
        if info is None:
            return
        with self.lock:
            if h.gen != self.gen:
                return
            self.killed[(h.gen, h.ticket)] = reason
            try:
                os.kill(info[0], signal.SIGKILL)
            except ProcessLookupError:
                pass

    def worker_pids(self) -> list[int]:
        with self.lock:
            procs = getattr(self.executor, "_processes", None) or {}
            return list(procs)

    def close(self, kill: bool = False) -> None:
        """Stop the workers; ``kill`` ends running tasks at once (Ctrl-C, an error)
        instead of waiting for them: they are stored as unfinished and rerun later."""
        with self.lock:
            if self.executor is not None:
                if kill:
                    for p in list((getattr(self.executor, "_processes", None) or {}).values()):
                        try:
                            p.terminate()
                        except Exception:  # noqa: BLE001 - already gone
                            pass
                self.executor.shutdown(wait=True, cancel_futures=True)
                self.executor = None
            self.queue = None


# --------------------------------------------------------------------------- the pool


class RolloutPool:
    """Runs :class:`TaskSpec` lists durably; start once, :meth:`run` many times.

    ``options`` go to every worker's initializer (``log_level``, ``hf_offline``,
    ``env``). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, store: Any, rollout_cfg: Optional[RolloutConfig] = None, *, options: Optional[dict] = None):
        self.store = store
        self.cfg = rollout_cfg or RolloutConfig()
        self.options = dict(options or {})
        self.options.setdefault("log_level", "WARNING")
        self.options.setdefault("preload", list(PRELOAD))
        if "load_plugins" not in self.options:
            env = os.environ.get("AFLOWCTL_LOAD_PLUGINS")
            if env is not None:
                self.options["load_plugins"] = env
            elif getattr(sys, "_called_from_test", False):
                self.options["load_plugins"] = ""
        self._backend: Any = None
        self.startup_s: Optional[float] = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()

    # -- life cycle

    @property
    def backend(self) -> Any:
        with self._lock:
            if self._backend is None:
                if self.cfg.executor == "ray":
                    from aflowctl.rollout.ray_backend import RayBackend

                    self._backend = RayBackend(self.cfg, self.options)
                else:
                    self._backend = _ProcessBackend(self.cfg, self.options)
            return self._backend

    def start(self) -> float:
        """Start the workers (idempotent, thread-safe); returns the start-up time in seconds."""
        with self._start_lock:
            if self.startup_s is None:
                t0 = time.perf_counter()
                self.backend.start()
                self.startup_s = time.perf_counter() - t0
            return self.startup_s

    def close(self, kill: bool = False) -> None:
        """Stop the workers. ``kill=True`` (used when leaving on an exception or
        Ctrl-C) does not wait for running tasks: they stay unfinished in the store."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close(kill=kill)
        self.startup_s = None

    def __enter__(self) -> "RolloutPool":
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(kill=exc_type is not None)

    @property
    def rebuilds(self) -> int:
        return getattr(self._backend, "rebuilds", 0)

    # -- the store

    def _prepare(self, specs: list[TaskSpec], keys: list[str], run_id: Optional[str]) -> dict[str, Any]:
        """Insert missing rows as pending (reset unfinished ones); return rows by key."""
        from sqlmodel import select

        from aflowctl.store import RolloutTask, utcnow

        def txn(session: Any) -> dict[str, Any]:
            rows: dict[str, Any] = {}
            unique = list(dict.fromkeys(keys))
            for i in range(0, len(unique), 500):
                chunk = unique[i : i + 500]
                for row in session.exec(select(RolloutTask).where(RolloutTask.key.in_(chunk))).all():
                    rows[row.key] = row
            now = utcnow()
            for spec, key in zip(specs, keys):
                row = rows.get(key)
                if row is None:
                    row = RolloutTask(
                        run_id=run_id, key=key, payload_json=json.dumps({"worker": spec.worker, **spec.payload, "context": spec.context}, default=str),
                        status="pending", created_at=now,
                    )
                    session.add(row)
                    rows[key] = row
                elif row.status != "done":
                    row.status, row.error = "pending", None
                    session.add(row)
            session.flush()
            return {k: (r.id, r.status, r.result_json, r.attempts) for k, r in rows.items()}

        return self.store.transact(txn)

    def _mark_running(self, task_id: int) -> int:
        from aflowctl.store import RolloutTask, utcnow

        def txn(session: Any) -> int:
            row = session.get(RolloutTask, task_id)
            row.status = "running"
            row.attempts += 1
            row.started_at = utcnow()
            session.add(row)
            return row.attempts

        return self.store.transact(txn)

    def _finish(self, task_id: int, status: str, result_json: Optional[str], error: Optional[str]) -> None:
        from aflowctl.store import RolloutTask, utcnow

        def txn(session: Any) -> None:
            row = session.get(RolloutTask, task_id)
            if row.status == "done":  # the same work finished elsewhere first
                return
            row.status, row.result_json, row.error = status, result_json, error
            row.finished_at = utcnow()
            session.add(row)

        self.store.transact(txn)

    def _requeue(self, task_id: int, error: Optional[str]) -> None:
        from aflowctl.store import RolloutTask

        def txn(session: Any) -> None:
            row = session.get(RolloutTask, task_id)
            if row.status != "done":
                row.status, row.error = "pending", error
                session.add(row)

        self.store.transact(txn)

    def _mark_unfinished(self, task_ids: list[int], reason: str) -> None:
        from sqlmodel import select

        from aflowctl.store import RolloutTask

        def txn(session: Any) -> None:
            for row in session.exec(select(RolloutTask).where(RolloutTask.id.in_(task_ids))).all():
                if row.status != "done":
                    row.status, row.error = "pending", reason
                    session.add(row)

        if task_ids:
            self.store.transact(txn)

    # -- running

    def run(
        self,
        specs: list[TaskSpec],
        *,
        run_id: Optional[str] = None,
        scope: Optional[str] = None,
        progress: Optional[Callable[[PoolProgress], None]] = None,
    ) -> list[TaskOutcome]:
        """Run ``specs`` (skipping those already done) and return their outcomes in order.

        Tasks that fail are returned with ``status="failed"``; this method raises only
        when the pool itself cannot work. ``scope`` is mixed into the keys: work done
        under another scope is not reused (``None``: reuse any run's identical work).
        """
        specs = list(specs)
        keys = [task_key(s, scope) for s in specs]
        rows = self._prepare(specs, keys, run_id)
        outcomes: dict[str, TaskOutcome] = {}
        todo: dict[str, TaskSpec] = {}
        for spec, key in zip(specs, keys):
            task_id, status, result_json, attempts = rows[key]
            if status == "done" and key not in outcomes:
                outcomes[key] = TaskOutcome(key, task_id, "done", _result_of(result_json), None, attempts, True, spec.label)
            elif key not in outcomes:
                todo.setdefault(key, spec)
        reused = len(outcomes)
        total = len(dict.fromkeys(keys))
        if todo:
            self.start()
            try:
                self._run_loop(todo, rows, outcomes, progress, total, reused)
            except BaseException as exc:  # Ctrl-C, or the pool itself broke: record where we stand
                unfinished = [rows[k][0] for k in todo if k not in outcomes]
                try:
                    self._mark_unfinished(unfinished, f"interrupted ({type(exc).__name__})")
                except Exception:  # noqa: BLE001 - never hide the original exception
                    pass
                raise
        elif progress:
            progress(PoolProgress(total, total, 0, 0, reused))
        return [outcomes[k] for k in keys]

    def _run_loop(self, todo: dict[str, TaskSpec], rows: dict, outcomes: dict, progress: Any, total: int, reused: int) -> None:
        backend = self.backend
        max_attempts = self.cfg.max_attempts
        charged: dict[str, int] = {k: 0 for k in todo}
        handles: dict[str, _Handle] = {}
        marked: set[str] = set()  # tickets (submissions) already marked running
        last_err: dict[str, str] = {}
        failed = 0

        def report(last: Optional[TaskOutcome] = None) -> None:
            if progress is not None:
                done = sum(1 for o in outcomes.values() if o.status == "done")
                progress(PoolProgress(total, done, failed, len(marked_live()), reused, last))

        def marked_live() -> list[str]:
            return [k for k, h in handles.items() if h.ticket in marked]

        def payload_of(key: str) -> dict:
            spec = todo[key]
            return {**spec.payload, **spec.context}

        def submit(key: str) -> None:
            handles[key] = backend.submit(todo[key].worker, key, payload_of(key))

        for key in todo:
            submit(key)
        report()
        while handles:
            hs = list(handles.values())
            finished = backend.wait(hs, POLL_S)
            backend.poll()
            now = time.time()
            for h in hs:  # newly started tasks
                info = backend.started_info(h)
                if info is not None and h.ticket not in marked:
                    marked.add(h.ticket)
                    self._mark_running(rows[h.key][0])
                    report()
                if info is not None and now - info[1] > self.cfg.task_timeout_s:
                    backend.kill(h, f"timed out after {self.cfg.task_timeout_s:g} s")
            for i in sorted(finished):
                h = hs[i]
                key = h.key
                task_id = rows[key][0]
                res = backend.outcome(h)
                del handles[key]
                if h.ticket not in marked and not isinstance(res, _Died):
                    marked.add(h.ticket)
                    self._mark_running(task_id)
                if isinstance(res, _Died):
                    if not res.charge:
                        submit(key)
                        continue
                    charged[key] += 1
                    last_err[key] = res.reason
                    if res.final or charged[key] >= max_attempts:
                        err = res.reason if res.final else f"{res.reason}; gave up after {charged[key]} attempts"
                        self._finish(task_id, "failed", None, err)
                        failed += 1
                        outcomes[key] = TaskOutcome(key, task_id, "failed", None, err, charged[key], False, todo[key].label)
                        report(outcomes[key])
                    else:
                        self._requeue(task_id, res.reason)
                        submit(key)
                    continue
                env = json.loads(res)
                if env.get("ok"):
                    result_json = json.dumps(env.get("result"))
                    self._finish(task_id, "done", result_json, None)
                    outcomes[key] = TaskOutcome(key, task_id, "done", env.get("result"), None, charged[key] + 1, False, todo[key].label)
                    report(outcomes[key])
                    continue
                charged[key] += 1
                err = env.get("error") or "unknown error"
                if env.get("retryable") and charged[key] < max_attempts:
                    self._requeue(task_id, err)
                    submit(key)
                    continue
                if env.get("retryable"):
                    err = f"{err}; gave up after {charged[key]} attempts"
                self._finish(task_id, "failed", None, err)
                failed += 1
                outcomes[key] = TaskOutcome(key, task_id, "failed", None, err, charged[key], False, todo[key].label,
                                            env.get("error_type"))
                report(outcomes[key])


def _result_of(result_json: Optional[str]) -> Any:
    return json.loads(result_json) if result_json else None
