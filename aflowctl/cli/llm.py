"""``aflowctl llm -m MODEL PROMPT``: one call through the router, logged like every call."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt


def llm_cmd(
    prompt: Annotated[str, typer.Argument(help="the prompt ('-' reads it from stdin)")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="provider/model, e.g. openai/gpt-4o-mini or local/smollm2")
    ],
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="system prompt")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="sampling temperature")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="most tokens to generate")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="nucleus sampling")] = None,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="sampling seed (where the provider supports it)")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="number of samples", min=1)] = 1,
    api_base: Annotated[
        Optional[str], typer.Option("--api-base", help="base URL of an OpenAI-compatible server")
    ] = None,
    api_key_env: Annotated[
        Optional[str], typer.Option("--api-key-env", help="NAME of the environment variable holding the key")
    ] = None,
    cache: Annotated[
        str, typer.Option("--cache", help="response cache: readwrite|read|write|off (one-off calls default to off)")
    ] = "off",
    budget_usd: Annotated[
        Optional[float], typer.Option("--budget-usd", help="refuse a call whose worst case passes this")
    ] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="log the call under this run id")] = None,
    max_retries: Annotated[
        Optional[int], typer.Option("--max-retries", help="retries of 429/5xx/timeouts/connection errors", min=0)
    ] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send one prompt to a model and print the answer (logged to llm_calls with role 'cli')."""
    import asyncio

    from aflowctl.config import ModelConfig, load_config
    from aflowctl.errors import UsageError
    from aflowctl.llm.cache import CACHE_MODES
    from aflowctl.llm.client import make_llm

    if cache not in CACHE_MODES:
        raise UsageError(f"--cache must be one of {', '.join(CACHE_MODES)} (got {cache!r})", "pick one of them")
    if prompt == "-":
        prompt = sys.stdin.read()
    cfg = load_config(config, {"llm.cache": cache, "llm.budget_usd": budget_usd, "llm.max_retries": max_retries})
    mc: dict[str, Any] = {
        "model": model,
        "api_base": api_base,
        "api_key_env": api_key_env,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
    }
    model_cfg = ModelConfig(**{k: v for k, v in mc.items() if v is not None})
    llm = make_llm(model_cfg, role="cli", run_id=run, store=db, llm_cfg=cfg.llm)
    overrides = {"system": system, "seed": seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    from aflowctl.cli import _progress

    _progress.prepare_local_models([model], json_out=json_out)
    with _progress.spinner(f"waiting for {model}", json_out=json_out):
        samples = asyncio.run(llm.generate_n(prompt, n, **overrides))
    if json_out:
        from aflowctl.cli._output import print_json

        out = [
            {
                "text": s.text,
                "model": f"{s.provider}/{s.model}",
                "finish_reason": s.finish_reason,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "cost_usd": s.cost_usd,
                "latency_s": round(s.latency_s, 4),
                "cached": s.cached,
                "request_hash": s.request_hash,
            }
            for s in samples
        ]
        print_json(out[0] if n == 1 else out)
        return
    for i, s in enumerate(samples):
        if n > 1:
            typer.echo(f"--- sample {i}")
        typer.echo(s.text)


def register(app: typer.Typer) -> None:
    app.command("llm")(llm_cmd)
