"""Functions run in spawn-started worker processes by the LLM tests."""

from __future__ import annotations


def generate_in_worker(model: str, api_base: str, db: str, prompt: str, max_retries: int = 0) -> dict:
    from aflowctl.config import LLMConfig, ModelConfig
    from aflowctl.llm.client import make_llm

    llm = make_llm(
        ModelConfig(model=model, api_base=api_base),
        role="executor",
        run_id="worker-run",
        store=db,
        llm_cfg=LLMConfig(max_retries=max_retries, backoff_base_s=0.01, http_client="litellm"),
    )
    s = llm.generate_sync(prompt)
    return {"text": s.text, "cost": llm.total_cost}
