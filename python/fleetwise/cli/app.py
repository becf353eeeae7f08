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
    """Entry point: runs the app, turning fleetwise errors into exit code 2 (usage errors are 2 too;
    long values the message echoes are shortened), and exits without waiting for threads a user's policy or plugin left running."""
    from fleetwise.cli.format import error_text
    from fleetwise.errors import FleetwiseError

    import warnings

    warnings.showwarning = show_warning
    code: int | str | None = 0
    try:
        app()
    except SystemExit as e:  # how the app ends, its exit code
        code = e.code
    except FleetwiseError as e:
        err.print(f"[bold red]error:[/] {escape(error_text(e))}", highlight=False, markup=True)
        code = 2
    except MemoryError:  # a scenario too large for this machine, wherever it ran out
        err.print("[bold red]error:[/] ran out of memory: the scenario is too large for this machine; lower workload.requests, "
                  "the cluster's size or (with --requests) the points kept", highlight=False, markup=True)
        code = 2
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. while starting up)
        err.print("interrupted")
        code = 130
    _exit(code)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001 - warnings.showwarning's signature
    """Prints a Python warning (``warnings.warn``: a draft model no smaller than its target, an
    untested vLLM version) as one ``warning: ...`` line on stderr, as the CLI's own warnings are,
    instead of Python's default format with the source file, line number and code line. A category
    other than ``UserWarning`` is named; long values are shortened as in error messages."""
    from fleetwise.cli.format import shorten_values

    text = " ".join(str(message).splitlines())
    if category is not UserWarning:
        text = f"{getattr(category, '__name__', category)}: {text}"
    err.print(f"warning: {shorten_values(text)}", highlight=False, markup=False)


def _exit(code: int | str | None) -> None:
    """Exits with ``code``. The interpreter would wait for every non-daemon thread still running
    (one a policy started and never stopped would hang the command after its work is done): with
    such threads, it says so, flushes the output and exits at once."""
    import os
    import threading

    stray = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if not stray:
        sys.exit(code)
    names = ", ".join(repr(t.name) for t in stray[:5]) + (", ..." if len(stray) > 5 else "")
    err.print(f"warning: exiting without waiting for {len(stray)} thread(s) still running ({names}); "
              "a policy or plugin started them and did not stop them (make them daemon threads, or stop them)", highlight=False, markup=False)
    if isinstance(code, str):
        err.print(code, highlight=False, markup=False)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
