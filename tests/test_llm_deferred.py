"""The router's store round trips: the in-memory cache index and background call logging.

Real loopback server, real SQLite; the database statements are counted with
SQLAlchemy's own event hook.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers.llm_calls import rows
from helpers.openai_server import OpenAIServer, openai_server  # noqa: F401 - fixture
from sqlalchemy import event

from aflowctl.config import LLMConfig, ModelConfig
from aflowctl.errors import BudgetExceeded
from aflowctl.llm import cache as cache_mod
from aflowctl.llm import calllog
from aflowctl.llm.client import make_llm
from aflowctl.llm.router import deferred_logging, flush_logs
from aflowctl.store import open_store

MODEL = "openai/gpt-4o-mini"  # priced in litellm's bundled map


def make(server, store, *, run_id="run1", **cfg):
    return make_llm(ModelConfig(model=MODEL, api_base=server.url), role="executor", run_id=run_id, store=store,
                    llm_cfg=LLMConfig(backoff_base_s=0.01, backoff_max_s=0.05, **cfg))


class StatementCounter:
    """Counts SQL statements on a store's engine that mention ``llm_calls``."""

    def __init__(self, store):
        self.engine = store.engine
        self.selects = 0
        self.inserts = 0

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany):
        if "llm_calls" in statement:
            if statement.lstrip().upper().startswith("SELECT"):
                self.selects += 1
            elif statement.lstrip().upper().startswith("INSERT"):
                self.inserts += 1


def test_misses_cost_no_database_lookup_after_the_first(openai_server, tmp_path):
    store = open_store(tmp_path / "a.db")
    llm = make(openai_server, store)

    async def go():
        await llm.generate("warm up")
        with StatementCounter(store) as counter:
            await asyncio.gather(*(llm.generate(f"question {i}") for i in range(40)))
        return counter

    counter = asyncio.run(go())
    assert openai_server.count == 41
    assert counter.selects == 0  # 40 misses decided in memory
    assert counter.inserts >= 1
    assert len(rows(store.path)) == 41


def test_rows_from_an_earlier_process_are_served_and_new_rows_seen_after_invalidation(openai_server, tmp_path):
    db = tmp_path / "a.db"
    # "an earlier process": another store object, its rows committed before ours starts
    asyncio.run(make(openai_server, open_store(db, cached=False)).generate("old"))
    llm = make(openai_server, open_store(db))
    assert asyncio.run(llm.generate("old")).cached
    # a row committed by someone else after our index was loaded
    asyncio.run(make(openai_server, open_store(db, cached=False)).generate("new"))
    assert openai_server.count == 2
    cache_mod.invalidate_indexes()  # what a rollout worker does at the start of each task
    assert asyncio.run(llm.generate("new")).cached
    assert openai_server.count == 2
    assert [r["cached"] for r in rows(db)] == [0, 1, 0, 1]


def test_cache_scope_and_cache_off_rows_are_respected_by_the_index(openai_server, tmp_path):
    db = tmp_path / "a.db"
    store = open_store(db)
    asyncio.run(make(openai_server, store, run_id="a", cache="off").generate("q"))  # not cacheable
    asyncio.run(make(openai_server, store, run_id="b").generate("q"))
    assert not asyncio.run(make(openai_server, store, run_id="a").generate("q")).cached  # other run: miss
    assert asyncio.run(make(openai_server, store, run_id="c", cache_scope="global").generate("q")).cached
    assert openai_server.count == 3


def test_deferred_logging_returns_before_the_commit_and_flush_commits_everything(openai_server, tmp_path):
    store = open_store(tmp_path / "a.db")
    llm = make(openai_server, store)
    seen: dict = {}

    async def go():
        with deferred_logging():
            samples = await asyncio.gather(*(llm.generate(f"q{i}") for i in range(20)))
            seen["right_after"] = len(rows(store.path))  # no await since the last call returned
            again = await llm.generate("q0")  # our own answer, served before it is committed
        await flush_logs()
        seen["after_flush"] = len(rows(store.path))
        return samples, again

    samples, again = asyncio.run(go())
    assert len(samples) == 20 and again.cached and again.text == samples[0].text
    assert seen["right_after"] < 21
    assert seen["after_flush"] == 21
    logged = rows(store.path)
    assert {(r["run_id"], r["role"]) for r in logged} == {("run1", "executor")}
    assert sum(r["cached"] for r in logged) == 1
    assert openai_server.count == 20


def test_failed_calls_are_logged_in_deferred_mode(openai_server, tmp_path):
    store = open_store(tmp_path / "a.db")
    llm = make(openai_server, store, max_retries=1)
    openai_server.fail_next([500, 500])

    async def go():
        with deferred_logging():
            with pytest.raises(Exception, match="gave up"):
                await llm.generate("x")
        await llm.flush()

    asyncio.run(go())
    logged = rows(store.path)
    assert len(logged) == 2 and all(r["error"] for r in logged)
    assert {(r["run_id"], r["role"]) for r in logged} == {("run1", "executor")}


def _expensive(messages, body):
    return {"content": "pricey", "completion_tokens": 100_000}  # 100k * 6e-7 = $0.06


def test_unflushed_costs_count_against_the_budget(tmp_path):
    store = open_store(tmp_path / "a.db")
    with OpenAIServer(responder=_expensive) as server:
        # $0.06 spent + the second call's worst case (10k tokens * 6e-7 = $0.006) passes $0.065
        llm = make(server, store, budget_usd=0.065)

        async def go():
            with deferred_logging():
                await llm.generate("first", max_tokens=10)
                # nothing is committed yet: only the unflushed ledger knows about the $0.06
                assert rows(store.path) == []
                assert calllog.unflushed(store, "run1") == pytest.approx(0.06, rel=0.01)
                with pytest.raises(BudgetExceeded, match=r"\$0\.06"):
                    await llm.generate("second", max_tokens=10_000)
            await flush_logs()

        asyncio.run(go())
        assert server.count == 1
        assert calllog.unflushed(store, "run1") == 0.0
    assert len(rows(store.path)) == 1
