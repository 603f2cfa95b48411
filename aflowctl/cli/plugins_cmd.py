"""``aflowctl plugins list``: installed plugins, their hooks, and why any failed."""

from __future__ import annotations

import typer

from aflowctl.cli._options import JsonOpt

plugins_app = typer.Typer(help="List aflowctl plugins (providers, benchmarks, operators).", no_args_is_help=True)


@plugins_app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """Each plugin: package, version, hooks it implements, what it provides, and its load error if any."""
    from aflowctl.plugins import list_plugins

    rows = list_plugins()
    if json_out:
        from aflowctl.cli._output import print_json

        print_json(rows)
        return
    from rich.table import Table

    from aflowctl.cli._output import console

    table = Table(title="plugins")
    for col in ("name", "package", "version", "hooks", "provides", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        provides = r.get("providers") or []
        shown = ", ".join(provides[:6]) + (f", ... ({len(provides)} in all)" if len(provides) > 6 else "")
        table.add_row(r["name"], r["package"] or "", r["version"] or "", "\n".join(r["hooks"]), shown, r["error"] or "")
    console.print(table)
    if any(r["error"] for r in rows):
        from aflowctl.cli._output import err_console

        err_console.print("Some plugins failed; the others work. Fix or uninstall the broken ones (see 'error').")


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")
