"""``aflowctl doctor``: check the environment and say what to fix."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from aflowctl.cli._options import ConfigOpt, DbOpt, JsonOpt
from aflowctl.cli._output import console, print_json, print_renderable

_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "red"}


def _table(results: list[dict]) -> Table:
    """Two columns: the status, and the check with its detail and fix (folded under it)."""
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for r in results:
        body = Text(r["name"], style="bold")
        body.append(": " + r["detail"])
        if r["hint"]:
            body.append("\nfix: " + r["hint"], style="dim" if r["status"] in ("ok", "info") else None)
        table.add_row(Text(r["status"], style=_STYLE[r["status"]]), body)
    return table


def doctor(config: ConfigOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Check Python, dependencies, GPU, the store, plugins, credentials, the local model and datasets.

    Without --config, the models and data of the default config are listed as info;
    pass the config you will run to have them checked.
    """
    from aflowctl.config import load_config
    from aflowctl.doctor import run_checks

    cfg = load_config(config)
    results = run_checks(cfg, db=db, explicit_config=config is not None)
    failed = [r for r in results if r["status"] == "fail"]
    if json_out:
        print_json(results)
    else:
        print_renderable(_table(results))
        count = {s: sum(r["status"] == s for r in results) for s in _STYLE}
        console.print(
            f"{len(results)} checks: {count['fail']} failed, {count['warn']} warnings, {count['info']} notes",
            markup=False,
        )
        if config is None:
            console.print(
                "checked the default config; pass --config F to check the models and data of yours", markup=False
            )
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
