import asyncio
import sqlite3

import pytest

import aflowctl_echo
from aflowctl import plugins
from aflowctl.errors import ProviderError
from aflowctl.llm.client import make_llm
from aflowctl.llm.types import LLMRequest


def test_provider_answers_directly():
    p = aflowctl_echo.EchoProvider()
    out = asyncio.run(p.complete(LLMRequest(messages=[{"role": "user", "content": "a b c"}], model="echo/reverse", n=2)))
    assert [s.text for s in out] == ["c b a", "c b a"]
    assert out[0].cost_usd == 0.0 and out[0].completion_tokens == 3 and out[0].provider == "echo"


def test_max_tokens_and_stop():
    p = aflowctl_echo.EchoProvider()
    req = LLMRequest(messages=[{"role": "user", "content": "one two three. four"}], model="echo/plain", max_tokens=2)
    (s,) = asyncio.run(p.complete(req))
    assert (s.text, s.finish_reason) == ("one two", "length")
    (s,) = asyncio.run(p.complete(req.with_(max_tokens=None, stop=["."])))
    assert (s.text, s.finish_reason) == ("one two three", "stop")


def test_through_the_router_with_the_plugin_registered(tmp_path):
    plugins.register_plugin(aflowctl_echo, name="echo")
    db = tmp_path / "calls.db"
    llm = make_llm("echo/upper", role="executor", run_id=None, store=db)
    s = asyncio.run(llm.generate("hello world"))
    assert s.text == "HELLO WORLD"
    assert llm.total_cost == 0.0 and llm.total_tokens == 4
    rows = sqlite3.connect(db).execute("SELECT provider, model, response, cost_usd FROM llm_calls").fetchall()
    assert rows == [("echo", "upper", "HELLO WORLD", 0.0)]
    assert any(p["name"] == "echo" and p["providers"] == ["echo"] for p in plugins.list_plugins())


def test_unknown_echo_model_is_a_clear_error():
    plugins.register_plugin(aflowctl_echo, name="echo")
    llm = make_llm("echo/shout", role="executor", store=False)
    with pytest.raises(ProviderError, match="unknown echo model 'echo/shout'.*echo/plain"):
        asyncio.run(llm.generate("hi"))
