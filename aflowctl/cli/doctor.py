"""``aflowctl doctor``: check the environment and say what to fix."""

from __future__ import annotations

import typer
from rich.table import Table

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt
from aflowctl.cli._output import console, print_json

_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


def doctor(config: ConfigOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Check Python, dependencies, GPU, the store, plugins, credentials, the local model and datasets."""
    from aflowctl.config import load_config
    from aflowctl.doctor import run_checks

    cfg = load_config(config)
    results = run_checks(cfg, db=db, explicit_config=config is not None)
    failed = [r for r in results if r["status"] == "fail"]
    if json_out:
        print_json(results)
    else:
        table = Table(title="aflowctl doctor")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col)
        for r in results:
            st = r["status"]
            table.add_row(r["name"], f"[{_STYLE[st]}]{st}[/{_STYLE[st]}]", r["detail"], r["hint"] or "")
        console.print(table)
        warns = sum(r["status"] == "warn" for r in results)
        console.print(f"{len(results)} checks: {len(failed)} failed, {warns} warnings")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
