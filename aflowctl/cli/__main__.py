"""``python -m aflowctl.cli`` runs the CLI (tests use it to kill a real process)."""

from aflowctl.cli import main

main()
