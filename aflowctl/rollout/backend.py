"""Rollout backends: where the pool's tasks run, behind one small protocol.

A backend runs ``aflowctl.rollout.worker:run_task(worker, ticket, payload, options)``
somewhere and reports how each submission ended. The durable queue, the attempt
accounting and the store are the pool's (:class:`~aflowctl.rollout.pool.RolloutPool`);
a backend only does five things:

* ``start(timeout_s)``: start the workers and wait until each has initialised
  (raises :class:`RolloutError` when they cannot start);
* ``submit(worker, key, payload, timeout_s) -> Handle``;
* ``wait(handles, timeout) -> list[(Handle, result)]``: the submissions that ended
  within ``timeout`` seconds, ``result`` being the worker's JSON envelope (a ``str``)
  or a :class:`Died`; it also sets ``Handle.started_at`` when a task starts running;
* ``kill(handle, reason)``: end one running submission (its worker process is
  killed; the other workers go on);
* ``close(kill=False)``: stop every worker (``kill``: without waiting for running
  tasks).

:class:`ProcessBackend` runs the tasks on a :class:`pebble.ProcessPool` (``spawn``
start method, :func:`~aflowctl.rollout.worker.init_worker` as initializer). A task
past its ``timeout_s`` has its worker killed by pebble and ends as a final
:class:`Died`; a worker that dies (SIGKILL, out of memory, ``os._exit``) fails only
the task it was running, with its exit code, and pebble starts a replacement; the
other workers and their tasks are untouched. Only when the pool itself breaks (a
worker died while idle, its channel is gone) is it rebuilt, and the tasks it held
are resubmitted without being charged. The Ray backend
(:mod:`aflowctl.rollout.ray_backend`) implements the same protocol.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from aflowctl.config import RolloutConfig
from aflowctl.errors import AflowctlError
from aflowctl.rollout.launcher import drop_launcher, use_launcher, worker_environ, write_launcher


class RolloutError(AflowctlError):
    """The rollout pool cannot run (workers fail to start, Ray unreachable, ...)."""


@dataclass
class Handle:
    """One submission of one task. ``ticket`` is unique per submission."""

    key: str
    ticket: str
    future: Any
    submitted: float
    timeout_s: Optional[float] = None
    started_at: Optional[float] = None  # wall-clock time the task started running (None: queued)


@dataclass
class Died:
    """A submission that ended without an envelope.

    ``charge``: counts as an attempt of the task (``False``: the task never ran, or
    ran on a pool that broke under it through no fault of its own); ``final``: no
    retry (timeout, killed on purpose); ``exitcode``: the worker's, when it died.
    """

    reason: str
    charge: bool
    final: bool = False
    exitcode: Optional[int] = None


Result = Union[str, Died]


class Backend(Protocol):
    """What :class:`~aflowctl.rollout.pool.RolloutPool` needs from a backend."""

    name: str
    rebuilds: int  # times the whole pool had to be rebuilt
    replaced: int  # workers that died and were replaced

    def start(self, timeout_s: float = 300.0) -> None: ...

    def submit(self, worker: str, key: str, payload: dict, timeout_s: Optional[float] = None) -> Handle: ...

    def wait(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, Result]]: ...

    def kill(self, handle: Handle, reason: str) -> None: ...

    def close(self, kill: bool = False) -> None: ...


def exit_text(code: Optional[int]) -> str:
    """``-9`` -> "killed by SIGKILL", ``3`` -> "exit code 3"."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# A pool that breaks this many times in a row without finishing a task is not going to work.
MAX_CONSECUTIVE_REBUILDS = 5


class ProcessBackend:
    """Tasks on a ``spawn`` :class:`pebble.ProcessPool`.

    The pool is created, and its first workers started, by a thread of this backend
    that lives until :meth:`close`: workers set ``PR_SET_PDEATHSIG``, which fires
    when the *thread* that started them ends, so they must not be started by a
    short-lived caller thread. Pebble starts replacements from its own manager
    thread, which also lives as long as the pool.
    """

    name = "process"

    def __init__(self, cfg: RolloutConfig, options: dict):
        self.cfg = cfg
        self.options = dict(options)
        self.ctx = mp.get_context("spawn")
        self.lock = threading.RLock()
        self.pool: Any = None
        self.queue: Any = None  # initialised workers say ("ready", pid) or ("error", pid, text)
        self.tickets = itertools.count()
        self.killed: dict[str, str] = {}  # ticket -> reason
        self.rebuilds = 0
        self.replaced = 0
        self._broken_in_a_row = 0
        self._owner: Optional[threading.Thread] = None
        self._requests: list[tuple[str, threading.Event, list]] = []
        self._wake = threading.Condition(threading.Lock())
        self._closing = False
        self._pids: set[int] = set()
        self._launcher: Optional[str] = None
        self._home: Optional[str] = None

    # -- the owner thread: creates (and rebuilds) the pebble pool

    def _own(self) -> None:
        while True:
            with self._wake:
                while not self._requests and not self._closing:
                    self._wake.wait()
                if self._closing and not self._requests:
                    return
                what, done, box = self._requests.pop(0)
            try:
                if what == "build":
                    box.append(self._build())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box.append(exc)
            finally:
                done.set()

    def _in_owner(self, what: str) -> Any:
        done = threading.Event()
        box: list[Any] = []
        with self._wake:
            if self._owner is None or not self._owner.is_alive():
                self._closing = False
                self._owner = threading.Thread(target=self._own, name="aflowctl-rollout-pool", daemon=True)
                self._owner.start()
            self._requests.append((what, done, box))
            self._wake.notify_all()
        done.wait()
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _build(self) -> Any:
        from pebble import ProcessPool

        from aflowctl.rollout.worker import init_worker

        options = {**self.options, "parent_pid": os.getpid()}
        if options.get("gateway") and self._launcher is None:
            # Workers reach providers only through the gateway: start them from a clean environment.
            env = worker_environ(options.get("env") or {})
            self._home = env["HOME"]
            self._launcher = write_launcher(env)
            use_launcher(self.ctx, self._launcher)
        queue = self.ctx.SimpleQueue()
        pool = ProcessPool(
            max_workers=self.cfg.workers, initializer=init_worker, initargs=(options, queue), context=self.ctx
        )
        probe = pool.schedule(_noop)  # starts the pool (its first workers) in this, the owner, thread
        return pool, queue, probe

    # -- the protocol

    def start(self, timeout_s: float = 300.0) -> None:
        """Start every worker process and wait until each has initialised."""
        with self.lock:
            if self.pool is not None:
                return
            self._start(timeout_s)

    def _start(self, timeout_s: float) -> None:
        self.pool, self.queue, probe = self._in_owner("build")
        ready: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(ready) < self.cfg.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop_pool(kill=True)
                raise RolloutError(
                    f"rollout workers did not start within {timeout_s:g} s ({len(ready)} of {self.cfg.workers} ready)",
                    "the machine may be overloaded; lower rollout.workers",
                )
            msg = self._get(min(left, 0.2))
            if msg is None:
                if probe.done() and probe.exception() is not None:
                    msg = self._get(1.0) or ("error", 0, f"{type(probe.exception()).__name__}: {probe.exception()}")
                else:
                    continue
            if msg[0] == "ready":
                ready.add(msg[1])
                self._pids.add(msg[1])
            elif msg[0] == "error":
                self._stop_pool(kill=True)
                raise RolloutError(
                    f"a rollout worker failed to start: {msg[2]}",
                    "check the plugins and the environment (aflowctl doctor)",
                )

    def _get(self, timeout: float) -> Optional[tuple]:
        end = time.monotonic() + timeout
        while True:
            q = self.queue
            if q is not None and not q.empty():
                return q.get()
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)

    def submit(self, worker: str, key: str, payload: dict, timeout_s: Optional[float] = None) -> Handle:
        from aflowctl.rollout.worker import run_task

        with self.lock:
            if self.pool is None:
                self._start(300.0)
            ticket = f"{key}#{next(self.tickets)}"
            fut = self.pool.schedule(run_task, args=(worker, ticket, payload), timeout=timeout_s)
            return Handle(key, ticket, fut, time.monotonic(), timeout_s)

    def wait(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, Result]]:
        by_fut = {id(h.future): h for h in handles}
        done, _ = cf.wait([h.future for h in handles], timeout=timeout, return_when=cf.FIRST_COMPLETED)
        now = time.time()
        for h in handles:
            if h.started_at is None and (h.future.running() or h.future.done()):
                h.started_at = now
        out = [(by_fut[id(f)], self._result(by_fut[id(f)])) for f in done]
        if any(isinstance(r, Died) and r.reason == "requeued" for _, r in out):
            self._rebuild()
        elif any(not isinstance(r, Died) for _, r in out):
            self._broken_in_a_row = 0
        return out

    def _result(self, h: Handle) -> Result:
        fut = h.future
        if fut.cancelled():
            return Died(self.killed.pop(h.ticket, "cancelled"), charge=True, final=True)
        exc = fut.exception()
        if exc is None:
            return fut.result()
        from pebble import ProcessExpired

        if isinstance(exc, cf.TimeoutError):
            return Died(f"timed out after {h.timeout_s:g} s", charge=True, final=True)
        if isinstance(exc, ProcessExpired):
            self.replaced += 1
            return Died(f"worker process died ({exit_text(exc.exitcode)})", charge=True, exitcode=exc.exitcode)
        if isinstance(exc, BrokenProcessPool):
            return Died("requeued", charge=False)
        # run_task returns envelopes and never raises; anything else is the transport's
        return Died(f"worker failed ({type(exc).__name__}: {str(exc)[:200]})", charge=True)

    def _rebuild(self) -> None:
        """The pebble pool broke (a worker died idle): stop it and start a new one."""
        with self.lock:
            if self.pool is None or self.pool.active:
                return
            self._broken_in_a_row += 1
            self.rebuilds += 1
            if self._broken_in_a_row > MAX_CONSECUTIVE_REBUILDS:
                self._stop_pool(kill=True)
                raise RolloutError(
                    f"the rollout worker pool broke {self._broken_in_a_row} times in a row",
                    "workers die as they start or while idle (memory?); see the log with AFLOWCTL_DEBUG=1",
                )
            self._stop_pool(kill=True)
            self._start(300.0)

    def kill(self, handle: Handle, reason: str) -> None:
        """End ``handle``'s task: pebble kills the worker running it and starts another."""
        if handle.future.done():
            return
        self.killed[handle.ticket] = reason
        handle.future.cancel()

    def worker_pids(self) -> list[int]:
        """The live worker processes of this backend (those that said they were ready)."""
        while (msg := self._get(0)) is not None:
            if msg[0] == "ready":
                self._pids.add(msg[1])
        live = {p.pid for p in mp.active_children()}
        return sorted(self._pids & live)

    def _stop_pool(self, kill: bool) -> None:
        pool, self.pool, self.queue = self.pool, None, None
        if pool is None:
            return
        if kill:
            pool.stop()
        else:
            pool.close()
        pool.join()

    def close(self, kill: bool = False) -> None:
        """Stop the workers; ``kill`` ends running tasks at once (Ctrl-C, an error)."""
        with self.lock:
            self._stop_pool(kill)
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._launcher is not None:
            drop_launcher(self.ctx, self._launcher)
            shutil.rmtree(self._home or "", ignore_errors=True)
            self._launcher = self._home = None


def _noop() -> None:
    return None


def envelope(result: Result) -> dict:
    """The decoded worker envelope of a non-:class:`Died` result."""
    return json.loads(result) if isinstance(result, str) else {"ok": False, "error": getattr(result, "reason", "?")}


def rebuild_error(env: dict, text: str) -> Exception:
    """The exception a worker's error envelope describes, as its own class.

    ``env["error_class"]`` is ``"module:QualName"``; the class is used when its module
    is already imported in this process (nothing is imported on a worker's word: the
    worker runs untrusted code) and it is an :class:`AflowctlError` subclass, e.g. a
    plugin's own error. It is rebuilt from the envelope's ``message`` and ``hint``.
    Anything else becomes a :class:`RolloutError` with the worker's text.
    """

    from aflowctl import errors

    cls: Any = None
    module, _, qualname = str(env.get("error_class") or "").partition(":")
    mod = sys.modules.get(module) if module else None
    if mod is not None and qualname:
        cls = mod
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
    if cls is None:  # envelopes without error_class (older stored tasks): aflowctl.errors by name
        cls = getattr(errors, str(env.get("error_type") or ""), None)
    if isinstance(cls, type) and issubclass(cls, AflowctlError) and cls is not AflowctlError:
        message = env.get("message") or text
        try:
            return cls(message, env.get("hint")) if env.get("message") else cls(message)
        except Exception:  # noqa: BLE001 - a class with another constructor: fall through
            pass
    return RolloutError(text, env.get("hint"))
