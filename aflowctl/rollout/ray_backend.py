"""Ray backend of the rollout pool: the same tasks, the same worker function.

``RolloutConfig.executor = "ray"`` (``--executor ray --ray-address ADDR``) submits
:func:`aflowctl.rollout.worker.run_task` as a Ray remote task. Ray pickles that
function by reference (``aflowctl.rollout.worker.run_task``), so a Ray worker
imports it from the aflowctl installed on its machine: no ``runtime_env`` and no
``sys.path`` edits. Every node needs aflowctl installed (``pip install
'aflowctl[ray]'``) and, for the executor's LLM calls to be logged, access to the
store's file (a shared file system). The driver's ``AFLOWCTL_HOME``,
``AFLOWCTL_DATA_PATH``, ``AFLOWCTL_MODELS_DIR`` and ``AFLOWCTL_LOAD_PLUGINS`` are set
in each task's process (Ray workers are long-lived and shared between pools).

The durable queue, the retries and the bookkeeping are the pool's
(:class:`~aflowctl.rollout.pool.RolloutPool`); this module implements the backend
protocol of :mod:`aflowctl.rollout.backend` (start, submit, wait, kill, close) and
translates Ray's failures: a crashed worker is an attempt that is retried, a task
past its timeout is cancelled (``force=True`` kills its process) and fails.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Optional

from aflowctl.config import RolloutConfig
from aflowctl.rollout.backend import Died, Handle, Result, RolloutError

#: environment variables of the driver passed to every Ray task (paths and switches, never secrets)
FORWARDED_ENV = (
    "AFLOWCTL_HOME",
    "AFLOWCTL_DATA_PATH",
    "AFLOWCTL_MODELS_DIR",
    "AFLOWCTL_LOAD_PLUGINS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RolloutError(
            "the ray executor needs Ray, which is not installed",
            "pip install 'aflowctl[ray]', or use --executor process",
        ) from None
    return ray


class RayBackend:
    name = "ray"

    def __init__(self, cfg: RolloutConfig, options: dict):
        self.cfg = cfg
        self.options = dict(options)
        # Ray workers outlive pools and do not inherit this process's environment
        # (on a cluster): hand them aflowctl's own settings explicitly.
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if "load_plugins" in self.options:
            env["AFLOWCTL_LOAD_PLUGINS"] = self.options["load_plugins"]
        self.options["env"] = {**env, **(self.options.get("env") or {})}
        self.ray = _import_ray()
        self.lock = threading.RLock()
        self.remote: Any = None
        self.owns_ray = False
        self.killed: dict[str, str] = {}  # ticket -> reason
        self.tickets = itertools.count()
        self.rebuilds = 0
        self.replaced = 0

    def start(self, timeout_s: float = 300.0) -> None:
        ray = self.ray
        with self.lock:
            if self.remote is None:
                if not ray.is_initialized():
                    try:
                        ray.init(
                            address=self.cfg.ray_address,
                            include_dashboard=False,
                            log_to_driver=False,
                            ignore_reinit_error=True,
                        )
                    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds (ConnectionError, ...)
                        where = self.cfg.ray_address or "a local Ray instance"
                        raise RolloutError(
                            f"cannot connect to {where}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}",
                            "check --ray-address (ray://HOST:10001 or HOST:6379), or start one with `ray start --head`",
                        ) from None
                    self.owns_ray = True
                from aflowctl.rollout.worker import run_task

                self.remote = ray.remote(max_retries=0, num_cpus=1)(run_task)
        # Warm the workers: each imports aflowctl and initialises once.
        refs = [
            self.remote.remote("aflowctl.rollout.worker:selftest", f"warmup-{i}", {}, self.options)
            for i in range(self.cfg.workers)
        ]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise RolloutError(
                f"Ray workers did not start within {timeout_s:g} s", "check the cluster's resources (ray status)"
            )
        for env in ray.get(refs):
            import json

            e = json.loads(env)
            if not e.get("ok"):
                raise RolloutError(
                    f"Ray workers failed to start: {e.get('error')}", "is aflowctl installed on every node?"
                )

    def submit(self, worker: str, key: str, payload: dict, timeout_s: Optional[float] = None) -> Handle:
        if self.remote is None:
            self.start()
        ticket = f"{key}#{next(self.tickets)}"
        ref = self.remote.remote(worker, ticket, payload, self.options)
        # Ray does not tell when a task starts: count it as started when submitted.
        return Handle(key, ticket, ref, time.monotonic(), timeout_s, started_at=time.time())

    def wait(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, Result]]:
        now = time.time()
        for h in handles:  # the per-task timeout, counted from submission
            if h.timeout_s and h.started_at is not None and now - h.started_at > h.timeout_s:
                self.kill(h, f"timed out after {h.timeout_s:g} s")
        refs = [h.future for h in handles]
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=True)
        if ready:  # everything else that is ready too
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        ready_ids = {id(r) for r in ready}
        return [(h, self._result(h)) for h in handles if id(h.future) in ready_ids]

    def _result(self, h: Handle) -> Result:
        ray = self.ray
        try:
            return ray.get(h.future)
        except ray.exceptions.TaskCancelledError:
            return Died(self.killed.pop(h.ticket, "cancelled"), charge=True, final=True)
        except ray.exceptions.RayError as exc:
            reason = self.killed.pop(h.ticket, None)
            if reason:
                return Died(reason, charge=True, final=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.replaced += 1
            return Died(f"Ray worker died ({type(exc).__name__}{': ' + first[:200] if first else ''})", charge=True)

    def kill(self, handle: Handle, reason: str) -> None:
        if handle.ticket in self.killed:
            return
        self.killed[handle.ticket] = reason
        try:
            self.ray.cancel(handle.future, force=True)
        except Exception:  # noqa: BLE001 - already finished
            pass

    def close(self, kill: bool = False) -> None:
        """Shut down the Ray instance if this backend started it (``kill``: running
        tasks are cancelled with it; on a shared cluster they finish unrecorded)."""
        with self.lock:
            if self.owns_ray and self.ray.is_initialized():
                self.ray.shutdown()
            self.remote = None
