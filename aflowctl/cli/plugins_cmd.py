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
    from aflowctl.cli._output import print_table

    table = [
        dict(r, hooks=", ".join(r["hooks"]), provides=", ".join(r.get("providers") or []), error=r["error"] or "")
        for r in rows
    ]
    print_table(table, ["name", "package", "version", "hooks", "provides", "error"], title="plugins")
    if any(r["error"] for r in rows):
        from aflowctl.cli._output import err_console

        err_console.print("Some plugins failed; the others work. Fix or uninstall the broken ones (see 'error').")


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")
