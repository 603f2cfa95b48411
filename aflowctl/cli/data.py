"""``aflowctl data list`` and ``aflowctl data fetch``: benchmark splits on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aflowctl.cli._options import JsonOpt
from aflowctl.cli._output import console, print_json, print_table

data_app = typer.Typer(
    name="data",
    help="Benchmark data: what is present (counts, checksums, origin) and fetching it.",
    no_args_is_help=True,
)


@data_app.command("list")
def list_cmd(
    *,
    benchmark: Annotated[Optional[str], typer.Argument(help="only this benchmark")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show each benchmark's splits: present or not, problem count, sha256, origin."""
    from aflowctl import benchmarks
    from aflowctl.benchmarks.data import list_splits

    chosen = [benchmarks.get(benchmark)] if benchmark else [benchmarks.get(n) for n in benchmarks.names()]
    rows = [info.to_dict() for info in list_splits(chosen)]
    if json_out:
        print_json(rows)
        return
    table_rows = []
    missing = []
    for r in rows:
        if not r["present"]:
            missing.append(f"{r['benchmark']}/{r['split']}")
        table_rows.append(
            {
                "benchmark": r["benchmark"],
                "split": r["split"],
                "problems": r["count"] if r["present"] else "-",
                "sha256": (r["sha256"] or "")[:12],
                "origin": r["origin"] or "missing",
                "from": r["source"] or r["path"] or "",
            }
        )
    print_table(table_rows, ["benchmark", "split", "problems", "sha256", "origin", "from"], title="Benchmark data")
    if missing:
        console.print(
            f"Missing: {', '.join(missing)}. Fetch with `aflowctl data fetch NAME [--split S] [--from PATH]`.",
            highlight=False,
            soft_wrap=True,
        )


@data_app.command("fetch")
def fetch_cmd(
    name: Annotated[str, typer.Argument(help="benchmark name (see `aflowctl data list`)")],
    *,
    source: Annotated[
        Optional[Path],
        typer.Option(
            "--from", help="a JSONL file or a folder with AFlow's data files (offline); default: the Hugging Face hub"
        ),
    ] = None,
    split: Annotated[
        Optional[list[str]], typer.Option("--split", help="split to fetch (repeatable; default: all the source has)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy a benchmark's splits into the data directory (from --from, or the hub)."""
    from aflowctl import benchmarks
    from aflowctl.benchmarks.data import fetch_hub, fetch_local

    bench = benchmarks.get(name)
    fetched = fetch_local(bench, source, split or None) if source is not None else fetch_hub(bench, split or None)
    rows = [f.to_dict() for f in fetched]
    if json_out:
        print_json(rows)
        return
    for r in rows:
        console.print(
            f"{r['benchmark']} {r['split']}: {r['count']} problems -> {r['path']} "
            f"(sha256 {r['sha256'][:12]}, from {r['source']})",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
