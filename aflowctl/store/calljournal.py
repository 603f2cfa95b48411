"""The write-ahead journal of LLM calls in flight: a call that was sent is logged even
when its process is killed.

``llm_calls`` rows are committed after a call ends (in the background, in groups). A
process killed with ``kill -9`` while calls are in flight would lose them: spend
under-counted, and the calls silently re-billed on resume. So, just before a request
is sent, the router appends the row that would describe it if it never came back
(``error = "interrupted: ..."``) to a journal file. The file is preallocated and
mapped shared: an entry is a copy into the kernel's page cache, which keeps it
whatever happens to the process (power loss is out of scope: no fsync), at no system
call (an ``os.write`` per call released the GIL and cost the gateway's busy event
loop a few percent at 32 calls in flight). Once the call's real row is committed (it
carries the same ``journal_key``), the entry is *settled* by another small entry.

Files: ``<store>.inflight/<pid>-<token>-<n>.wal``, one series per process (and store),
JSON lines ``{"b": key, "row": {...}}`` (begin) and ``{"s": [keys]}`` (settled). The
writer holds an exclusive ``flock`` on each of its files for as long as it lives: the
kernel drops it when the process dies, kill -9 included, which is how a reader tells
a dead writer's file from a live one. A file holds :data:`SEGMENT_BYTES` (the rest is
zeros); a full one is followed by the next and removed once every entry in it is
settled; a clean exit removes the settled files. A full disk makes the journal stop
(the calls still go out, unjournaled, as before it existed).

:func:`reconcile` (run by :func:`aflowctl.store.open_store`, so on every resume,
``inspect``, ``report`` ...) takes each file whose writer is gone, inserts the rows of
its unsettled entries that have no ``llm_calls`` row with their key yet (a kill
between the commit and the settle write is not counted twice), all in one
transaction, then deletes the file. Those rows say the call was interrupted and that
its cost is unknown (with the worst-case estimate when the run had a budget): never
a silent $0.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import mmap
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import text

#: the size of a journal file (preallocated; an entry that does not fit starts the next file)
SEGMENT_BYTES = 1024 * 1024
SUFFIX = ".wal"
KILLED = "interrupted: the call was in flight when its process was killed (recorded when the store was next opened)"


def journal_dir(store_path: os.PathLike | str) -> Path:
    return Path(f"{os.fspath(store_path)}.inflight")


def has_entries(store_path: os.PathLike | str) -> bool:
    """True when a journal file exists for this store (a live or a dead writer's)."""
    try:
        return any(n.endswith(SUFFIX) for n in os.listdir(journal_dir(store_path)))
    except OSError:
        return False


class _Segment:
    """One journal file, preallocated and mapped: an entry is a copy into shared memory
    (no system call, the GIL kept), in the kernel's page cache at once."""

    __slots__ = ("fd", "path", "map", "pos", "open_keys")

    def __init__(self, fd: int, path: Path, capacity: int):
        self.fd, self.path, self.pos = fd, path, 0
        self.map = mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.open_keys: set[str] = set()

    def fits(self, n: int) -> bool:
        return self.pos + n <= len(self.map)

    def write(self, data: bytes) -> None:
        end = self.pos + len(data)
        self.map[self.pos : end] = data
        self.pos = end


class Journal:
    """This process's journal for one store (thread-safe; see the module docstring)."""

    def __init__(self, store_path: os.PathLike | str):
        self.dir = journal_dir(store_path)
        self.pid = os.getpid()
        self.token = secrets.token_hex(4)
        self._seq = 0
        self._lock = threading.Lock()
        self._current: Optional[_Segment] = None
        self._segments: dict[str, _Segment] = {}  # key -> its segment (while unsettled)
        self._n = 0
        self.broken: Optional[str] = None  # why the journal could not be written (then calls go unjournaled)

    def _open_segment(self, capacity: int) -> _Segment:
        self._n += 1
        path = self.dir / f"{self.pid}-{self.token}-{self._n}{SUFFIX}"
        for attempt in range(3):
            self.dir.mkdir(mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileNotFoundError:  # another process removed the empty folder meanwhile
                if attempt == 2:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else holds it
            os.posix_fallocate(fd, 0, capacity)  # the blocks exist now: a full disk fails here, not in a write
            return _Segment(fd, path, capacity)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise

    def begin(self, row: dict) -> Optional[str]:
        """Record ``row`` (the row of this call if it never ends) before the call is
        sent; sets and returns its ``journal_key``. ``None`` when the journal cannot be
        written (a full disk: the call still goes out, as before the journal existed)."""
        with self._lock:
            if self.broken is not None:
                return None
            self._seq += 1
            key = f"{self.token}.{self._seq}"
            row["journal_key"] = key
            line = (json.dumps({"b": key, "row": row}, ensure_ascii=False, default=str) + "\n").encode()
            try:
                seg = self._current
                if seg is None or not seg.fits(len(line)):
                    self._retire(seg)
                    seg = self._current = self._open_segment(max(SEGMENT_BYTES, len(line)))
                seg.write(line)
            except (OSError, ValueError) as exc:
                self.broken = str(exc)
                row["journal_key"] = None
                return None
            seg.open_keys.add(key)
            self._segments[key] = seg
            return key

    def settle(self, keys: Iterable[Optional[str]]) -> None:
        """The rows with these keys are committed: their entries are done."""
        with self._lock:
            by_seg: dict[int, tuple[_Segment, list[str]]] = {}
            for k in keys:
                seg = self._segments.pop(k, None) if k else None
                if seg is not None:
                    by_seg.setdefault(id(seg), (seg, []))[1].append(k)  # type: ignore[arg-type]
            for seg, done in by_seg.values():
                seg.open_keys.difference_update(done)
                if seg is not self._current and not seg.open_keys:
                    _remove(seg)
                    continue
                line = (json.dumps({"s": done}) + "\n").encode()
                if seg.fits(len(line)):  # a full file: reconcile finds the committed rows by key
                    seg.write(line)

    def _retire(self, seg: Optional[_Segment]) -> None:
        if seg is not None and not seg.open_keys:
            _remove(seg)

    def close(self) -> None:
        """Remove the files whose entries are all settled (the others stay for :func:`reconcile`)."""
        with self._lock:
            segs = {id(s): s for s in self._segments.values()}
            if self._current is not None:
                segs[id(self._current)] = self._current
            for seg in segs.values():
                if seg.open_keys:
                    seg.map.close()
                    os.close(seg.fd)  # the lock goes with it: the next open reconciles them
                else:
                    _remove(seg)
            self._current = None
            self._segments.clear()
            try:
                self.dir.rmdir()  # only when empty: no other process's file, nothing left to reconcile
            except OSError:
                pass


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove(seg: _Segment) -> None:
    _unlink(seg.path)
    seg.map.close()
    try:
        os.close(seg.fd)
    except OSError:
        pass


_journals: dict[str, Journal] = {}
_journals_lock = threading.Lock()


def journal_for(store: Any) -> Journal:
    """The journal of this process for ``store`` (one per store path; a forked child gets its own)."""
    key = str(store.path)
    with _journals_lock:
        j = _journals.get(key)
        if j is None or j.pid != os.getpid():
            j = _journals[key] = Journal(store.path)
        return j


@atexit.register
def _close_all() -> None:
    for j in list(_journals.values()):
        if j.pid == os.getpid():
            j.close()


# --------------------------------------------------------------------------- reconcile


def reconcile(store: Any, before_write: Optional[Callable[[], None]] = None) -> int:
    """Turn the unsettled entries of dead writers into ``llm_calls`` rows (status
    interrupted); returns how many rows were added. Files of live writers (this
    process's included) are left alone. ``before_write`` (e.g. an integrity check) is
    called once before the first insert; what it raises leaves the files for later."""
    d = journal_dir(store.path)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX))
    except OSError:
        return 0
    added = 0
    for name in names:
        path = d / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            if not os.path.exists(path):
                continue  # another reconciler finished it while we waited
            pending = _unsettled(fd)
            if pending:
                if before_write is not None:
                    before_write()
                    before_write = None
                added += _insert_missing(store, pending)
            os.unlink(path)
        finally:
            os.close(fd)
    try:
        d.rmdir()  # only when empty
    except OSError:
        pass
    return added


def _unsettled(fd: int) -> dict[str, dict]:
    begun: dict[str, dict] = {}
    settled: set[str] = set()
    with os.fdopen(os.dup(fd), "rb") as fh:
        data = fh.read().split(b"\0", 1)[0]  # the preallocated rest of the file is zeros
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last entry (killed while copying it): its call was never sent
        if isinstance(entry, dict):
            if "b" in entry and isinstance(entry.get("row"), dict):
                begun[entry["b"]] = entry["row"]
            elif "s" in entry:
                settled.update(entry["s"])
    return {k: r for k, r in begun.items() if k not in settled}


def _insert_missing(store: Any, pending: dict[str, dict]) -> int:
    def txn(session: Any) -> int:
        conn = session.connection()
        keys = list(pending)
        present: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ", ".join(f":k{j}" for j in range(len(chunk)))
            res = conn.execute(
                text(f"SELECT journal_key FROM llm_calls WHERE journal_key IN ({marks})"),
                {f"k{j}": k for j, k in enumerate(chunk)},
            )
            present.update(r[0] for r in res)
        rows = [_killed_row(pending[k]) for k in keys if k not in present]
        for row in rows:
            cols = ", ".join(row)
            conn.execute(text(f"INSERT INTO llm_calls ({cols}) VALUES ({', '.join(':' + c for c in row)})"), row)
        return len(rows)

    return int(store.transact(txn))


_COLUMNS = (
    "run_id",
    "role",
    "provider",
    "model",
    "request_hash",
    "sample_index",
    "messages_json",
    "params_json",
    "latency_s",
    "cached",
    "error",
    "created_at",
    "journal_key",
)


def _killed_row(row: dict) -> dict:
    out = {c: row.get(c) for c in _COLUMNS}
    worst = row.get("worst_case_usd")
    cost = f"its cost is unknown (at most ${float(worst):.4f})" if worst else "its cost is unknown"
    out.update(
        error=f"{KILLED}; {cost}",
        cached=0,
        latency_s=None,
        messages_json=out["messages_json"] or "[]",
        params_json=out["params_json"] or "{}",
    )
    out["sample_index"] = int(out["sample_index"] or 0)
    return out
