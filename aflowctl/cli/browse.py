"""``aflowctl browse``: the store, read-only, in Datasette (optional extra ``ui``).

Table and column descriptions and canned queries come from
:mod:`aflowctl.store.catalog`; JSON columns are shown indented. Datasette opens the
database read-only (``mode=ro``), so browsing while a run writes is safe.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import socket
from types import ModuleType
from typing import Annotated

import typer

from aflowctl.cli._options import DbOpt
from aflowctl.cli._output import echo
from aflowctl.errors import AflowctlError


def _check_port(host: str, port: int) -> None:
    """One clear line when the port is taken, before Datasette starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AflowctlError(f"port {port} on {host} is in use", "pass another one with --port N") from None
            raise AflowctlError(
                f"cannot listen on {host}:{port}: {exc.strerror}", "pass another --host or --port"
            ) from None


def _render_json_cell(value, column):
    """Datasette ``render_cell`` hook: JSON columns (``*_json``) shown indented."""
    if not (isinstance(value, str) and column.endswith("_json") and value[:1] in "[{"):
        return None
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    from markupsafe import Markup, escape

    return Markup('<pre style="white-space: pre-wrap; margin: 0">{}</pre>').format(
        escape(json.dumps(obj, indent=2, ensure_ascii=False))
    )


def browse_cmd(
    db: DbOpt = None,
    port: Annotated[int, typer.Option("--port", "-p", help="port to serve on", min=0, max=65535)] = 8001,
    host: Annotated[str, typer.Option("--host", help="interface to listen on")] = "127.0.0.1",
    no_open: Annotated[bool, typer.Option("--no-open", help="do not open a web browser")] = False,
) -> None:
    """Browse the store in Datasette: tables with descriptions, canned queries, full-text search of calls."""
    if importlib.util.find_spec("datasette") is None:
        raise AflowctlError("aflowctl browse needs Datasette, which is not installed", "pip install 'aflowctl[ui]'")
    from aflowctl.store import open_store
    from aflowctl.store.catalog import datasette_metadata

    store = open_store(db)  # creates and migrates it, so the schema is the current one
    path = store.path
    _check_port(host, port)

    import asyncio

    import uvicorn
    from datasette import hookimpl
    from datasette.app import Datasette
    from datasette.plugins import pm

    if not pm.has_plugin("aflowctl-json-cells"):
        plugin = ModuleType("aflowctl_json_cells")
        plugin.render_cell = hookimpl(_render_json_cell)  # type: ignore[attr-defined]
        pm.register(plugin, name="aflowctl-json-cells")
    name = path.stem
    ds = Datasette([str(path)], metadata=datasette_metadata(name), settings={"default_page_size": 50})
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(ds.invoke_startup())
    finally:
        loop.close()
    url = f"http://{host}:{port}/{name}"
    echo(f"serving {path} read-only at {url} (Ctrl-C to stop)", err=True)
    if not no_open:
        import webbrowser

        webbrowser.open(url)
    uvicorn.run(ds.app(), host=host, port=port, log_level="warning", lifespan="on")


def register(app: typer.Typer) -> None:
    app.command("browse")(browse_cmd)
