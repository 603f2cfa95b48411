"""The local provider and local_model against the real embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from aflowctl.config import LLMConfig, ModelConfig
from aflowctl.errors import ProviderError
from aflowctl.llm import local_model
from aflowctl.llm.client import make_llm
from aflowctl.llm.providers import local as local_provider


def test_resolve_rejects_missing_paths(tmp_path):
    with pytest.raises(ProviderError, match="does not exist"):
        local_model.resolve(str(tmp_path / "nothing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProviderError, match="without config.json"):
        local_model.resolve(str(tmp_path / "empty"))
    with pytest.raises(ProviderError, match="unknown local model 'not-a-model'"):
        local_model.resolve("not-a-model")


def test_missing_local_model_is_a_clear_provider_error(tmp_path):
    llm = make_llm(f"local/{tmp_path}/nope", role="executor", store=tmp_path / "a.db", llm_cfg=LLMConfig(max_retries=0))
    with pytest.raises(ProviderError, match="does not exist"):
        asyncio.run(llm.generate("hi"))


def _llm(tmp_path, **cfg):
    return make_llm(
        ModelConfig(model="local/smollm2", max_tokens=12),
        role="policy",
        run_id="local-run",
        store=tmp_path / "local.db",
        llm_cfg=LLMConfig(cache="off", **cfg),
    )


@pytest.mark.slow
def test_local_greedy_answer_logprobs_cost_and_log(tmp_path):
    llm = _llm(tmp_path)
    a = asyncio.run(llm.generate("What is the capital of France?", temperature=0.0))
    b = asyncio.run(llm.generate("What is the capital of France?", temperature=0.0))
    assert a.text and a.text == b.text and "Paris" in a.text
    assert a.cost_usd == 0.0 and llm.total_cost == 0.0
    assert (a.provider, a.model) == ("local", "smollm2")
    assert a.finish_reason in ("stop", "length") and a.completion_tokens == len(a.token_ids) <= 12
    assert len(a.logprobs) == len(a.token_ids) and all(lp <= 0 for lp in a.logprobs)
    assert a.prompt_tokens > 5
    rows = sqlite3.connect(tmp_path / "local.db").execute("SELECT provider, cost_usd, role FROM llm_calls").fetchall()
    assert rows == [("local", 0.0, "policy")] * 2


@pytest.mark.slow
def test_logprobs_match_a_full_forward_pass_even_when_padded(tmp_path):
    import torch

    model, tok = local_model.load(local_model.resolve())
    prompts = ["Hi", "Write one sentence about the sea and the sky."]  # different lengths: row 0 is padded
    results = local_model.generate_batch(model, tok, prompts, temperature=0.7, max_new_tokens=8, seed=[3, 4])
    for r in results:
        ids = torch.tensor([r.prompt_ids + r.token_ids])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits / 0.7, dim=-1)
        start = len(r.prompt_ids) - 1
        want = [float(logp[start + i, t]) for i, t in enumerate(r.token_ids)]
        assert r.logprobs == pytest.approx(want, abs=2e-3)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_stop_strings_cut(tmp_path):
    llm = _llm(tmp_path)
    s1 = asyncio.run(llm.generate("Tell me a story.", temperature=1.0, seed=5, max_tokens=10))
    s2 = asyncio.run(llm.generate("Tell me a story.", temperature=1.0, seed=5, max_tokens=10))
    s3 = asyncio.run(llm.generate("Tell me a story.", temperature=1.0, seed=6, max_tokens=10))
    assert s1.token_ids == s2.token_ids and s1.token_ids != s3.token_ids
    full = asyncio.run(llm.generate("List three colors.", temperature=0.0, max_tokens=16))
    words = full.text.split()
    assert len(words) >= 3
    stop = words[2]
    cut = asyncio.run(llm.generate("List three colors.", temperature=0.0, max_tokens=16, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]


@pytest.mark.slow
def test_concurrent_requests_are_batched(tmp_path):
    llm = _llm(tmp_path, local_batch_window_ms=50, local_max_batch=8)
    prompts = [f"Say the number {i}." for i in range(8)]

    async def all_at_once():
        return await asyncio.gather(*(llm.generate(p, temperature=0.0, max_tokens=6) for p in prompts))

    local_provider.BATCH_SIZES.clear()
    batched = asyncio.run(all_at_once())
    assert list(local_provider.BATCH_SIZES) == [8]
    # a greedy answer does not depend on what else is in the batch
    alone = asyncio.run(llm.generate(prompts[3], temperature=0.0, max_tokens=6))
    assert alone.token_ids == batched[3].token_ids
    # n samples of one request share one batch, each with its own seed
    local_provider.BATCH_SIZES.clear()
    many = asyncio.run(llm.generate_n("Pick a fruit.", 4, temperature=1.0, seed=11, max_tokens=6))
    assert list(local_provider.BATCH_SIZES) == [4] and len({tuple(s.token_ids) for s in many}) > 1


@pytest.mark.slow
def test_local_model_config_overrides_the_default(tmp_path):
    folder = local_model.resolve()
    llm = make_llm(ModelConfig(model="local/default"), role="executor", store=tmp_path / "a.db",
                   llm_cfg=LLMConfig(local_model=str(folder), cache="off"))
    s = asyncio.run(llm.generate("Hello", temperature=0.0, max_tokens=4))
    assert s.text and s.model == "default"
    llm2 = make_llm(ModelConfig(model=f"local/{folder}"), role="executor", store=tmp_path / "a.db")
    assert asyncio.run(llm2.generate("Hello", temperature=0.0, max_tokens=4)).token_ids == s.token_ids


@pytest.mark.slow
def test_local_gguf_path_is_converted_once_and_served(tmp_path):
    gguf = local_model.embedded_gguf()
    folder = local_model.resolve(str(gguf))
    assert (folder / "config.json").is_file() and folder != local_model.resolve()
    assert local_model.resolve(str(gguf)) == folder  # cached: no second conversion
    llm = make_llm(ModelConfig(model=f"local/{gguf}"), role="executor", store=tmp_path / "a.db",
                   llm_cfg=LLMConfig(cache="off"))
    s = asyncio.run(llm.generate("Hello", temperature=0.0, max_tokens=4))
    assert s.text and s.cost_usd == 0.0
