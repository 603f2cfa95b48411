"""Opening the store: engine, pragmas, migrations, transactions.

WAL mode, ``busy_timeout`` and foreign keys are set on every connection. Write
transactions start with ``BEGIN IMMEDIATE`` (a read-then-write transaction that
starts with a plain ``BEGIN`` under WAL fails with "database is locked" at once,
ignoring busy_timeout), so many processes can write to one store: each waits its
turn, and :meth:`Store.transact` retries the rare lock that outlasts the timeout.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session

from aflowctl.errors import StoreError
from aflowctl.store import migrations

BUSY_TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"
T = TypeVar("T")


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(kind: str) -> str:
    """A fresh run id: ``<kind>-<UTC time>-<4 hex>`` (e.g. ``opt-20261126-110328-ae85``)."""
    import secrets

    return f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _check_file(path: Path) -> None:
    """Refuse a file that is not an SQLite database, without touching it."""
    if not path.exists():
        return
    if path.is_dir():
        raise StoreError(f"database path {path} is a directory", "pass a file path with --db or AFLOWCTL_DB")
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as fh:
        header = fh.read(16)
    if header != SQLITE_HEADER or size < 512:
        raise StoreError(
            f"database file {path} is not an SQLite database (corrupt or truncated)",
            "restore it from a backup, or point --db/AFLOWCTL_HOME at another location; the file was left untouched",
        )


def _connect_raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def schema_version_of(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='_aflowctl_migrations'").fetchone()
    if row is None:
        return 0
    v = conn.execute("SELECT MAX(version) FROM _aflowctl_migrations").fetchone()[0]
    return int(v or 0)


def migrate(conn: sqlite3.Connection, target: int | None = None) -> list[int]:
    """Apply pending migrations (up to ``target``) in one immediate transaction each."""
    applied = []
    target = migrations.SCHEMA_VERSION if target is None else target
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _aflowctl_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for number, name, fn in migrations.MIGRATIONS:
        if number > target:
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version_of(conn) >= number:  # another process got there first
                conn.execute("ROLLBACK")
                continue
            # executescript would COMMIT our transaction; run the statements one by one.
            _run_in_transaction(conn, fn)
            conn.execute(
                "INSERT INTO _aflowctl_migrations(version, name, applied_at) VALUES (?, ?, ?)",
                (number, name, utcnow()),
            )
            conn.execute("COMMIT")
            applied.append(number)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return applied


def store_error(exc: BaseException, path: Path) -> StoreError | None:
    """A damaged or read-only store as one line (no SQL, no parameters); None for other errors."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError):
        return None
    msg = str(exc)
    if "readonly" in msg or "read-only" in msg:
        return StoreError(
            f"cannot write the store {path}: it is read-only ({msg})",
            "make the file and its folder writable, or point --db/AFLOWCTL_HOME at a writable location",
        )
    if any(m in msg for m in ("malformed", "not a database", "disk I/O", "file is not", "corrupt")):
        return StoreError(
            f"the store {path} is damaged ({msg})",
            "restore it from a backup, or point --db/AFLOWCTL_HOME at another location",
        )
    return None


class _NoCommitScript:
    """Lets a migration call ``executescript`` inside our transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def executescript(self, script: str) -> None:
        for stmt in _split_sql(script):
            self._conn.execute(stmt)

    def execute(self, *args, **kwargs):
        return self._conn.execute(*args, **kwargs)


def _split_sql(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _run_in_transaction(conn: sqlite3.Connection, fn) -> None:
    fn(_NoCommitScript(conn))


class Store:
    """An opened, migrated store."""

    def __init__(self, path: Path):
        self.path = path
        url = f"sqlite:///{path}"
        args = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        self.engine = create_engine(url, connect_args=args)
        self.read_engine = create_engine(url, connect_args=args)
        for eng, immediate in ((self.engine, True), (self.read_engine, False)):
            self._install_listeners(eng, immediate, path)

    def check_integrity(self) -> None:
        """``PRAGMA quick_check``: raise StoreError (one line) unless the store is intact."""
        try:
            conn = _connect_raw(self.path)
            try:
                rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        if rows != ["ok"]:
            raise StoreError(
                f"the store {self.path} is damaged (integrity check: {rows[0][:120]})",
                "restore it from a backup, or point --db/AFLOWCTL_HOME at another location; nothing was written",
            )

    @staticmethod
    def _install_listeners(engine, immediate: bool, path: Path) -> None:
        @event.listens_for(engine, "handle_error")
        def _on_error(ctx):
            err = store_error(ctx.original_exception, path)
            if err is not None:
                raise err from None

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session:
            yield session

    def transact(self, fn: Callable[[Session], T], *, attempts: int = 8) -> T:
        """Run ``fn(session)`` in a write transaction, retrying on a lock that outlasts the timeout."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                with self.write() as session:
                    return fn(session)
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def schema_version(self) -> int:
        conn = _connect_raw(self.path)
        try:
            return schema_version_of(conn)
        finally:
            conn.close()

    def journal_mode(self) -> str:
        conn = _connect_raw(self.path)
        try:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


_open_stores: dict[str, Store] = {}


def open_store(path: str | os.PathLike | None = None, *, cached: bool = True) -> Store:
    """Open (creating and migrating if needed) the store at ``path``.

    Raises :class:`StoreError` for a corrupt file, an unwritable location, or a
    database written by a newer aflowctl; none of these modify the file.
    """
    from aflowctl import paths

    p = paths.db_path(path)
    key = str(p.resolve()) if p.exists() else str(p.absolute())
    if cached and key in _open_stores:
        return _open_stores[key]
    _check_file(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the data directory {p.parent}: {exc.strerror}",
            "set AFLOWCTL_HOME (or --db) to a writable location",
        ) from None
    if not p.exists() and not os.access(p.parent, os.W_OK):
        raise StoreError(
            f"the data directory {p.parent} is not writable",
            "set AFLOWCTL_HOME (or --db) to a writable location",
        )
    try:
        conn = _connect_raw(p)
        try:
            version = schema_version_of(conn)
            if version > migrations.SCHEMA_VERSION:
                from aflowctl import __version__

                raise StoreError(
                    f"database {p} has schema version {version}, newer than this aflowctl "
                    f"({__version__}) understands ({migrations.SCHEMA_VERSION})",
                    "upgrade aflowctl (pip install -U aflowctl) or use another --db; the database was left untouched",
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(
                    f"cannot enable WAL mode on {p} (got {mode})", "put the database on a local file system"
                )
            migrate(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        msg = str(exc)
        if "readonly" in msg or "unable to open" in msg:
            raise StoreError(
                f"cannot write the database {p}: {msg}", "set AFLOWCTL_HOME (or --db) to a writable location"
            ) from None
        raise StoreError(
            f"database file {p} is unreadable ({msg})",
            "restore it from a backup, or point --db/AFLOWCTL_HOME elsewhere; the file was left untouched",
        ) from None
    store = Store(p)
    _reconcile_calls(store)
    if cached:
        _open_stores[key] = store
    return store


def _reconcile_calls(store: Store) -> None:
    """Record the LLM calls that a killed process had in flight (:mod:`aflowctl.store.calljournal`).
    A store that cannot be written now keeps its journal for the next open."""
    from aflowctl.store import calljournal

    if not calljournal.has_entries(store.path):
        return
    try:  # never write into a damaged store, not even these rows
        added = calljournal.reconcile(store, before_write=store.check_integrity)
    except (StoreError, OSError, sqlite3.Error, SQLAlchemyError) as exc:
        from loguru import logger

        logger.warning("calls in flight of a killed process are not recorded yet: {}", exc)
        return
    if added:
        from loguru import logger

        logger.info("recorded {} LLM call(s) that a killed process had in flight, as interrupted", added)


def close_all() -> None:
    for s in _open_stores.values():
        s.dispose()
    _open_stores.clear()
