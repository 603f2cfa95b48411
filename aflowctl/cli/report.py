"""``aflowctl report`` and ``aflowctl export``: a run as a plot, an HTML page, markdown,
or AFlow round folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli._options import DbOpt


class ReportFormat(str, Enum):
    html = "html"
    md = "md"


def report(
    run_id: Annotated[str, typer.Argument(help="the run to report on (see 'aflowctl inspect runs')")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="folder for report.png and report.html (default: the run's folder)")
    ] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", help="html: write report.png + report.html; md: print a markdown summary"),
    ] = ReportFormat.html,
    db: DbOpt = None,
) -> None:
    """Report on a run: score per round with the running best and spend, the search tree with diffs
    (or training curves)."""
    from aflowctl.reporting import report as rep
    from aflowctl.store import open_store

    store = open_store(db)
    if fmt == ReportFormat.md:
        typer.echo(rep.markdown_report(store, run_id), nl=False)
        return
    files = rep.write_report(store, run_id, out)
    typer.echo(str(files.png))
    typer.echo(str(files.html))


def export(
    run_id: Annotated[str, typer.Argument(help="the run to export")],
    aflow: Annotated[
        Path,
        typer.Option(
            "--aflow", help="write AFlow round folders (round_N/graph.py, prompt.py, results.json) into this folder"
        ),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="replace round folders and results.json already in the folder")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Export a run's workflows as AFlow round folders (the folder plays workspace/<DATASET>/workflows)."""
    from aflowctl.reporting.export import export_aflow
    from aflowctl.store import open_store

    res = export_aflow(open_store(db), run_id, aflow, force=force)
    typer.echo(f"wrote {len(res.rounds)} round folders and results.json ({res.results_entries} entries) to {res.path}")
    if res.skipped:
        typer.echo(f"not exported (invalid or not evaluated): workflows {', '.join(map(str, res.skipped))}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("export")(export)
