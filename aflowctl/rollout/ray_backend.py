"""Ray backend of the rollout pool: the same tasks, the same worker function.

``RolloutConfig.executor = "ray"`` (``--executor ray --ray-address ADDR``) submits
:func:`aflowctl.rollout.ray_node.run_task` as a Ray remote task. Ray pickles that
function by reference, so a Ray worker imports it from the aflowctl installed on its
machine: no ``runtime_env`` code shipping and no ``sys.path`` edits. Every node needs
aflowctl installed (``pip install 'aflowctl[ray]'``).

With the run's LLM gateway (the pool's default, as on the process backend), Ray
workers hold no provider key and never call a provider (docs/architecture.md,
"Ray"): a :class:`~aflowctl.rollout.ray_gateway.GatewayProxy` actor on the driver's
node forwards every request to the driver's gateway, and on each node the task runs
the workflow code in a confined child (:mod:`aflowctl.rollout.ray_node`) that calls
through a node-local relay (on the driver's own node, straight to the gateway's
socket). The tasks and the proxy run with a ``runtime_env`` that blanks the driver's
key variables (a local Ray instance inherits the driver's
environment). The driver must be on a node of the cluster (an address
``HOST:6379`` or a local instance, not a ``ray://`` client): the proxy is pinned to
its node and reaches the gateway's unix socket there.

Without the gateway (``options["use_gateway"] = False``) tasks run in the Ray
worker itself and log their calls to the store's file, which then needs a shared
file system; the driver's ``AFLOWCTL_HOME`` is forwarded for that.

The durable queue, the retries and the bookkeeping are the pool's
(:class:`~aflowctl.rollout.pool.RolloutPool`); this module implements the backend
protocol of :mod:`aflowctl.rollout.backend` (start, submit, wait, kill, close) and
translates Ray's failures: a crashed worker (or sandboxed child) is an attempt that
is retried, a task past its timeout is cancelled (``force=True`` kills its process,
and the child with it) and fails.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from typing import Any, Optional

from aflowctl.config import RolloutConfig
from aflowctl.rollout.backend import Died, Handle, Result, RolloutError, exit_text

#: environment variables of the driver passed to every Ray task (paths and switches, never secrets)
FORWARDED_ENV = (
    "AFLOWCTL_HOME",
    "AFLOWCTL_DATA_PATH",
    "AFLOWCTL_MODELS_DIR",
    "AFLOWCTL_LOAD_PLUGINS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
#: what a variable's name says when it holds a secret (blanked in Ray workers when the gateway is used)
SECRET_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CRED", "AUTH")


def secret_names(extra: tuple = ()) -> list[str]:
    """The driver's environment variables that may hold a provider key: every key
    variable a built-in provider reads, every name with a :data:`SECRET_HINTS` word,
    and ``extra`` (the models' ``api_key_env``)."""
    from aflowctl.llm.providers._common import KEY_ENV

    known = {n for names in KEY_ENV.values() for n in names} | set(extra)
    return sorted(
        n for n in os.environ if n in known or (any(h in n.upper() for h in SECRET_HINTS) and not n.startswith("RAY_"))
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
        self.gateway = self.options.pop("gateway", None)  # the driver's gateway (reached through the proxy)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if "load_plugins" in self.options:
            env["AFLOWCTL_LOAD_PLUGINS"] = self.options["load_plugins"]
        self.runtime_env: dict = {}
        if self.gateway:  # no store path, no data (the driver sends inputs), key variables blanked
            env.pop("AFLOWCTL_HOME", None)
            env.pop("AFLOWCTL_DATA_PATH", None)
            blank = secret_names(tuple(self.options.pop("secret_env", ())))
            self.runtime_env = {"env_vars": {n: "" for n in blank}} if blank else {}
        self.options["env"] = {**env, **(self.options.get("env") or {})}
        self.ray = _import_ray()
        self.lock = threading.RLock()
        self.remote: Any = None
        self.proxy: Any = None
        self.owns_ray = False
        self.killed: dict[str, str] = {}  # ticket -> reason
        self.running: dict[str, Any] = {}  # ticket -> ref of submissions not yet collected
        self.tickets = itertools.count()
        self.rebuilds = 0
        self.replaced = 0

    def start(self, timeout_s: float = 300.0) -> None:
        ray = self.ray
        with self.lock:
            if self.remote is None:
                if self.gateway and (self.cfg.ray_address or "").startswith("ray://"):
                    raise RolloutError(
                        f"the ray executor cannot reach the LLM gateway through a Ray client ({self.cfg.ray_address})",
                        "run aflowctl on a node of the cluster with --ray-address HOST:6379 (the GCS address)",
                    )
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
                from aflowctl.rollout.ray_node import run_task

                if self.gateway:
                    from aflowctl.rollout.ray_gateway import start_proxy

                    try:
                        self.proxy = start_proxy(ray, self.gateway, self.runtime_env, timeout_s)
                    except Exception as exc:  # noqa: BLE001 - Ray's errors, the socket's
                        raise RolloutError(
                            f"the Ray gateway proxy did not start: {type(exc).__name__}: {str(exc)[:200]}",
                            "check the cluster's resources (ray status); the driver must be on a Ray node",
                        ) from None
                    self.options.update(
                        gateway_proxy=self.proxy,
                        gateway_direct=self.gateway,  # for tasks on this node (ray_node._direct_gateway)
                        driver_node=ray.get_runtime_context().get_node_id(),
                        ray_pool=uuid.uuid4().hex,
                    )
                remote = ray.remote(max_retries=0, num_cpus=1)(run_task)
                self.remote = remote.options(runtime_env=self.runtime_env) if self.runtime_env else remote
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
        try:
            envs = ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise RolloutError(
                f"Ray workers failed to start: {type(exc).__name__}", "is aflowctl installed on every node?"
            ) from None
        for env in envs:
            e = json.loads(env)
            if not e.get("ok"):
                raise RolloutError(
                    f"Ray workers failed to start: {e.get('error')}",
                    e.get("hint") or "is aflowctl installed on every node?",
                )

    def submit(self, worker: str, key: str, payload: dict, timeout_s: Optional[float] = None) -> Handle:
        if self.remote is None:
            self.start()
        ticket = f"{key}#{next(self.tickets)}"
        ref = self.remote.remote(worker, ticket, payload, self.options)
        self.running[ticket] = ref
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
        self.running.pop(h.ticket, None)
        try:
            return ray.get(h.future)
        except ray.exceptions.TaskCancelledError:
            return Died(self.killed.pop(h.ticket, "cancelled"), charge=True, final=True)
        except ray.exceptions.RayError as exc:
            reason = self.killed.pop(h.ticket, None)
            if reason:
                return Died(reason, charge=True, final=True)
            from aflowctl.rollout.ray_node import WorkerDied

            cause = exc if isinstance(exc, WorkerDied) else getattr(exc, "cause", None)
            if isinstance(cause, WorkerDied):  # the sandboxed child died; its Ray worker is fine
                self.replaced += 1
                code = cause.exitcode
                return Died(f"worker process died ({exit_text(code)})", charge=True, exitcode=code)
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
        """Stop: with ``kill``, cancel the tasks still running (their children die with
        them); stop the gateway proxy and wait until it is gone, so that no request
        reaches the driver's gateway after this returns; shut down the Ray instance
        if this backend started it."""
        ray = self.ray
        with self.lock:
            running, self.running = list(self.running.values()), {}
            proxy, self.proxy = self.proxy, None
            self.options.pop("gateway_proxy", None)
            if ray.is_initialized():
                for ref in running if kill else ():
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - already finished
                        pass
                if proxy is not None:
                    _stop_actor(ray, proxy)
            if self.owns_ray and ray.is_initialized():
                ray.shutdown()
            self.remote = None


def _stop_actor(ray: Any, actor: Any, timeout_s: float = 30.0) -> None:
    """Kill ``actor`` and wait until it has died (its connections are closed then)."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayActorError:
            return
        except Exception:  # noqa: BLE001 - a timeout: Ray is overloaded, give up waiting
            return
        time.sleep(0.05)
