"""The rollout pool with the real spawn process pool and the selftest worker."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aflowctl.config import RolloutConfig
from aflowctl.rollout.importer import ImportFromStringError, import_from_string, resolve_worker
from aflowctl.rollout.pool import RolloutPool, TaskSpec, task_key
from aflowctl.store import open_store

SELFTEST = "aflowctl.rollout.worker:selftest"


# --------------------------------------------------------------------------- importer


@pytest.fixture
def fixture_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "rw_fixtures"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("def work(payload):\n    return payload\nclass K:\n    class Inner:\n        x = 1\n")
    (pkg / "broken_import.py").write_text("import a_module_that_does_not_exist_xyz\n")
    (pkg / "raises.py").write_text("raise ImportError('inner failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rw_fixtures"
    for name in list(sys.modules):
        if name.startswith("rw_fixtures"):
            del sys.modules[name]


def test_import_from_string_ok(fixture_modules):
    assert import_from_string("rw_fixtures.good:work")({"a": 1}) == {"a": 1}
    assert import_from_string("rw_fixtures.good:K.Inner").x == 1


@pytest.mark.parametrize("bad", ["no_colon", "mod:", ":attr", "a:b:c"])
def test_import_bad_format(bad):
    with pytest.raises(ImportFromStringError, match="format"):
        import_from_string(bad)


def test_import_missing_module(fixture_modules):
    with pytest.raises(ImportFromStringError, match="could not import module 'rw_fixtures.nope'"):
        import_from_string("rw_fixtures.nope:work")
    with pytest.raises(ImportFromStringError, match="could not import module"):
        import_from_string("totally_missing_pkg_abc.sub:work")


def test_import_missing_attribute(fixture_modules):
    with pytest.raises(ImportFromStringError, match="attribute 'nope' not found"):
        import_from_string("rw_fixtures.good:nope")


def test_import_inner_errors_are_reraised(fixture_modules):
    with pytest.raises(ModuleNotFoundError) as info:
        import_from_string("rw_fixtures.broken_import:work")
    assert info.value.name == "a_module_that_does_not_exist_xyz"
    assert not isinstance(info.value, ImportFromStringError)
    with pytest.raises(ImportError, match="inner failure"):
        import_from_string("rw_fixtures.raises:x")


def test_resolve_worker_by_entry_point_and_string():
    from aflowctl.rollout import worker

    assert resolve_worker("evaluate") is worker.evaluate
    assert resolve_worker(SELFTEST) is worker.selftest
    with pytest.raises(ImportFromStringError, match="unknown rollout worker 'nope'.*evaluate"):
        resolve_worker("nope")


def test_error_envelope_is_plain_json(monkeypatch):
    from aflowctl.rollout import worker

    # run_task initialises the process it runs in as a worker (Ctrl-C ignored, logging
    # replaced): this process is pytest's, so it counts as initialised already
    monkeypatch.setattr(worker, "_initialized", True)

    env = json.loads(worker.run_task(SELFTEST, "k", {"crash": "raise"}))
    assert env["ok"] is False and env["retryable"] is True
    assert env["error"] == "RuntimeError: selftest asked to raise"
    env = json.loads(worker.run_task(SELFTEST, "k", {"crash": "error"}))
    assert env["retryable"] is False and env["error_type"] == "AflowctlError"
    env = json.loads(worker.run_task("aflowctl.rollout.worker:nothing", "k", {}))
    assert "attribute 'nothing' not found" in env["error"]


# --------------------------------------------------------------------------- pool


def _rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM rollout_tasks ORDER BY id")]
    conn.close()
    return rows


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def pool_env(tmp_path_factory):
    """One pool for the module's tests (spawning workers costs ~1 s)."""
    home = tmp_path_factory.mktemp("pool_home")
    store = open_store(home / "pool.db", cached=False)
    pool = RolloutPool(store, RolloutConfig(workers=2, max_attempts=3, task_timeout_s=20), options={"load_plugins": "", "confine": False})
    pool.start()
    yield pool
    pool.close()
    store.dispose()


def test_run_and_reuse(pool_env, tmp_path):
    pool = pool_env
    log = tmp_path / "log.txt"
    specs = [TaskSpec({"echo": i, "log": str(log), "tag": f"t{i}", "nonce": str(tmp_path)}, worker=SELFTEST, label=f"t{i}") for i in range(5)]
    seen = []
    out = pool.run(specs, progress=seen.append)
    assert [o.status for o in out] == ["done"] * 5
    assert [o.result["echo"] for o in out] == list(range(5))
    assert len({o.result["pid"] for o in out} - {os.getpid()}) >= 1  # ran in other processes
    assert len(_lines(log)) == 5
    assert seen[-1].done == 5 and seen[-1].total == 5
    rows = {r["key"]: r for r in _rows(pool.store.path)}
    for o in out:
        r = rows[o.key]
        assert r["status"] == "done" and r["attempts"] == 1 and json.loads(r["result_json"])["echo"] == o.result["echo"]
    # The same work again: nothing runs, stored results come back.
    again = pool.run(specs)
    assert all(o.reused and o.status == "done" for o in again)
    assert [o.result for o in again] == [o.result for o in out]
    assert len(_lines(log)) == 5
    # A different scope is different work.
    pool.run(specs[:1], scope="other-run")
    assert len(_lines(log)) == 6


def test_key_ignores_context():
    a = TaskSpec({"x": 1}, context={"run_id": "a", "concurrency": 3})
    b = TaskSpec({"x": 1}, context={"run_id": "b", "concurrency": 9})
    assert task_key(a) == task_key(b) != task_key(TaskSpec({"x": 2}))
    assert task_key(a) != task_key(a, scope="s")


def test_worker_death_is_retried_and_others_survive(pool_env, tmp_path):
    pool = pool_env
    log = tmp_path / "log.txt"
    replaced = pool.replaced
    specs = [TaskSpec({"echo": i, "sleep": 0.3, "log": str(log), "tag": f"ok{i}", "n": str(tmp_path)}, worker=SELFTEST) for i in range(4)]
    specs.append(TaskSpec({"echo": "once", "crash": "kill", "crash_once": str(tmp_path / "m"), "log": str(log), "tag": "once"}, worker=SELFTEST))
    specs.append(TaskSpec({"echo": "always", "crash": "kill", "log": str(log), "tag": "always", "n": str(tmp_path)}, worker=SELFTEST))
    out = pool.run(specs)
    assert [o.status for o in out[:5]] == ["done"] * 5
    assert out[4].result["echo"] == "once" and out[4].attempts == 2
    assert all(o.attempts == 1 for o in out[:4])  # innocent bystanders are not charged
    assert out[5].status == "failed" and out[5].attempts == 3
    assert "worker process died (killed by SIGKILL)" in out[5].error and "gave up after 3 attempts" in out[5].error
    tags = [line.split()[1] for line in _lines(log)]
    assert tags.count("once") == 2 and tags.count("always") == 3  # a death fails only its own task
    assert all(tags.count(f"ok{i}") == 1 for i in range(4))
    assert pool.replaced == replaced + 4  # four deaths, four replacements
    row = {r["key"]: r for r in _rows(pool.store.path)}[out[5].key]
    assert row["status"] == "failed" and "SIGKILL" in row["error"]
    # the pool still works afterwards
    assert pool.run([TaskSpec({"echo": "after", "n": str(tmp_path)}, worker=SELFTEST)])[0].status == "done"


def test_errors_user_vs_unexpected(pool_env, tmp_path):
    log = tmp_path / "log.txt"
    out = pool_env.run([
        TaskSpec({"crash": "error", "log": str(log), "tag": "user"}, worker=SELFTEST),
        TaskSpec({"crash": "raise", "log": str(log), "tag": "bug"}, worker=SELFTEST),
        TaskSpec({"crash": "exit", "crash_once": str(tmp_path / "x"), "sleep": 0.5, "log": str(log), "tag": "exit"}, worker=SELFTEST),
    ])
    assert out[0].status == "failed" and out[0].attempts == 1 and out[0].error.startswith("selftest asked to fail")
    assert out[1].status == "failed" and out[1].attempts == 3 and "RuntimeError" in out[1].error
    assert out[2].status == "done" and out[2].attempts == 2  # os._exit(3) once, then fine
    tags = [line.split()[1] for line in _lines(log)]
    assert tags.count("user") == 1 and tags.count("bug") == 3 and tags.count("exit") == 2


def test_a_killed_worker_is_replaced_and_its_task_retried_without_restarting_the_others(tmp_path):
    """SIGKILL from outside, mid-task: only that task is retried; the other worker
    keeps its process and finishes its own task undisturbed, uncharged."""
    import threading

    store = open_store(tmp_path / "k.db", cached=False)
    pool = RolloutPool(store, RolloutConfig(workers=2, max_attempts=3), options={"load_plugins": "", "confine": False})
    pool.start()  # both workers initialised
    backend = pool.backend
    before = backend.worker_pids()
    assert len(before) == 2
    log = tmp_path / "log.txt"
    slow = [TaskSpec({"echo": name, "sleep": 3.0, "log": str(log), "tag": name}, worker=SELFTEST) for name in ("a", "b")]
    box: list = []
    runner = threading.Thread(target=lambda: box.append(pool.run(slow)))
    runner.start()
    deadline = time.monotonic() + 30
    while len({line.split()[0] for line in _lines(log)}) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (victim, victim_tag), (bystander, bystander_tag) = ((int(a), b) for a, b in (line.split() for line in _lines(log)[:2]))
    assert victim != bystander
    os.kill(victim, signal.SIGKILL)
    runner.join(60)
    after = backend.worker_pids()
    pool.close()
    store.dispose()
    out = box[0]
    assert [o.status for o in out] == ["done", "done"]
    by_tag = {o.result["echo"]: o for o in out}
    assert by_tag[bystander_tag].attempts == 1 and by_tag[bystander_tag].result["pid"] == bystander  # undisturbed
    retried = by_tag[victim_tag]
    assert retried.attempts == 2 and retried.result["pid"] != victim
    assert [line.split()[1] for line in _lines(log)].count(bystander_tag) == 1
    assert bystander in after and victim not in after and len(after) == 2
    assert backend.replaced == 1 and backend.rebuilds == 0


def test_task_timeout_kills_the_worker(tmp_path):
    store = open_store(tmp_path / "t.db", cached=False)
    with RolloutPool(store, RolloutConfig(workers=1, task_timeout_s=1.0), options={"load_plugins": "", "confine": False}) as pool:
        t0 = time.monotonic()
        out = pool.run([TaskSpec({"sleep": 60}, worker=SELFTEST), TaskSpec({"echo": 2}, worker=SELFTEST)])
        assert time.monotonic() - t0 < 15
    assert out[0].status == "failed" and "timed out after 1 s" in out[0].error
    assert out[1].status == "done"
    store.dispose()


def test_unknown_worker_fails_the_task_with_a_clear_reason(pool_env):
    out = pool_env.run([TaskSpec({}, worker="aflowctl.rollout.worker:nope")])
    assert out[0].status == "failed" and "attribute 'nope' not found" in out[0].error and out[0].attempts == 1
    # rebuilt as its own class (it lives in aflowctl.rollout.importer, not aflowctl.errors)
    exc = out[0].exception()
    assert type(exc) is ImportFromStringError
    assert exc.message == "attribute 'nope' not found in module 'aflowctl.rollout.worker'"
    assert exc.hint == "check the name after the colon"


def test_worker_error_classes_are_rebuilt_only_from_modules_already_loaded_here():
    from aflowctl.errors import BudgetExceeded
    from aflowctl.rollout.backend import RolloutError, rebuild_error

    exc = rebuild_error({"error_class": "aflowctl.errors:BudgetExceeded", "message": "cap", "hint": "raise it"}, "x")
    assert type(exc) is BudgetExceeded and (exc.message, exc.hint) == ("cap", "raise it")
    # not an AflowctlError, or a module this process never imported: nothing is imported on a worker's word
    for cls in ("os:system", "builtins:ValueError", "a_module_nobody_imported_xyz:Boom", "aflowctl.errors:AflowctlError"):
        assert type(rebuild_error({"error_class": cls, "message": "m"}, "text")) is RolloutError
    assert "a_module_nobody_imported_xyz" not in sys.modules


DRIVER = textwrap.dedent(
    """
    import sys
    from aflowctl.config import RolloutConfig
    from aflowctl.rollout.pool import RolloutPool, TaskSpec
    from aflowctl.store import open_store

    if __name__ == "__main__":
        db, log = sys.argv[1], sys.argv[2]
        store = open_store(db)
        specs = [TaskSpec({"echo": i, "sleep": 0.4, "log": log, "tag": f"t{i}"},
                          worker="aflowctl.rollout.worker:selftest") for i in range(12)]
        with RolloutPool(store, RolloutConfig(workers=2), options={"load_plugins": "", "confine": False}) as pool:
            out = pool.run(specs)
        print(sum(o.status == "done" for o in out), sum(o.reused for o in out))
    """
)


def test_resume_after_kill_9_of_the_parent(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    db, log = tmp_path / "k.db", tmp_path / "log.txt"
    proc = subprocess.Popen([sys.executable, str(driver), str(db), str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    done_before: list[dict] = []
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if db.exists():
            try:
                done_before = [r for r in _rows(db) if r["status"] == "done"]
            except sqlite3.OperationalError:
                continue
            if len(done_before) >= 3:
                break
    assert len(done_before) >= 3, proc.communicate(timeout=30)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only; its workers notice and exit
    proc.wait(timeout=10)
    time.sleep(1.0)  # let tasks that were running in orphaned workers end
    rows = _rows(db)
    assert len(rows) == 12  # every task recorded before submission
    done_keys = {r["key"]: r for r in rows if r["status"] == "done"}
    assert 3 <= len(done_keys) < 12
    runs_before = {line.split()[1] for line in _lines(log)}

    res = subprocess.run([sys.executable, str(driver), str(db), str(log)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    n_done, n_reused = map(int, res.stdout.split())
    assert n_done == 12 and n_reused == len(done_keys)
    rows_after = {r["key"]: r for r in _rows(db)}
    assert len(rows_after) == 12 and all(r["status"] == "done" for r in rows_after.values())
    for key, r in done_keys.items():  # finished work was not redone
        assert rows_after[key]["attempts"] == r["attempts"] == 1
        assert rows_after[key]["result_json"] == r["result_json"]
    tags = [line.split()[1] for line in _lines(log)]
    done_tags = {json.loads(r["payload_json"])["tag"] for r in done_keys.values()}
    for tag in done_tags:
        assert tags.count(tag) == 1, (tag, tags)
    assert set(tags) == {f"t{i}" for i in range(12)}
    assert done_tags <= runs_before
