"""The Typer app, its output consoles and the entry point that maps fleetwise errors to exit code 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Simulate and schedule LLM serving clusters.")


out = Console(width=120)


err = Console(stderr=True, soft_wrap=True)


def main() -> None:
    """Entry point: runs the app, turning fleetwise errors into exit code 2 (usage errors are 2 too)."""
    from fleetwise.errors import FleetwiseError

    try:
        app()
    except FleetwiseError as e:
        err.print(f"[bold red]error:[/] {escape(f'{type(e).__name__}: {e}')}", highlight=False, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. while starting up)
        err.print("interrupted")
        sys.exit(130)
