"""One lifecycle for every run kind (optimize, train, evaluate): the only writer of ``runs``.

- :func:`create_run` writes a new run row and takes its lease in one ``BEGIN IMMEDIATE``
  transaction, so two starts with one ``--run-id`` at the same instant end with one run
  and one clear error (never a raw IntegrityError). A run id left by a start that failed
  before doing any work is reused (the result says so); any other existing id is refused
  with a hint to ``--resume`` it.
- :func:`reopen_run` reopens a run for ``--resume``: the config keys that may not change
  (see the roles in :mod:`aflowctl.config`) must match unless ``force``; it takes the lease.
- :func:`set_status`, :func:`update_state` (the resumable cursor in ``state_json``) and
  :func:`discard_after` (rows of rounds/updates after the last completed one, redone on
  resume).
- **Leases**: one process per run. The process executing a run holds a row in
  ``run_leases`` (pid, host, heartbeat every :data:`HEARTBEAT_S`). Another process that
  wants the run gets :class:`~aflowctl.errors.RunBusyError` ("run X is being executed by
  pid N on HOST"); a lease whose process is gone (same host and the pid is not alive, or
  no heartbeat for :data:`STALE_S`) is taken over.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from aflowctl.errors import ConfigError, NotFoundError, RunBusyError
from aflowctl.store.db import Store, new_run_id, utcnow
from aflowctl.store.models import Run, RunLease

HEARTBEAT_S = float(os.environ.get("AFLOWCTL_LEASE_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("AFLOWCTL_LEASE_STALE_S", "120"))
ID_PREFIX = {"optimize": "opt", "train": "train", "evaluate": "eval"}


class RunStatus(str, Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    CONVERGED = "converged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    BUDGET_EXCEEDED = "budget_exceeded"


# ------------------------------------------------------------------ leases


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _age_s(iso: str) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return float("inf")


def holder_alive(lease: RunLease) -> bool:
    """Is the process that holds ``lease`` still executing the run?"""
    if _age_s(lease.heartbeat_at) > STALE_S:
        return False
    if lease.host == _host():
        return lease.pid != os.getpid() and _pid_alive(lease.pid)
    return True


def _busy(lease: RunLease) -> RunBusyError:
    return RunBusyError(
        f"run {lease.run_id} is being executed by pid {lease.pid} on {lease.host}",
        "wait for it to finish, or stop that process first",
    )


def _take_lease(session: Any, run_id: str) -> str:
    """Inside a write transaction: take the run's lease or raise RunBusyError."""
    now = utcnow()
    token = secrets.token_hex(8)
    row = session.get(RunLease, run_id)
    if row is not None and holder_alive(row):
        raise _busy(row)
    if row is None:
        row = RunLease(run_id=run_id, pid=os.getpid(), host=_host(), token=token, acquired_at=now, heartbeat_at=now)
    else:  # the holder is gone: take it over
        row.pid, row.host, row.token, row.acquired_at, row.heartbeat_at = os.getpid(), _host(), token, now, now
    session.add(row)
    return token


@dataclass
class Lease:
    """This process's lease on a run; a daemon thread keeps its heartbeat fresh."""

    store: Store
    run_id: str
    token: str
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self.store.transact(lambda s: _touch(s, self.run_id, self.token))
            except Exception:  # noqa: BLE001 - a busy store: try again at the next beat
                continue
            if not held:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            self.store.transact(
                lambda s: s.connection().execute(
                    text("DELETE FROM run_leases WHERE run_id = :r AND token = :t"), {"r": self.run_id, "t": self.token}
                )
            )
        except Exception:  # noqa: BLE001 - a lease left behind is taken over (its pid is gone)
            pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _touch(session: Any, run_id: str, token: str) -> bool:
    res = session.connection().execute(
        text("UPDATE run_leases SET heartbeat_at = :now WHERE run_id = :r AND token = :t"),
        {"now": utcnow(), "r": run_id, "t": token},
    )
    return bool(res.rowcount)


def check_not_busy(store: Store, run_id: str) -> None:
    """RunBusyError now, before any other check, when a live process executes ``run_id``."""
    with store.read() as s:
        row = s.get(RunLease, run_id)
    if row is not None and holder_alive(row):
        raise _busy(row)


def lease_holder(store: Store, run_id: str) -> Optional[dict]:
    """The live holder of a run's lease (pid, host, heartbeat_at), or None."""
    with store.read() as s:
        row = s.get(RunLease, run_id)
    if row is None or not holder_alive(row):
        return None
    return {"pid": row.pid, "host": row.host, "heartbeat_at": row.heartbeat_at}


# ------------------------------------------------------------------ create / reopen


@dataclass
class OpenedRun:
    """A run this process now executes: its id, the config to use, its lease."""

    id: str
    config: Any
    lease: Lease
    created: bool
    notice: Optional[str] = None  # one line for the user (an id reused, ...)


def _config_json(cfg: Any) -> str:
    return json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)


def _did_work(session: Any, row: Run) -> bool:
    """Did this run finish anything (a round, an update, a checkpoint)?"""
    state = json.loads(row.state_json or "{}")
    if state.get("completed_round") or state.get("update") or state.get("sft_done"):
        return True
    conn = session.connection()
    for sql in (
        "SELECT 1 FROM checkpoints WHERE run_id = :r LIMIT 1",
        "SELECT 1 FROM train_metrics WHERE run_id = :r LIMIT 1",
        "SELECT 1 FROM experiences WHERE run_id = :r LIMIT 1",
    ):
        if conn.execute(text(sql), {"r": row.id}).first() is not None:
            return True
    return False


def create_run(
    store: Store,
    *,
    kind: str,
    cfg: Any,
    run_id: Optional[str] = None,
    dataset: Optional[str] = None,
    seed: Optional[int] = None,
    budget_usd: Optional[float] = None,
    state: Optional[dict] = None,
    version: Optional[str] = None,
) -> OpenedRun:
    """Create a run of ``kind`` and take its lease (see the module docstring)."""
    from aflowctl import __version__

    rid = run_id or new_run_id(ID_PREFIX.get(kind, kind))
    now = utcnow()

    def txn(s: Any) -> tuple[str, Optional[str]]:
        notice = None
        row = s.get(Run, rid)
        if row is not None:
            lease = s.get(RunLease, rid)
            if lease is not None and holder_alive(lease):
                raise _busy(lease)
            if row.kind != kind or row.status != RunStatus.FAILED.value or _did_work(s, row):
                raise ConfigError(
                    f"run '{rid}' already exists ({row.kind} run, {row.status})",
                    f"resume it with 'aflowctl {_command(row.kind)} --resume {rid}', or choose another --run-id",
                )
            _discard(s, rid, -1)
            notice = (
                f"run {rid} had failed before finishing any work ({(row.message or 'no message')[:120]}); "
                f"its id is reused for this new run"
            )
        else:
            row = Run(id=rid, kind=kind, created_at=now, updated_at=now)
        row.dataset, row.config_json, row.config_hash = dataset, _config_json(cfg), cfg.hash()
        row.status, row.message, row.created_at, row.updated_at = RunStatus.RUNNING.value, None, now, now
        row.seed, row.version, row.budget_usd = seed, version or __version__, budget_usd
        row.state_json = json.dumps(state or {})
        s.add(row)
        s.flush()
        return _take_lease(s, rid), notice

    try:
        token, notice = store.transact(txn)
    except IntegrityError:  # a writer that does not take BEGIN IMMEDIATE got there first
        raise ConfigError(
            f"run '{rid}' already exists", f"resume it with --resume {rid}, or choose another --run-id"
        ) from None
    return OpenedRun(rid, cfg, Lease(store, rid, token).start(), True, notice)


def _command(kind: str) -> str:
    return {"optimize": "optimize", "train": "train", "evaluate": "evaluate"}.get(kind, kind)


def stored_config(store: Store, run_id: str, *, kind: str, overrides: Optional[dict] = None) -> Any:
    """The config a run was started with (plus ``overrides``); NotFoundError for an unknown run."""
    from aflowctl.config import Config, apply_overrides

    row = require_run(store, run_id, kind=kind)
    cfg = Config.model_validate(json.loads(row.config_json))
    return apply_overrides(cfg, overrides, f"run {run_id}") if overrides else cfg


def require_run(store: Store, run_id: str, *, kind: str) -> Run:
    """The run ``run_id`` of ``kind``; NotFoundError (or a kind mismatch) in one line."""
    with store.read() as s:
        row = s.get(Run, run_id)
    if row is None:
        raise NotFoundError(
            f"{'training ' if kind == 'train' else ''}run '{run_id}' does not exist",
            f"see 'aflowctl inspect runs --kind {kind}' for the runs in this store",
        )
    if row.kind != kind:
        raise ConfigError(
            f"run '{run_id}' is a {row.kind} run, not a{'n' if kind[0] in 'aeiou' else ''} {kind} run",
            f"resume it with 'aflowctl {_command(row.kind)} --resume {run_id}'",
        )
    return row


def reopen_run(
    store: Store, run_id: str, *, kind: str, cfg: Any, force: bool = False, budget_usd: Optional[float] = None
) -> OpenedRun:
    """Reopen ``run_id`` for ``--resume`` with ``cfg``: refuses keys that may not change
    (unless ``force``), takes the lease, marks the run running."""
    from aflowctl.config import conflicting_keys

    row = require_run(store, run_id, kind=kind)
    new = cfg.model_dump(mode="json", by_alias=True)
    differing = conflicting_keys(json.loads(row.config_json), new)
    if differing and not force:
        raise ConfigError(
            f"the config differs from run '{run_id}' in {', '.join(differing)}",
            "drop those options to resume as it was, or pass --force to resume with the new values",
        )

    def txn(s: Any) -> str:
        token = _take_lease(s, run_id)
        run = s.get(Run, run_id)
        run.config_json = json.dumps(new, sort_keys=True)
        run.config_hash = cfg.hash()
        run.status = RunStatus.RUNNING.value
        run.message = None
        run.budget_usd = budget_usd
        run.updated_at = utcnow()
        s.add(run)
        return token

    token = store.transact(txn)
    return OpenedRun(run_id, cfg, Lease(store, run_id, token).start(), False)


# ------------------------------------------------------------------ status and state


def set_status(store: Store, run_id: str, status: RunStatus | str, message: Optional[str] = None, **state: Any) -> None:
    """Record a run's status (and message, and state keys when given)."""
    value = RunStatus(status).value

    def txn(s: Any) -> None:
        run = s.get(Run, run_id)
        if run is None:
            return
        run.status, run.message, run.updated_at = value, message, utcnow()
        if state:
            run.state_json = json.dumps({**json.loads(run.state_json or "{}"), **state})
        s.add(run)

    store.transact(txn)


def update_state_in(session: Any, run_id: str, **state: Any) -> None:
    """Merge ``state`` into the run's cursor inside the caller's write transaction (so the
    cursor moves together with the rows it describes)."""
    run = session.get(Run, run_id)
    run.state_json = json.dumps({**json.loads(run.state_json or "{}"), **state})
    run.updated_at = utcnow()
    session.add(run)


def update_state(store: Store, run_id: str, **state: Any) -> None:
    store.transact(lambda s: update_state_in(s, run_id, **state))


def add_workflow(
    store: Store,
    *,
    run_id: str,
    round_no: int,
    parent_id: Optional[int],
    dataset: Optional[str],
    graph: str,
    prompt: str,
    hash: str,
    modification: Optional[str],
    status: str = "valid",
    error: Optional[str] = None,
) -> int:
    """Store a workflow of a run (a round's child, valid or invalid); returns its id."""
    from aflowctl.store.models import Workflow

    def txn(s: Any) -> int:
        wf = Workflow(
            run_id=run_id,
            round=round_no,
            parent_id=parent_id,
            dataset=dataset,
            graph_code=graph,
            prompt_code=prompt,
            hash=hash,
            modification=modification,
            status=status,
            error=error,
            created_at=utcnow(),
        )
        s.add(wf)
        s.flush()
        assert wf.id is not None  # assigned by the database on flush
        return wf.id

    return store.transact(txn)


def record_round(store: Store, run_id: str, round_no: int, experiences: list[dict]) -> None:
    """Commit a round: its experiences (``Experience`` fields, without run, round and time)
    and the cursor ``completed_round`` in one transaction, so a round is all or nothing."""
    from aflowctl.store.models import Experience

    def txn(s: Any) -> None:
        now = utcnow()
        for e in experiences:
            s.add(Experience(run_id=run_id, round=round_no, created_at=now, **e))
        update_state_in(s, run_id, completed_round=round_no)

    store.transact(txn)


def _discard(session: Any, run_id: str, after: int) -> None:
    c = session.connection()
    p = {"r": run_id, "n": after}
    c.execute(text("DELETE FROM experiences WHERE run_id = :r AND round > :n"), p)
    c.execute(text('DELETE FROM train_metrics WHERE run_id = :r AND "update" > :n'), p)
    ids = [r[0] for r in c.execute(text("SELECT id FROM workflows WHERE run_id = :r AND round > :n"), p)]
    for wid in ids:
        c.execute(text("DELETE FROM evaluations WHERE workflow_id = :w"), {"w": wid})
    for wid in sorted(ids, reverse=True):
        c.execute(text("UPDATE workflows SET parent_id = NULL WHERE parent_id = :w"), {"w": wid})
        c.execute(text("DELETE FROM workflows WHERE id = :w"), {"w": wid})
    if after < 0:
        c.execute(text("DELETE FROM evaluations WHERE run_id = :r"), p)


def discard_after(store: Store, run_id: str, after: int) -> None:
    """Delete what a killed run wrote after its last completed round or update ``after``
    (workflows and their evaluations, experiences, training metrics); it is redone."""
    store.transact(lambda s: _discard(s, run_id, after))
