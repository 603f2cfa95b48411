"""`aflowctl report`: what a run did, as a PNG plot and a self-contained HTML page
(:func:`write_report`) or a markdown summary (:func:`markdown_report`).

The data comes from :func:`aflowctl.reporting.history.gather`; optimize runs (and any
run with workflows) get the search tree, scores per round and usage; train runs their
reward and loss curves from ``train_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aflowctl.errors import AflowctlError
from aflowctl.reporting.history import gather
from aflowctl.store.db import Store


class ReportError(AflowctlError):
    """A report cannot be written (bad output folder)."""


@dataclass
class ReportFiles:
    png: Path
    html: Path


def write_report(store: Store, run_id: str, out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``report.png`` and ``report.html`` for a run into ``out_dir`` (default: the run's folder)."""
    from aflowctl import paths
    from aflowctl.reporting.html import render_html
    from aflowctl.reporting.plots import plot

    data = gather(store, run_id)
    out = Path(out_dir).expanduser() if out_dir is not None else paths.run_dir(run_id)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} is a file, not a folder", "pass a folder to --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"cannot create the report folder {out}: {exc.strerror}", "pass a writable folder to --out"
        ) from None
    png = plot(data, out / "report.png")
    html_path = out / "report.html"
    html_path.write_text(render_html(data, png.read_bytes()), encoding="utf-8")
    return ReportFiles(png=png, html=html_path)


def markdown_report(store: Store, run_id: str) -> str:
    from aflowctl.reporting.markdown import render_markdown

    return render_markdown(gather(store, run_id))
