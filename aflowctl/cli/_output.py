"""Output helpers for the CLI layer (the only layer that prints).

Rules every command follows through these helpers:

- No markup or highlighting of data: table cells are plain :class:`~rich.text.Text`
  (a ``[tensorboard]`` in a hint stays), numbers inside run ids are not coloured.
- Identifier columns (run ids, workflow ids) are never truncated: they keep their
  full width and the other columns fold first.
- Output that is not a terminal (a pipe, a file) is never wrapped: text lines are
  printed whole and tables take their natural width.
- Money: an unknown price is shown as ``unknown``, never as ``$0.0000``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


class _Console(Console):
    """A console that does not wrap when its output is not a terminal."""

    def print(self, *objects: Any, soft_wrap: Optional[bool] = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)

# Columns that hold identifiers: shown whole, never folded or cut.
ID_COLUMNS = ("id", "run_id", "workflow_id", "parent_id", "group_id", "episode_id")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    w = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})


def fmt_cost(cost: Optional[float], unpriced: int = 0, priced: Optional[int] = None) -> str:
    """``$0.0123``; ``unknown`` when no call had a known price (``priced`` = 0, or
    ``cost`` None); ``$0.0123 + unknown`` when some calls had a price and others not."""
    if unpriced and (cost is None or priced == 0):
        return "unknown"
    if cost is None:
        return "$0.0000"
    if unpriced:
        return f"${cost:.4f} + unknown"
    return f"${cost:.4f}"


def _cell(v: Any) -> Text:
    if v is None:
        return Text("")
    if isinstance(v, bool):
        return Text("yes" if v else "no")
    if isinstance(v, float):
        return Text(f"{v:.4g}")
    return Text(str(v))


def print_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    title: Optional[str] = None,
    *,
    headers: Optional[Mapping[str, str]] = None,
    keep: Sequence[str] = ID_COLUMNS,
    right: Sequence[str] = (),
    droppable: Sequence[str] = (),
) -> None:
    """A table of ``rows`` (dicts) with ``columns``; ``headers`` renames columns for display.

    Columns named in ``keep`` are never cut; the others fold when the terminal is
    narrow, after the ``droppable`` ones (least useful first) were left out to make
    room. Off a terminal the table takes its natural width (nothing cut or folded).
    """
    rows = list(rows)
    cols = list(columns)
    table = _table(rows, cols, title, headers or {}, keep, right)
    if console.is_terminal:
        for c in droppable:
            if Measurement.get(console, console.options.update(max_width=100_000), table).maximum <= console.width:
                break
            cols.remove(c)
            table = _table(rows, cols, title, headers or {}, keep, right)
    print_renderable(table)


def _table(
    rows: list,
    columns: Sequence[str],
    title: Optional[str],
    headers: Mapping[str, str],
    keep: Sequence[str],
    right: Sequence[str],
) -> Table:
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False, title_justify="left"
    )
    for c in columns:
        head = headers.get(c, c)
        if c in keep:
            width = max([len(head)] + [len(_cell(r.get(c)).plain) for r in rows])
            table.add_column(Text(head), no_wrap=True, min_width=width)
        else:
            table.add_column(Text(head), overflow="fold", justify="right" if c in right else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    return table


def print_renderable(renderable: Any) -> None:
    """A table or other renderable: fitted to a terminal, at its natural width elsewhere."""
    if console.is_terminal:
        console.print(renderable)
    else:
        natural = Measurement.get(console, console.options.update(max_width=100_000), renderable).maximum
        wide = Console(file=io.StringIO(), width=max(natural, console.width), highlight=False, color_system=None)
        wide.print(renderable, crop=False)
        text = wide.file.getvalue()  # type: ignore[attr-defined]
        console.file.write("".join(line.rstrip() + "\n" for line in text.splitlines()))


def emit(
    rows: list[dict],
    columns: Sequence[str],
    *,
    json_out: bool = False,
    csv_out: bool = False,
    title: Optional[str] = None,
    headers: Optional[Mapping[str, str]] = None,
    table_rows: Optional[list[dict]] = None,
    right: Sequence[str] = (),
    droppable: Sequence[str] = (),
) -> None:
    """Rows as JSON (all fields), CSV (``columns``, raw values) or a table.

    ``table_rows`` are the rows formatted for people (percentages, costs), when they
    differ from the raw values that JSON and CSV carry.
    """
    if json_out:
        print_json(rows)
    elif csv_out:
        print_csv(rows, columns)
    else:
        print_table(
            table_rows if table_rows is not None else rows,
            columns,
            title=title,
            headers=headers,
            right=right,
            droppable=droppable,
        )


def echo(text: str = "", *, err: bool = False) -> None:
    """One line of plain text (no markup, no highlighting, no wrapping off a terminal)."""
    (err_console if err else console).print(text, markup=False, highlight=False)
