"""The LLM layer against a real loopback OpenAI-compatible server and litellm's mock_response."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import pickle
import socket
import time

import pytest
from helpers.llm_calls import rows
from helpers.openai_server import OpenAIServer, openai_server  # noqa: F401 - fixture

from aflowctl import plugins
from aflowctl.config import LLMConfig, ModelConfig
from aflowctl.errors import BudgetExceeded, ProviderError
from aflowctl.hookspecs import hookimpl
from aflowctl.llm.client import make_llm
from aflowctl.llm.providers.litellm_provider import LiteLLMProvider, convert_exception
from aflowctl.llm.types import LLMRequest, ProviderCallError, split_model

MODEL = "openai/gpt-4o-mini"  # priced in litellm's bundled map: costs are known
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.05)


def llm_for(server, db, *, transport="auto", run_id="run1", role="executor", model=MODEL, **cfg):
    return make_llm(
        ModelConfig(model=model, api_base=server.url),
        role=role,
        run_id=run_id,
        store=db,
        llm_cfg=LLMConfig(http_client=transport, **{**FAST, **cfg}),
    )


@pytest.mark.parametrize("transport", ["litellm", "direct"])
def test_openai_route_answers_counts_costs_and_logs(openai_server, tmp_path, monkeypatch, transport):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-1234567890")
    db = tmp_path / "a.db"
    llm = llm_for(openai_server, db, transport=transport)
    s = asyncio.run(llm.generate("two plus two", system="be brief", max_tokens=50, seed=3))
    assert s.text == "echo: two plus two"
    assert (s.prompt_tokens, s.completion_tokens) == (5, 4)  # word counts from the server's usage
    assert s.cost_usd == pytest.approx(5 * 1.5e-7 + 4 * 6e-7)
    assert (s.provider, s.model, s.cached) == ("openai", "gpt-4o-mini", False)
    body = openai_server.requests[-1]
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 50 and body["seed"] == 3
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert openai_server.auth_headers[-1] == "Bearer sk-test-key-1234567890"
    (row,) = rows(db)
    assert row["run_id"] == "run1" and row["role"] == "executor" and row["response"] == s.text
    assert row["request_hash"] == s.request_hash and row["cached"] == 0 and row["error"] is None
    assert json.loads(row["messages_json"])[1]["content"] == "two plus two"
    assert llm.total_cost == pytest.approx(s.cost_usd) and llm.total_tokens == 9


def test_openai_api_base_env_reaches_the_server(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    llm = make_llm(MODEL, role="executor", store=tmp_path / "a.db", llm_cfg=LLMConfig(http_client="litellm"))
    assert asyncio.run(llm.generate("hi")).text == "echo: hi"
    assert openai_server.count == 1


class MockLiteLLM(LiteLLMProvider):
    """The litellm provider with litellm's own mock_response: no HTTP at all."""

    def litellm_model(self, request):
        return "openai/" + request.model_name


def _register(provider, name):
    class Plugin:
        @hookimpl
        def register_providers(self, register):
            register(provider)

    plugins.register_plugin(Plugin(), name=name)


def test_litellm_mock_response(tmp_path):
    _register(MockLiteLLM("mock", extra={"mock_response": "mocked answer", "api_key": "x"}), "mock-plugin")
    llm = make_llm("mock/gpt-4o-mini", role="optimizer", store=tmp_path / "a.db")
    (a, b) = asyncio.run(llm.generate_n("hello", 2, temperature=1.0))
    assert a.text == b.text == "mocked answer"
    assert a.cost_usd is not None and a.cost_usd > 0  # litellm's mock usage is priced
    assert [r["sample_index"] for r in rows(tmp_path / "a.db")] == [0, 1]


def test_litellm_exceptions_are_converted_retried_and_picklable(tmp_path):
    _register(MockLiteLLM("mock", extra={"mock_response": "litellm.RateLimitError", "api_key": "x"}), "mock-plugin")
    llm = make_llm("mock/gpt-4o-mini", role="executor", store=tmp_path / "a.db", llm_cfg=LLMConfig(max_retries=2, **FAST))
    from aflowctl.errors import InfrastructureError, ProviderUnavailableError

    with pytest.raises(ProviderUnavailableError) as info:  # infrastructure: never a score, the task is retried
        asyncio.run(llm.generate("x"))
    assert isinstance(info.value, InfrastructureError) and info.value.retryable
    assert "RateLimitError" in info.value.message and "gave up after 3 attempts" in info.value.message
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is ProviderUnavailableError and back.message == info.value.message
    errs = rows(tmp_path / "a.db")
    assert len(errs) == 3 and all("RateLimitError" in r["error"] for r in errs)


def test_convert_exception_keeps_status_and_retry_after():
    import httpx
    import litellm

    resp = httpx.Response(429, headers={"retry-after": "7"}, request=httpx.Request("POST", "http://x"))
    exc = litellm.RateLimitError("slow down", llm_provider="openai", model="gpt-4o", response=resp)
    err = convert_exception(exc, MODEL, "http://x")
    assert (err.retryable, err.status, err.retry_after) == (True, 429, 7.0)
    err2 = pickle.loads(pickle.dumps(err))
    assert (err2.retryable, err2.status, err2.retry_after) == (True, 429, 7.0)


@pytest.mark.parametrize("transport", ["litellm", "direct"])
def test_retries_429_and_500_then_succeeds(openai_server, tmp_path, transport):
    openai_server.fail_next([429, 500])
    llm = llm_for(openai_server, tmp_path / "a.db", transport=transport, max_retries=3)
    assert asyncio.run(llm.generate("retry me")).text == "echo: retry me"
    assert openai_server.count == 3
    log = rows(tmp_path / "a.db")
    assert [bool(r["error"]) for r in log] == [True, True, False]
    assert "429" in log[0]["error"] and "500" in log[1]["error"]


def test_retry_after_is_honoured(openai_server, tmp_path):
    openai_server.fail_next([429], retry_after=0.4)
    llm = llm_for(openai_server, tmp_path / "a.db", transport="direct", max_retries=1)
    t0 = time.perf_counter()
    asyncio.run(llm.generate("x"))
    assert time.perf_counter() - t0 >= 0.4


def test_last_attempt_error_is_clear_and_400_is_not_retried(openai_server, tmp_path):
    openai_server.fail_next([500, 500, 500])
    llm = llm_for(openai_server, tmp_path / "a.db", transport="direct", max_retries=2)
    with pytest.raises(ProviderError, match=r"HTTP 500 from http://127\.0\.0\.1:\d+/v1/chat/completions.*gave up after 3"):
        asyncio.run(llm.generate("x"))
    openai_server.fail_next([400])
    n0 = openai_server.count
    with pytest.raises(ProviderError, match="HTTP 400"):
        asyncio.run(llm.generate("y"))
    assert openai_server.count == n0 + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", ["litellm", "direct"])
def test_unreachable_server_error_names_the_url(tmp_path, transport):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    llm = make_llm(ModelConfig(model=MODEL, api_base=url), role="executor", store=tmp_path / "a.db",
                   llm_cfg=LLMConfig(http_client=transport, max_retries=1, **FAST))
    with pytest.raises(ProviderError) as info:
        asyncio.run(llm.generate("x"))
    assert url in str(info.value) and "\n" not in str(info.value)
    assert len(rows(tmp_path / "a.db")) == 2  # both attempts logged


def test_timeout_per_call(openai_server, tmp_path):
    openai_server.latency_s = 1.0
    llm = llm_for(openai_server, tmp_path / "a.db", transport="direct", max_retries=0, timeout_s=0.2)
    t0 = time.perf_counter()
    with pytest.raises(ProviderError, match="0.2 s"):
        asyncio.run(llm.generate("x"))
    assert time.perf_counter() - t0 < 0.9


def test_per_model_concurrency_limit(openai_server, tmp_path):
    openai_server.latency_s = 0.05
    llm = llm_for(openai_server, tmp_path / "a.db", transport="direct", concurrency_per_model=3)

    async def many():
        await asyncio.gather(*(llm.generate(f"q{i}") for i in range(12)))

    asyncio.run(many())
    assert openai_server.count == 12 and openai_server.max_in_flight == 3


def test_cache_hit_on_second_identical_call(openai_server, tmp_path):
    db = tmp_path / "a.db"
    llm = llm_for(openai_server, db)
    first = asyncio.run(llm.generate("cache me", temperature=0.0))
    second = asyncio.run(llm.generate("cache me", temperature=0.0))
    assert openai_server.count == 1
    assert second.text == first.text and second.cached and second.cost_usd == 0.0
    assert [r["cached"] for r in rows(db)] == [0, 1]
    assert rows(db)[1]["cost_usd"] == 0.0
    # different sampling parameters, another run, or the cache off: a new request
    asyncio.run(llm.generate("cache me", temperature=0.5))
    asyncio.run(llm_for(openai_server, db, run_id="run2").generate("cache me", temperature=0.0))
    asyncio.run(llm_for(openai_server, db, cache="off").generate("cache me", temperature=0.0))
    assert openai_server.count == 4
    # global scope serves any run's answer
    asyncio.run(llm_for(openai_server, db, run_id="run3", cache_scope="global").generate("cache me"))
    assert openai_server.count == 4


def test_cache_modes_read_and_write(openai_server, tmp_path):
    db = tmp_path / "a.db"
    asyncio.run(llm_for(openai_server, db, cache="read").generate("q"))  # not written as cache
    asyncio.run(llm_for(openai_server, db, cache="readwrite").generate("q"))
    assert openai_server.count == 2
    asyncio.run(llm_for(openai_server, db, cache="write").generate("w"))  # written, never read
    asyncio.run(llm_for(openai_server, db, cache="write").generate("w"))
    assert openai_server.count == 4
    assert asyncio.run(llm_for(openai_server, db, cache="read").generate("w")).cached
    assert openai_server.count == 4


def test_generate_n_caches_each_sample_index(openai_server, tmp_path):
    db = tmp_path / "a.db"
    llm = llm_for(openai_server, db, transport="direct")
    three = asyncio.run(llm.generate_n("many", 3, temperature=1.0))
    five = asyncio.run(llm.generate_n("many", 5, temperature=1.0))
    assert [s.cached for s in five] == [True, True, True, False, False]
    assert [s.sample_index for s in five] == [0, 1, 2, 3, 4]
    assert openai_server.requests[0]["n"] == 3 and openai_server.requests[1]["n"] == 2
    assert [s.text for s in three] == [s.text for s in five[:3]]


def _expensive(messages, body):
    return {"content": "pricey", "completion_tokens": 100_000}  # 100k * 6e-7 = $0.06


def test_budget_stops_before_the_call_and_resume_with_higher_cap(tmp_path):
    db = tmp_path / "a.db"
    with OpenAIServer(responder=_expensive) as server:
        llm = llm_for(server, db, budget_usd=0.05)
        asyncio.run(llm.generate("first", max_tokens=10))
        with pytest.raises(BudgetExceeded) as info:
            asyncio.run(llm.generate("second", max_tokens=10))
        msg = str(info.value)
        assert "$0.05" in msg and "spent" in msg and "--budget-usd" in msg
        assert server.count == 1  # stopped before the call
        # resumed with a higher cap: the first request is served from the cache for free
        llm2 = llm_for(server, db, budget_usd=1.0)
        assert asyncio.run(llm2.generate("first", max_tokens=10)).cached
        asyncio.run(llm2.generate("second", max_tokens=10))
        assert server.count == 2
        assert pickle.loads(pickle.dumps(info.value)).message == info.value.message


def test_budget_worst_case_estimate_refuses_a_call_that_could_pass_the_cap(openai_server, tmp_path):
    llm = llm_for(openai_server, tmp_path / "a.db", budget_usd=0.001)
    with pytest.raises(BudgetExceeded, match="may cost up to"):
        asyncio.run(llm.generate("x", max_tokens=10_000))  # 10k * 6e-7 = $0.006 worst case
    assert openai_server.count == 0


def test_budget_cap_from_the_runs_table(tmp_path):
    from aflowctl.store import Run, open_store, utcnow

    db = tmp_path / "a.db"
    store = open_store(db)
    with store.write() as s:
        s.add(Run(id="capped", kind="optimize", created_at=utcnow(), updated_at=utcnow(), budget_usd=0.01))
    with OpenAIServer(responder=_expensive) as server:
        llm = make_llm(ModelConfig(model=MODEL, api_base=server.url), role="executor", run_id="capped", store=store)
        asyncio.run(llm.generate("a", max_tokens=5))
        with pytest.raises(BudgetExceeded, match="run capped"):
            asyncio.run(llm.generate("b", max_tokens=5))


def test_unknown_provider_lists_installed_ones(tmp_path):
    llm = make_llm("nosuch/model", role="executor", store=tmp_path / "a.db")
    with pytest.raises(ProviderError) as info:
        asyncio.run(llm.generate("x"))
    msg = str(info.value)
    assert "unknown provider 'nosuch'" in msg
    for name in ("openai", "anthropic", "local", "replay"):
        assert name in msg


@pytest.mark.parametrize("bad", ["gpt-4o", "openai/", "/gpt-4o", "", "open ai/x"])
def test_malformed_model_string(bad, tmp_path):
    with pytest.raises(ProviderError, match="malformed model string"):
        make_llm(ModelConfig(model=bad), role="executor", store=tmp_path / "a.db")
    with pytest.raises(ProviderError, match="provider/model"):
        split_model(bad)


def test_missing_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    llm = make_llm("anthropic/claude-3-5-sonnet-20240620", role="optimizer", store=tmp_path / "a.db")
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY is not set"):
        asyncio.run(llm.generate("x"))
    llm = make_llm(ModelConfig(model=MODEL, api_key_env="MY_TEAM_KEY"), role="optimizer", store=tmp_path / "a.db")
    with pytest.raises(ProviderError, match="MY_TEAM_KEY is not set"):
        asyncio.run(llm.generate("x"))


SENTINEL = "sk-SENTINEL-do-not-leak-0123456789abcdef"


def test_key_never_reaches_the_database_or_logs(openai_server, tmp_path, monkeypatch):
    from loguru import logger

    from aflowctl.logging import add_run_log, setup_logging

    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv("OTHER_SERVICE_TOKEN", SENTINEL + "x")
    log_file = tmp_path / "run.jsonl"
    setup_logging(2)
    sink = add_run_log(log_file)

    class LeakyProvider:  # a plugin whose error message contains the key
        name = "leaky"

        async def complete(self, request):
            raise RuntimeError(f"auth failed with key {SENTINEL}")

    _register(LeakyProvider(), "leaky-plugin")
    db = tmp_path / "a.db"
    try:
        for transport in ("litellm", "direct"):
            openai_server.fail_next([500, 401])
            llm = llm_for(openai_server, db, transport=transport, max_retries=1)
            with pytest.raises(ProviderError):
                asyncio.run(llm.generate(f"hi {transport}"))
            asyncio.run(llm.generate(f"ok {transport}"))
        with pytest.raises(ProviderError) as info:
            asyncio.run(make_llm("leaky/x", role="executor", store=db, llm_cfg=LLMConfig(max_retries=0)).generate("x"))
        assert SENTINEL not in str(info.value)
    finally:
        logger.remove(sink)
        setup_logging(0)
    assert openai_server.auth_headers.count(f"Bearer {SENTINEL}") >= 4  # the key was really used
    from aflowctl.store import db as dbmod

    dbmod.close_all()
    for path in [db, db.with_name(db.name + "-wal"), log_file]:
        if path.exists():
            assert SENTINEL.encode() not in path.read_bytes(), path
    assert any(r["error"] and "[REDACTED]" in r["error"] for r in rows(db))


def test_replay_answers_from_the_log_and_a_miss_names_the_hash(openai_server, tmp_path):
    db = tmp_path / "a.db"
    recorded = asyncio.run(llm_for(openai_server, db, run_id="orig").generate_n("replay me", 2, temperature=0.7, seed=1))
    n0 = openai_server.count
    replay = make_llm(ModelConfig(model="replay/" + MODEL), role="executor", run_id="again", store=db)
    again = asyncio.run(replay.generate_n("replay me", 2, temperature=0.7, seed=1))
    assert [s.text for s in again] == [s.text for s in recorded]
    assert all(s.cost_usd == 0.0 for s in again) and openai_server.count == n0
    # the config flag does the same for an unchanged model string
    flagged = llm_for(openai_server, db, run_id="again2", replay_from="orig")
    assert asyncio.run(flagged.generate("replay me", temperature=0.7, seed=1)).text == recorded[0].text
    miss_hash = LLMRequest(messages=[{"role": "user", "content": "never asked"}], model=MODEL).request_hash()
    with pytest.raises(ProviderError, match=f"replay miss.*{miss_hash}"):
        asyncio.run(replay.generate("never asked"))
    assert openai_server.count == n0


def test_a_plugin_whose_hook_raises_does_not_hide_the_others(openai_server, tmp_path):
    class Broken:
        @hookimpl
        def register_providers(self, register):
            raise RuntimeError("boom in hook")

    plugins.register_plugin(Broken(), name="broken-hook")
    asyncio.run(llm_for(openai_server, tmp_path / "a.db").generate("still works"))
    listed = {p["name"]: p for p in plugins.list_plugins()}
    assert "boom in hook" in listed["broken-hook"]["error"]
    with pytest.raises(ProviderError, match="broken-hook.*boom in hook"):
        asyncio.run(make_llm("nosuch/x", role="executor", store=False).generate("x"))


def test_calls_from_a_spawn_worker_are_logged_and_errors_pickle(openai_server, tmp_path):
    from helpers import llm_worker

    db = str(tmp_path / "a.db")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        ok = pool.submit(llm_worker.generate_in_worker, MODEL, openai_server.url, db, "from worker").result(120)
        bad_url = f"http://127.0.0.1:{_free_port()}/v1"
        fut = pool.submit(llm_worker.generate_in_worker, MODEL, bad_url, db, "x")
        with pytest.raises(ProviderError, match="cannot reach"):
            fut.result(120)
        # the pool survived the error
        again = pool.submit(llm_worker.generate_in_worker, MODEL, openai_server.url, db, "again").result(120)
    assert ok["text"] == "echo: from worker" and again["text"] == "echo: again" and ok["cost"] > 0
    assert [r["role"] for r in rows(db, "error IS NULL")] == ["executor", "executor"]


def test_request_hash_ignores_n_and_transport_but_not_sampling():
    base = LLMRequest(messages=[{"role": "user", "content": "x"}], model=MODEL)
    assert base.request_hash() == base.with_(n=4, transport="direct", api_base="http://h", timeout_s=3).request_hash()
    for change in ({"temperature": 0.5}, {"seed": 1}, {"stop": ["."]}, {"max_tokens": 3}, {"top_p": 0.9},
                   {"model": "openai/gpt-4o"}):
        assert base.with_(**change).request_hash() != base.request_hash()


def test_requests_per_minute_window():
    from aflowctl.llm.router import _rpm_wait

    async def go():
        starts = []
        for _ in range(5):
            await _rpm_wait("openai/rpm-test", 2, window_s=0.3)
            starts.append(time.monotonic())
        return starts

    starts = asyncio.run(go())
    assert starts[1] - starts[0] < 0.1  # two fit in one window
    assert starts[2] - starts[0] >= 0.29 and starts[4] - starts[2] >= 0.29


def test_requests_per_minute_setting_is_applied(openai_server, tmp_path, monkeypatch):
    from aflowctl.llm import router

    monkeypatch.setattr(router, "RPM_WINDOW_S", 0.4)  # a "minute" of 0.4 s
    llm = llm_for(openai_server, tmp_path / "a.db", transport="direct", requests_per_minute=2)

    async def go():
        t0 = time.perf_counter()
        await asyncio.gather(*(llm.generate(f"r{i}") for i in range(3)))
        return time.perf_counter() - t0

    assert asyncio.run(go()) >= 0.39  # the third request waited for the window
    assert openai_server.count == 3


def test_per_run_totals_by_role_and_model(openai_server, tmp_path):
    from aflowctl.llm.cache import totals
    from aflowctl.store import open_store

    db = tmp_path / "a.db"
    asyncio.run(llm_for(openai_server, db, role="optimizer").generate("a"))
    asyncio.run(llm_for(openai_server, db, role="executor").generate_n("b", 2, temperature=1.0))
    asyncio.run(llm_for(openai_server, db, role="executor").generate("b", temperature=1.0))  # cached
    got = {(t["role"], t["model"]): t for t in totals(open_store(db), "run1")}
    assert set(got) == {("optimizer", MODEL), ("executor", MODEL)}
    ex = got[("executor", MODEL)]
    assert (ex["calls"], ex["cached"], ex["errors"], ex["unknown_cost_calls"]) == (3, 1, 0, 0)
    assert ex["cost_usd"] > 0 and ex["completion_tokens"] == 6


def test_first_registered_provider_wins_so_plugins_cannot_hijack_builtins(openai_server, tmp_path):
    class Hijack:
        name = "openai"

        async def complete(self, request):
            raise AssertionError("the built-in openai provider must answer")

    _register(Hijack(), "hijacker")
    llm = llm_for(openai_server, tmp_path / "a.db")
    assert asyncio.run(llm.generate("mine")).text == "echo: mine"
