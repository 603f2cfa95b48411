"""The ``aflowctl`` command line: the only layer that prints or exits.

Each command group lives in its own module with a ``register(app)`` function;
``COMMAND_MODULES`` lists them. Heavy libraries (torch, litellm, transformers) are
imported inside commands only, so ``aflowctl --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from aflowctl import __version__
from aflowctl.cli import _errors

COMMAND_MODULES = [
    "aflowctl.cli.doctor",
    "aflowctl.cli.inspect",
    "aflowctl.cli.plugins_cmd",
    "aflowctl.cli.llm",
    "aflowctl.cli.data",
    "aflowctl.cli.evaluate",
    "aflowctl.cli.optimize",
    "aflowctl.cli.report",
    "aflowctl.cli.train",
    "aflowctl.cli.compare",
    "aflowctl.cli.logs",
    "aflowctl.cli.browse",
]


class _ErrorHandlingGroup(TyperGroup):
    """Turns AflowctlError (and Ctrl-C) into one line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI is where errors end
            if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's own usage errors: exit 2
                raise
            if _reraise():
                raise
            code = _errors.report(exc)
            raise typer.Exit(code) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(_errors.report(exc)) from None


def _reraise() -> bool:
    import os

    return os.environ.get("AFLOWCTL_RAISE_ERRORS", "") not in ("", "0")


def _hide_flag_types() -> None:
    """Flags take no value: show no ``<bool>`` next to them in ``--help``.

    Typer prints every option's type; for an on/off flag that reads as if it wanted an
    argument. Its help renderer asks ``display_type_rich``; flags answer ``None``.
    """
    from typer.core import TyperOption

    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_aflowctl", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return show(self, ctx)

    display_type_rich._aflowctl = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()

app = typer.Typer(
    name="aflowctl",
    cls=_ErrorHandlingGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="Design and improve agentic LLM workflows (AFlow search) and train the optimizer policy (GiGPO).",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"aflowctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="show the version and exit"),
    ] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more log output (-vv for debug)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only errors on stderr")] = False,
) -> None:
    from aflowctl.cli import _progress
    from aflowctl.logging import setup_logging

    _progress.QUIET = quiet
    _progress.install_conversion_notice()
    setup_logging(-1 if quiet else verbose)


for _modname in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_modname)
    except ModuleNotFoundError as _exc:
        if _exc.name == _modname:  # command group not built yet
            continue
        raise
    _mod.register(app)


def main() -> None:
    """Console-script entry point."""
    from aflowctl.cli._progress import install_interrupt_notice

    install_interrupt_notice()
    try:
        app()
    except KeyboardInterrupt as exc:  # pragma: no cover - outside click's handling
        sys.exit(_errors.report(exc))
