"""``aflowctl logs``: every logged LLM call, newest first (like simonw/llm's ``llm logs``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from aflowctl.cli._options import DbOpt, JsonOpt
from aflowctl.cli._output import echo, fmt_cost, print_json

PREVIEW_CHARS = 200


def _one_line(text: Optional[str], limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _cost(r: dict) -> str:
    if r["cached"]:
        return "cached"
    if r["error"]:
        return "failed"
    return fmt_cost(r["cost_usd"], 1 if r["cost_usd"] is None else 0)


def _header(r: dict) -> str:
    return f"## call {r['id']}  {r['created_at'][:19].replace('T', ' ')}  {r['model']}"


def _print_call(r: dict, full: bool) -> None:
    echo(_header(r))
    tokens = (
        f"{'?' if r['prompt_tokens'] is None else r['prompt_tokens']} -> "
        f"{'?' if r['completion_tokens'] is None else r['completion_tokens']} tokens"
    )
    latency = "" if r["latency_s"] is None else f", {r['latency_s']:.1f} s"
    echo(f"run {r['run_id'] or '-'}, role {r['role'] or '-'}, {tokens}, cost {_cost(r)}{latency}")
    if full:
        for m in r.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else m
            echo(f"### {m.get('role', '?') if isinstance(m, dict) else 'message'}")
            echo(content if isinstance(content, str) else str(content))
        echo("### response")
        echo(r["response"] or "")
    else:
        echo(f"> {_one_line(r['prompt'], PREVIEW_CHARS)}")
        echo(f"< {_one_line(r['response'], PREVIEW_CHARS)}")
    if r["error"]:
        echo(f"error: {_one_line(r['error'], PREVIEW_CHARS)}")
    echo("")


def logs_cmd(
    count: Annotated[int, typer.Option("-n", "--count", help="how many calls, newest first (0: all)", min=0)] = 3,
    run: Annotated[Optional[str], typer.Option("--run", help="only calls of this run")] = None,
    role: Annotated[
        Optional[str], typer.Option("--role", help="only this role (optimizer, executor, policy, cli)")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="only this model (provider/model or model)")
    ] = None,
    query: Annotated[
        Optional[str], typer.Option("-q", "--query", help="full-text search of prompts and responses")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="whole prompts (every message) and responses")] = False,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show logged LLM calls, newest first: model, run, role, tokens, cost, prompt and response."""
    from aflowctl.cli.inspect import require_run
    from aflowctl.store import open_store, queries

    store = open_store(db)
    if run:
        require_run(store, run)
    rows = queries.list_calls(
        store, run_id=run, role=role, model=model, query=query, limit=count or None, full=full or json_out
    )
    if json_out:
        print_json(rows)
        return
    if not rows:
        what = [
            f"run {run}" if run else "",
            f"role {role}" if role else "",
            f"model {model}" if model else "",
            f"matching {query!r}" if query else "",
        ]
        what = [w for w in what if w]
        if what:
            roles = queries.call_roles(store)
            hint = f" (roles in the store: {', '.join(roles)})" if role and roles and role not in roles else ""
            echo(f"no LLM calls with {', '.join(what)}{hint}", err=True)
        else:
            echo("no LLM calls logged yet", err=True)
        return
    for r in rows:
        _print_call(r, full)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs_cmd)
