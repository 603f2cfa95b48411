"""Store: round trips, migrations from every earlier version, refusal of bad files."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aflowctl.errors import StoreError
from aflowctl.store import Evaluation, LLMCall, Run, Workflow, open_store, utcnow
from aflowctl.store import db as dbmod
from aflowctl.store import migrations
from aflowctl.store.models import ALL_TABLES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "s.db", cached=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(), score=st.floats(allow_nan=False, allow_infinity=False), payload=json_values)
def test_round_trip_any_text_float_json(store, text, score, payload):
    now = utcnow()
    with store.write() as s:
        run = Run(id=f"r-{abs(hash((text, score)))}-{now}", kind="optimize", created_at=now, updated_at=now, config_json=json.dumps(payload))
        s.add(run)
        s.flush()
        wf = Workflow(run_id=run.id, graph_code=text, prompt_code=text[::-1], hash="h", created_at=now)
        s.add(wf)
        s.flush()
        ev = Evaluation(workflow_id=wf.id, run_id=run.id, dataset="d", split="validate", score=score, n=1, created_at=now,
                        details_json=json.dumps(payload))
        s.add(ev)
        s.flush()
        ids = (run.id, wf.id, ev.id)
    with store.read() as s:
        run2 = s.get(Run, ids[0])
        wf2 = s.get(Workflow, ids[1])
        ev2 = s.get(Evaluation, ids[2])
        assert json.loads(run2.config_json) == payload
        assert wf2.graph_code == text and wf2.prompt_code == text[::-1]
        assert ev2.score == score or (math.isclose(ev2.score, score) and score == 0.0)
        assert json.loads(ev2.details_json) == payload


def test_pragmas_and_version(store):
    assert store.journal_mode() == "wal"
    assert store.schema_version() == migrations.SCHEMA_VERSION
    with store.read() as s:
        fk = s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar()
        bt = s.connection().exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert fk == 1 and bt == dbmod.BUSY_TIMEOUT_MS


def test_models_match_migrated_schema(store):
    conn = sqlite3.connect(store.path)
    for model in ALL_TABLES:
        table = model.__tablename__
        cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
        assert cols == set(model.model_fields), f"{table}: schema {sorted(cols)} vs model {sorted(model.model_fields)}"


@pytest.mark.parametrize("version", range(0, migrations.SCHEMA_VERSION))
def test_every_earlier_version_upgrades(tmp_path, version):
    p = tmp_path / f"v{version}.db"
    conn = dbmod._connect_raw(p)
    dbmod.migrate(conn, target=version)
    if version >= 1:  # data written at that version survives the upgrade
        conn.execute("INSERT INTO runs(id, kind, created_at, updated_at) VALUES ('old', 'optimize', 'x', 'x')")
    conn.close()
    store = open_store(p, cached=False)
    assert store.schema_version() == migrations.SCHEMA_VERSION
    if version >= 1:
        with store.read() as s:
            assert s.get(Run, "old").kind == "optimize"


def test_newer_database_refused_and_untouched(tmp_path):
    p = tmp_path / "new.db"
    open_store(p, cached=False).dispose()
    conn = sqlite3.connect(p)
    conn.execute("INSERT INTO _aflowctl_migrations VALUES (999, 'future', 'x')")
    conn.commit()
    conn.close()
    before = p.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        open_store(p, cached=False)
    assert p.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a database at all" * 10, b"SQLite format 3\x00" + b"\x00" * 100])
def test_corrupt_or_truncated_refused_and_untouched(tmp_path, content):
    p = tmp_path / "bad.db"
    p.write_bytes(content)
    with pytest.raises(StoreError, match="not an SQLite database|unreadable"):
        open_store(p, cached=False)
    assert p.read_bytes() == content


def test_truncated_real_database_refused(tmp_path):
    p = tmp_path / "t.db"
    s = open_store(p, cached=False)
    now = utcnow()
    with s.write() as ses:
        for i in range(300):
            ses.add(LLMCall(provider="p", model="m", request_hash=str(i), response="x" * 500, created_at=now))
    s.dispose()
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    truncated = p.read_bytes()
    with pytest.raises(StoreError):
        open_store(p, cached=False)
    assert p.read_bytes() == truncated


def test_unwritable_directory(tmp_path):
    import os

    if os.geteuid() == 0:
        # root ignores permission bits: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub" / "a.db"
    else:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        target = d / "a.db"
    with pytest.raises(StoreError, match="writable|cannot create"):
        open_store(target, cached=False)


def _writer(path: str, proc: int, n: int) -> int:
    from aflowctl.store import open_store as _open

    st_ = _open(path, cached=False)
    errors = 0
    for i in range(n):
        def work(s, i=i):
            # read-then-write, the pattern that fails under a plain BEGIN
            s.connection().exec_driver_sql("SELECT COUNT(*) FROM llm_calls").scalar()
            s.add(LLMCall(provider="p", model="m", request_hash=f"{proc}-{i}", created_at=utcnow()))

        try:
            st_.transact(work)
        except Exception:  # noqa: BLE001
            errors += 1
    return errors


def test_many_processes_write_without_lock_errors(tmp_path):
    p = str(tmp_path / "mp.db")
    open_store(p, cached=False).dispose()
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        errors = pool.starmap(_writer, [(p, k, 100) for k in range(4)])
    assert errors == [0, 0, 0, 0]
    conn = sqlite3.connect(p)
    assert conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0] == 400
