"""What runs inside a rollout worker process (a spawned pool process or a Ray worker).

Entry points, all plain functions of the installed package, found by import string:

- :func:`evaluate` (``aflowctl.rollout.worker:evaluate``, entry point ``evaluate`` of
  group ``aflowctl_workers``): evaluate one workflow on a batch of (repeat, problem)
  items, problems run concurrently with asyncio.
- :func:`selftest` (``aflowctl.rollout.worker:selftest``): sleeps, echoes, fails or
  kills its own process on request; used by ``doctor`` and by the pool's tests.
- :func:`init_worker`: the process initializer (logging, environment, plugins).
- :func:`run_task`: what the pool actually submits; it resolves the worker function,
  runs it, and returns a JSON *envelope* string. Every exception becomes an error
  envelope (plain text), so nothing unpicklable (litellm's exceptions) ever crosses
  the process boundary and breaks the pool.

The evaluate worker itself lives in :mod:`aflowctl.rollout.eval_worker` and the error
envelope in :mod:`aflowctl.rollout.envelope`; both are re-exported here, so the import
strings above stay the contract.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from aflowctl.errors import AflowctlError
from aflowctl.rollout.envelope import ERROR_MAX_CHARS, error_envelope, error_text
from aflowctl.rollout.eval_worker import PREDICTION_MAX_CHARS, ProblemTimeout, answer_text, evaluate, run_async

__all__ = [
    "DEFAULT_WORKER",
    "ERROR_MAX_CHARS",
    "PREDICTION_MAX_CHARS",
    "ProblemTimeout",
    "answer_text",
    "confine",
    "error_envelope",
    "error_text",
    "evaluate",
    "init_worker",
    "run_async",
    "run_task",
    "selftest",
]

DEFAULT_WORKER = "aflowctl.rollout.worker:evaluate"

_initialized = False
_worker_cache: dict[str, Any] = {}


# --------------------------------------------------------------------------- start-up


def init_worker(options: Optional[dict] = None, start_queue: Any = None) -> None:
    """Initialise a worker process once: environment, logging, plugins.

    ``options``: ``log_level`` (loguru level name, default WARNING), ``hf_offline``
    (set HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE), ``load_plugins`` (value for
    AFLOWCTL_LOAD_PLUGINS, so a worker loads the same plugins as its parent),
    ``env`` (extra environment variables, names and values without secrets),
    ``preload`` (modules to import now, so that the first task does not pay for it; a
    confined worker can import afterwards only the code of packages imported by then,
    and the ``aflowctl_workers`` entry points, imported here too),
    ``parent_pid`` (die with that process: ``PR_SET_PDEATHSIG``).

    ``start_queue`` (optional) receives ``("ready", pid)`` once initialised, or
    ``("error", pid, text)`` when initialisation failed (then this raises).
    """
    global _initialized
    try:
        _init(options or {})
    except BaseException as exc:
        if start_queue is not None:
            start_queue.put(("error", os.getpid(), error_text(exc)))
        raise
    _initialized = True
    if start_queue is not None:
        start_queue.put(("ready", os.getpid()))


def _init(options: dict) -> None:
    if options.get("parent_pid"):
        die_with_parent(int(options["parent_pid"]))
    # Before anything can import litellm: never reach out for the cost map.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if options.get("hf_offline"):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if options.get("load_plugins") is not None:
        os.environ["AFLOWCTL_LOAD_PLUGINS"] = options["load_plugins"]
    for name, value in (options.get("env") or {}).items():
        os.environ[str(name)] = str(value)
    from loguru import logger

    from aflowctl.logging import redact

    logger.remove()
    logger.configure(patcher=lambda record: record.update({"message": redact(record["message"])}))
    logger.add(
        sys.stderr,
        level=options.get("log_level", "WARNING"),
        format="<level>{level: <7}</level> [worker {process}] {message}",
    )
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    except ValueError:  # not the main thread (some Ray setups)
        pass

    if options.get("gateway"):  # before confinement: the connection stays open afterwards
        from aflowctl.llm import gateway

        gateway.connect(options["gateway"])

    from aflowctl.plugins import get_plugin_manager

    get_plugin_manager()  # providers, benchmarks and operators registered in this process
    from aflowctl.rollout.importer import preload_workers

    preload_workers()  # entry-point workers: their code is not readable once confined
    for modname in options.get("preload") or ():  # pay import costs at start-up, not in the first task
        try:
            importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001 - the task that needs it will report it
            logger.warning("worker could not preload {}: {}", modname, exc)
    if options.get("confine"):
        confine(options["confine"])


#: address-space limit of a confined rollout worker (MB) unless the pool's options say otherwise
WORKER_MEMORY_MB = 4096
confinement: Any = None  # the ConfineReport of this worker, once confined


def confine(conf: dict) -> Any:
    """Confine this worker for good, after its imports and before any workflow code
    (:func:`aflowctl.sandbox.confine.confine_current_process`): writes only in a
    fresh scratch directory, reads only the standard library and the code of the
    imported packages (never a benchmark's data: the parent sends each problem's
    inputs, see :mod:`aflowctl.rollout.eval_worker`), no processes, a memory limit, and no socket but the connection to
    the LLM gateway opened before (:func:`aflowctl.llm.gateway.connect`): none can be
    made or connected afterwards. Raises SandboxError when a layer is missing unless
    ``allow_unsandboxed``."""
    import tempfile

    from aflowctl.sandbox.confine import confine_current_process

    global confinement
    scratch = tempfile.mkdtemp(prefix="aflowctl-scratch-")
    confinement = confine_current_process(
        scratch_dir=scratch,
        memory_mb=int(conf.get("memory_mb") or WORKER_MEMORY_MB),
        allow_unsandboxed=bool(conf.get("allow_unsandboxed")),
    )
    os.chdir(scratch)
    return confinement


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (kill -9 included):
    an orphaned worker must not go on spending on LLM calls nobody will store.
    Falls back to a watching thread where ``prctl`` is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(70)


def _watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, name="aflowctl-parent-watch", daemon=True).start()


def _ensure_initialized(options: Optional[dict]) -> None:
    if not _initialized:
        init_worker(options, None)


# --------------------------------------------------------------------------- envelope


def run_task(worker: str, key: str, payload: dict, options: Optional[dict] = None) -> str:
    """Run ``worker(payload)`` and return a JSON envelope.

    ``{"ok": true, "result": ..., "duration_s": s, "pid": p}`` or
    ``{"ok": false, "error": "...", "error_type": "...", "retryable": bool, ...}``.
    An :class:`AflowctlError` (a user's mistake: bad workflow, missing data) is not
    retryable; any other exception is.
    """
    _ensure_initialized(options)
    for name, value in ((options or {}).get("env") or {}).items():  # a long-lived (Ray) worker serves many pools
        os.environ[str(name)] = str(value)
    t0 = time.perf_counter()
    try:
        fn = _worker_cache.get(worker)
        if fn is None:
            from aflowctl.rollout.importer import resolve_worker

            fn = _worker_cache[worker] = resolve_worker(worker)
        result = fn(payload)
        _exit_if_gateway_lost()  # a result made without the gateway's answers is not trusted either
        text = json.dumps({"ok": True, "result": result, "duration_s": time.perf_counter() - t0, "pid": os.getpid()})
        return text
    except BaseException as exc:  # noqa: BLE001 - everything becomes an envelope
        if isinstance(exc, KeyboardInterrupt):
            raise
        _exit_if_gateway_lost()
        return json.dumps(error_envelope(exc, time.perf_counter() - t0))


def _exit_if_gateway_lost() -> None:
    """A worker whose connection to the LLM gateway dropped cannot open another (a
    confined process makes no socket): it ends now, under its task, so that the pool
    retries the task on a new worker (an infrastructure failure, never a score)."""
    from aflowctl.llm import gateway

    if gateway.lost():
        from loguru import logger

        logger.warning("the connection to the LLM gateway was lost: this worker exits and is replaced")
        os._exit(75)


# --------------------------------------------------------------------------- selftest


def selftest(payload: dict) -> dict:
    """A worker that does what it is told; for ``doctor`` and the pool's tests.

    Keys (all optional): ``echo`` (returned as is); ``sleep`` (seconds);
    ``log`` (a file path: one line "<pid> <tag>" appended per execution, to count
    executions); ``crash``: ``"raise"`` (RuntimeError), ``"error"`` (an
    AflowctlError), ``"exit"`` (``os._exit(3)``), ``"kill"`` (SIGKILL of this
    process); ``crash_once``: a file path; the crash happens only if the file does
    not exist yet (the file is created first), so a retry succeeds.
    """
    if payload.get("log"):
        with open(payload["log"], "a") as fh:
            fh.write(f"{os.getpid()} {payload.get('tag', '')}\n")
    crash = payload.get("crash")
    once = payload.get("crash_once")
    if crash and once:
        marker = Path(once)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
        except FileExistsError:
            crash = None
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if crash == "raise":
        raise RuntimeError("selftest asked to raise")
    if crash == "error":
        raise AflowctlError("selftest asked to fail", "this is a test")
    if crash == "exit":
        os._exit(3)
    if crash == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return {"pid": os.getpid(), "echo": payload.get("echo"), "python": sys.version.split()[0]}
