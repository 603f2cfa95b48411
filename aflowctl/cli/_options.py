"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="SQLite store to use (default: $AFLOWCTL_HOME/aflowctl.db)", envvar="AFLOWCTL_DB"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config file (see configs/)")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed of the run")]
RunOpt = Annotated[Optional[str], typer.Option("--run", help="only this run id")]
NoPreflightOpt = Annotated[
    bool,
    typer.Option("--no-preflight", help="skip checking keys and reachability of the configured models before the run"),
]
CsvOpt = Annotated[bool, typer.Option("--csv", help="print CSV instead of a table")]
