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

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from aflowctl.config import RolloutConfig
from aflowctl.rollout.backend import Backend, Died, Handle, ProcessBackend, RolloutError
from aflowctl.rollout.worker import DEFAULT_WORKER

__all__ = ["PoolProgress", "RolloutError", "RolloutPool", "TaskOutcome", "TaskSpec", "task_key"]

POLL_S = 0.05
# What the evaluate worker needs, imported by each worker at start-up (not litellm:
# the LLM layer imports it lazily, only for models that go through it).
PRELOAD = (
    "aflowctl.llm.client",
    "aflowctl.workflow.api",
    "aflowctl.workflow.loader",
    "aflowctl.workflow.operators",
    "aflowctl.benchmarks",
    "aflowctl.rollout.evaluate",
)


@dataclass
class TaskSpec:
    """One unit of work. ``payload`` defines it (and its key); ``context`` says where
    to log and how fast to go (run id, db path, concurrency) and is not hashed;
    ``attached`` (the problems' inputs) is sent with them, neither hashed nor stored."""

    payload: dict
    context: dict = field(default_factory=dict)
    worker: str = DEFAULT_WORKER
    label: str = ""
    attached: dict = field(default_factory=dict)


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
    envelope: Optional[dict] = None  # the worker's error envelope (error_class, message, hint), for failed tasks

    def exception(self) -> Exception:
        """The error of a failed task, rebuilt as its own class when that is an
        :class:`~aflowctl.errors.AflowctlError` known in this process (see
        :func:`aflowctl.rollout.backend.rebuild_error`); else a :class:`RolloutError`."""
        from aflowctl.rollout.backend import rebuild_error

        return rebuild_error(self.envelope or {}, self.error or "unknown error")


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
    blob = json.dumps(
        {"worker": spec.worker, "payload": spec.payload, "scope": scope},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- the pool


class RolloutPool:
    """Runs :class:`TaskSpec` lists durably; start once, :meth:`run` many times.

    ``options`` go to every worker's initializer (``log_level``, ``hf_offline``,
    ``env``). Use as a context manager, or call :meth:`close`.

    The pool also runs the run's LLM gateway
    (:mod:`aflowctl.llm.gateway`, ``options["use_gateway"]``, default true): workers
    start without provider keys and make every LLM call and code run through it,
    and confine themselves after initialising (``options["confine"]``, default
    true: :func:`aflowctl.rollout.worker.confine`; the pool refuses to start where the
    sandbox cannot be set up unless ``rollout.allow_unsandboxed``).
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
        self.gateway: Any = None  # the LLM gateway the workers call through (either backend)
        self.startup_s: Optional[float] = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()

    # -- life cycle

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                if self.cfg.executor == "ray":
                    from aflowctl.rollout.ray_backend import RayBackend

                    self._backend = RayBackend(self.cfg, self.options)
                else:
                    self._backend = ProcessBackend(self.cfg, self.options)
            return self._backend

    def start(self) -> float:
        """Start the workers (idempotent, thread-safe); returns the start-up time in seconds."""
        with self._start_lock:
            if self.startup_s is None:
                t0 = time.perf_counter()
                if self.options.get("use_gateway", True) and self.gateway is None:
                    from aflowctl.llm.gateway import Gateway

                    _import_gateway_modules()
                    self.gateway = Gateway(self.store).start()
                    self.options["gateway"] = self.gateway.address
                    if self.options.get("confine", True) is True:  # workflow code runs confined
                        self.options["confine"] = {"allow_unsandboxed": self.cfg.allow_unsandboxed}
                try:
                    self.backend.start()
                except BaseException:
                    self.close(kill=True)  # the gateway too: nothing of a failed start is left running
                    raise
                self.startup_s = time.perf_counter() - t0
            return self.startup_s

    def close(self, kill: bool = False) -> None:
        """Stop the workers. ``kill=True`` (used when leaving on an exception or
        Ctrl-C) does not wait for running tasks: they stay unfinished in the store."""
        with self._lock:
            backend, self._backend = self._backend, None
            gw, self.gateway = self.gateway, None
        try:
            if backend is not None:
                backend.close(kill=kill)
        finally:
            if gw is not None:  # after the workers: calls still in flight are cancelled and logged
                gw.close()
                self.options.pop("gateway", None)
        self.startup_s = None

    def __enter__(self) -> RolloutPool:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(kill=exc_type is not None)

    @property
    def rebuilds(self) -> int:
        """Times the whole worker pool had to be rebuilt (a worker died while idle)."""
        return getattr(self._backend, "rebuilds", 0)

    @property
    def replaced(self) -> int:
        """Workers that died under a task and were replaced (the others went on)."""
        return getattr(self._backend, "replaced", 0)

    # -- the store

    def _prepare(self, specs: list[TaskSpec], keys: list[str], run_id: Optional[str]) -> dict[str, Any]:
        """Insert missing rows as pending (reset unfinished ones); return rows by key."""
        from sqlmodel import col, select

        from aflowctl.store import RolloutTask, utcnow

        def txn(session: Any) -> dict[str, Any]:
            rows: dict[str, Any] = {}
            unique = list(dict.fromkeys(keys))
            for i in range(0, len(unique), 500):
                chunk = unique[i : i + 500]
                for row in session.exec(select(RolloutTask).where(col(RolloutTask.key).in_(chunk))).all():
                    rows[row.key] = row
            now = utcnow()
            for spec, key in zip(specs, keys):
                row = rows.get(key)
                if row is None:
                    row = RolloutTask(
                        run_id=run_id,
                        key=key,
                        payload_json=json.dumps(
                            {"worker": spec.worker, **spec.payload, "context": spec.context}, default=str
                        ),
                        status="pending",
                        created_at=now,
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
        from sqlmodel import col, select

        from aflowctl.store import RolloutTask

        def txn(session: Any) -> None:
            for row in session.exec(select(RolloutTask).where(col(RolloutTask.id).in_(task_ids))).all():
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
                outcomes[key] = TaskOutcome(
                    key, task_id, "done", _result_of(result_json), None, attempts, True, spec.label
                )
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

    def _run_loop(
        self, todo: dict[str, TaskSpec], rows: dict, outcomes: dict, progress: Any, total: int, reused: int
    ) -> None:
        backend = self.backend
        max_attempts = self.cfg.max_attempts
        timeout_s = self.cfg.task_timeout_s
        charged: dict[str, int] = {k: 0 for k in todo}
        handles: dict[str, Handle] = {}
        marked: set[str] = set()  # tickets (submissions) already marked running
        failed = 0

        def report(last: Optional[TaskOutcome] = None) -> None:
            if progress is not None:
                done = sum(1 for o in outcomes.values() if o.status == "done")
                running = sum(1 for h in handles.values() if h.ticket in marked)
                progress(PoolProgress(total, done, failed, running, reused, last))

        def submit(key: str) -> None:
            spec = todo[key]
            handles[key] = backend.submit(
                spec.worker, key, {**spec.payload, **spec.context, **spec.attached}, timeout_s
            )

        def fail(
            key: str, task_id: int, err: str, error_type: Optional[str] = None, env: Optional[dict] = None
        ) -> None:
            nonlocal failed
            self._finish(task_id, "failed", None, err)
            failed += 1
            outcomes[key] = TaskOutcome(
                key, task_id, "failed", None, err, charged[key], False, todo[key].label, error_type, env
            )
            report(outcomes[key])

        for key in todo:
            submit(key)
        report()
        while handles:
            finished = backend.wait(list(handles.values()), POLL_S)
            for h in list(handles.values()):  # newly started tasks
                if h.started_at is not None and h.ticket not in marked:
                    marked.add(h.ticket)
                    self._mark_running(rows[h.key][0])
                    report()
            for h, res in finished:
                key = h.key
                task_id = rows[key][0]
                del handles[key]
                if isinstance(res, Died):
                    if not res.charge:  # never ran, or its pool broke under it: not its fault
                        submit(key)
                        continue
                    charged[key] += 1
                    if res.final or charged[key] >= max_attempts:
                        fail(
                            key,
                            task_id,
                            res.reason if res.final else f"{res.reason}; gave up after {charged[key]} attempts",
                        )
                    else:
                        self._requeue(task_id, res.reason)
                        submit(key)
                    continue
                env = json.loads(res)
                if env.get("ok"):
                    self._finish(task_id, "done", json.dumps(env.get("result")), None)
                    outcomes[key] = TaskOutcome(
                        key, task_id, "done", env.get("result"), None, charged[key] + 1, False, todo[key].label
                    )
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
                fail(key, task_id, err, env.get("error_type"), env)


def _import_gateway_modules() -> None:
    """Import here what the gateway's thread would import on its first calls: CPython 3.11
    can corrupt its AST state when one thread compiles a module while another parses
    (``ast.parse``: "AST constructor recursion depth mismatch"; no .pyc files)."""
    import importlib

    from aflowctl.llm import registry

    for name in ("logging", "llm.cache", "llm.client", "llm.pricing", "llm.router", "workflow.sandbox"):
        importlib.import_module(f"aflowctl.{name}")
    for name in ("_common", "_http"):
        importlib.import_module(f"aflowctl.llm.providers.{name}")
    registry.providers()


def _result_of(result_json: Optional[str]) -> Any:
    return json.loads(result_json) if result_json else None
