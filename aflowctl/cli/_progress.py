"""Progress on stderr for long work: evaluation bars, training steps, spinners, notices.

Everything here draws only when stderr is a terminal and ``-q/--quiet`` was not given
(and never with ``--json``); otherwise the same objects do nothing. The library layers
report through callbacks (``Optimizer(progress=...)``, ``evaluate_workflow(progress=...)``,
``Trainer(callback=...)``); this module turns those calls into rich progress lines.

Calls, tokens and spend are read from the store (``llm_calls`` of the run) once a
second, so they move while a rollout task is still running.

:func:`install_interrupt_notice` acknowledges Ctrl-C at once, even while the main
thread is inside a long C call (model generation): a thread waits on the signal
wake-up fd and prints the notice; the interrupt itself is handled as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from aflowctl.cli._output import err_console, fmt_cost

QUIET = False  # set by the app's -q/--quiet
POLL_S = 1.0


def enabled(json_out: bool = False) -> bool:
    """Whether progress is drawn: stderr is a terminal, not --quiet, not --json."""
    return not QUIET and not json_out and err_console.is_terminal


def notice(text: str, *, json_out: bool = False) -> None:
    """One line on stderr (not with --quiet or --json): what the program is doing."""
    if not QUIET and not json_out:
        err_console.print(text, markup=False, highlight=False)


class _Progress(Progress):
    """A rich Progress with one extra text line under the bars (calls, tokens, spend)."""

    activity: str = ""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.activity:
            yield Text(self.activity, style="dim")


class Display:
    """Evaluation bars and a live calls/tokens/spend line for one run.

    ``with Display(store, run_id, active=enabled(...)) as d:`` then feed it
    ``d.evaluation(key, label, done, total)`` and ``d.line(text)``; inactive, it only
    passes ``line`` through to stderr (unless quiet).
    """

    def __init__(
        self,
        store: Any = None,
        run_id: Optional[str] = None,
        *,
        db: Any = None,
        active: bool = True,
        quiet_lines: bool = False,
    ):
        self.store, self.run_id, self.db, self.active = store, run_id, db, active
        self.quiet_lines = quiet_lines or QUIET
        self._tasks: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._since = 0
        self._started = time.monotonic()
        self.progress: Optional[_Progress] = None
        if active:
            self.progress = _Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
                refresh_per_second=4,
            )

    def __enter__(self) -> Display:
        if self.progress is None:
            return self
        try:
            from aflowctl.store import open_store, queries

            if self.store is None:
                self.store = open_store(self.db)
            self._since = queries.last_call_id(self.store)
        except Exception:  # noqa: BLE001 - a store that does not open is reported by the command itself
            self.store = None
        if self.store is not None:
            self._thread = threading.Thread(target=self._poll, name="aflowctl-progress", daemon=True)
            self._thread.start()
        self.progress.start()
        return self

    def attach(self, run_id: str) -> None:
        """Count the calls of this run only (until then: every call since the display started)."""
        self.run_id = run_id

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * POLL_S)
        if self.progress is not None:
            self.progress.stop()

    def _poll(self) -> None:
        from aflowctl.store import queries

        while not self._stop.wait(POLL_S):
            try:
                a = queries.call_activity(self.store, self.run_id, self._since)
            except Exception:  # noqa: BLE001 - a busy or locked store only delays the display
                continue
            if self.progress is not None:
                self.progress.activity = (
                    f"{a['calls']} calls, {a['tokens']:,} tokens, spend {fmt_cost(a['cost_usd'], a['unpriced'])}"
                    + (f"  (run {self.run_id})" if self.run_id else "")
                )

    def line(self, text: str) -> None:
        """A line of its own above the bars (or plain on stderr when not drawing)."""
        if self.quiet_lines:
            return
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            err_console.print(text, markup=False, highlight=False)

    def evaluation(self, key: Any, label: str, done: int, total: int, info: str = "") -> None:
        """Create or advance the bar ``key``: ``done`` of ``total`` problems."""
        if self.progress is None:
            return
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self.progress.add_task(label, total=total or None, info=info)
            self.progress.update(task, completed=done, total=total or None, info=info)

    def finish(self, key: Any) -> None:
        """Remove a finished bar (its result is printed as a line by the caller)."""
        if self.progress is None:
            return
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None:
                self.progress.remove_task(task)

    def step(self, key: Any, label: str, info: str = "") -> None:
        """An indeterminate line (a phase without a count): ``label`` with a spinner."""
        if self.progress is None:
            return
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                self._tasks[key] = self.progress.add_task(label, total=None, info=info)
            else:
                self.progress.update(task, description=label, info=info)


@contextlib.contextmanager
def spinner(text: str, *, json_out: bool = False) -> Iterator[None]:
    """A spinner with elapsed time while a single long call runs (only on a terminal)."""
    if not enabled(json_out):
        yield
        return
    with err_console.status(Text(text), spinner="dots"):
        yield


CONVERSION_NOTICE = "preparing the embedded model once, ~20 s (later runs reuse it)"


def _conversion_notice(gguf: Any) -> None:
    notice(CONVERSION_NOTICE)


def install_conversion_notice() -> None:
    """Say so on stderr whenever this process starts the one-time model conversion."""
    from aflowctl.llm import local_model

    local_model.on_conversion(_conversion_notice)


def prepare_local_models(models: list[Optional[str]], *, json_out: bool = False) -> None:
    """Convert a ``local/`` model that still needs its one-time conversion, in this
    process (where the notice is seen) and with a spinner, before workers load it.

    Call it after the command checked its inputs (bad input must not wait 20 s).
    """
    seen = set()
    for model in models:
        if not model or not model.startswith("local/"):
            continue
        spec = model.split("/", 1)[1]
        if spec in seen:
            continue
        seen.add(spec)
        from aflowctl.llm import local_model

        try:
            if local_model.pending_conversion(spec) is None:
                continue
        except Exception:  # noqa: BLE001 - the real error comes from the command itself
            continue
        install_conversion_notice()
        with spinner("converting the model", json_out=json_out):
            local_model.resolve(spec)


def once(fn: Any) -> Any:
    """``fn`` wrapped to run on its first call only."""
    done: list = []

    def wrapper(*args: Any, **kwargs: Any) -> None:
        if not done:
            done.append(True)
            fn(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------ Ctrl-C

_notice_installed = False
INTERRUPT_NOTICE = "Interrupted: stopping the run and saving its state (finished work is kept)"


def install_interrupt_notice() -> None:
    """Print :data:`INTERRUPT_NOTICE` within a second of Ctrl-C, whatever the main thread does.

    Only in the main thread of the console script (not under a test runner's
    invoke, which shares the process): ``signal.set_wakeup_fd`` makes the C-level
    handler write a byte that a waiting thread turns into the notice. The default
    handler still raises KeyboardInterrupt, handled as before.
    """
    global _notice_installed
    if _notice_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):
        return
    _notice_installed = True

    def watch() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                try:
                    os.write(2, ("\n" + INTERRUPT_NOTICE + "\n").encode())
                except OSError:
                    return

    threading.Thread(target=watch, name="aflowctl-interrupt", daemon=True).start()


# ------------------------------------------------------------------ per command


def log_event(event: str, message: str, data: dict) -> None:
    """The run's events go to its log (runs/<id>/log.jsonl) as well as to the screen."""
    from loguru import logger

    safe = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    logger.bind(event=event, **safe).info(message)


def optimize_callback(display: Display, prepare: Optional[Any] = None):
    """The ``progress`` callback of ``run_optimize`` / the Optimizer; ``prepare`` runs when
    the run has started (after the checks of its inputs)."""

    def cb(event: str, **data: Any) -> None:
        if event == "run_start":  # the inputs are checked, the run exists: now convert a local model
            display.attach(data["run_id"])
            if prepare is not None:
                prepare()
            return
        if event == "evaluation":
            wid, split = data.get("workflow_id"), data.get("split", "validate")
            label = f"workflow {wid}" if wid is not None else "smoke check"
            if split != "validate":
                label += f" ({split})"
            display.evaluation((wid, split), label, data.get("done", 0), data.get("total", 0), eval_info_of(data))
            if data.get("total") and data.get("done", 0) + data.get("failed", 0) >= data["total"]:
                display.finish((wid, split))
            return
        if event == "round_start":
            parent = (
                f" from workflow {data['parent']} ({100 * data['parent_score']:.1f}%)" if data.get("parent") else ""
            )
            text = f"round {data['round']}{parent}"
        elif event == "round_done":
            kids = ", ".join(
                f"workflow {wid}: {'invalid' if sc is None else f'{100 * sc:.1f}%'}"
                for wid, sc in data.get("children", [])
            )
            text = f"  round {data['round']} done: {kids or 'no valid child'}"
        elif event == "proposal_failed":
            text = f"  candidate {data['k']} attempt {data['attempt']} rejected: {str(data['error'])[:160]}"
        else:
            text = f"  {event}"
        log_event(event, text.strip(), data)
        display.line(text)

    return cb


def eval_info_of(data: dict) -> str:
    parts = []
    if data.get("mean") is not None:
        parts.append(f"mean {100 * data['mean']:.0f}%")
    if data.get("failed"):
        parts.append(f"{data['failed']} failed")
    return ", ".join(parts)


class TrainDisplay:
    """Per-update progress of ``aflowctl train`` (the trainer's callback events)."""

    def __init__(self, display: Display):
        self.d = display
        self.total = 0
        self.done = 0
        self._sink: Optional[int] = None

    def _open_log(self, run_id: str) -> None:
        """The run's events also go to runs/<id>/log.jsonl (from the first event that names the run)."""
        if self._sink is None:
            from aflowctl import paths
            from aflowctl.logging import add_run_log

            self._sink = add_run_log(paths.run_dir(run_id) / "log.jsonl")

    def close(self) -> None:
        if self._sink is not None:
            from loguru import logger

            logger.remove(self._sink)
            self._sink = None

    def event(self, kind: str, data: dict) -> None:
        from aflowctl.cli._warnings import no_signal_reason

        if kind == "start":
            self._open_log(data["run_id"])
            log_event("start", f"training {data['run_id']}", data)
            self.total, self.done = int(data["total_updates"]), int(data.get("done", 0))
            self.d.line(
                f"training {data['run_id']} on {data['device']}: {self.total} update(s)"
                + (f", {self.done} done before" if self.done else "")
            )
            self.d.evaluation("updates", "updates", self.done, self.total)
        elif kind == "phase":
            what = data.get("phase", "")
            if data.get("steps"):
                what += f" (step {data['step'] + 1} of {data['steps']})"
            self.d.step("phase", f"update {data.get('update', self.done) + 1}: {what}")
        elif kind == "update":
            self.done += 1
            self.d.evaluation("updates", "updates", self.done, self.total)
            text = (
                f"update {data.get('update', self.done - 1) + 1}/{self.total}: reward {data['reward_mean']:.3f}, "
                f"valid {data['valid_rate']:.2f}, loss {data['loss']:.4f}"
            )
            why = no_signal_reason(data)
            if why:
                text += f"; no learning signal ({why})"
            log_event("update", text, {k: v for k, v in data.items() if isinstance(v, (int, float))})
            self.d.line(text)
        elif kind == "resumed":
            self.d.line(f"resumed from {data['checkpoint']} (update {data['update']})")
        elif kind == "notice":
            self.d.line(str(data["message"]))
        elif kind == "checkpoint":
            log_event("checkpoint", f"checkpoint {data['path']}", data)
        elif kind == "sft" and data.get("step", 0) % 10 == 1:
            self.d.line(f"warm start (SFT) step {data['step']}: loss {data['loss']:.4f}")
