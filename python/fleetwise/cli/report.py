"""``fleetwise report``: one offline HTML file from runs and sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fleetwise.cli.app import app, out


@app.command()
def report(
    inputs: List[Path] = typer.Argument(..., help="Run directories (compared side by side) or a sweep directory."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    title: Optional[str] = typer.Option(None, "--title", help="Report title."),
) -> None:
    """Write one self-contained HTML report (plotly, works offline) of runs or a sweep."""
    from fleetwise.errors import ConfigError
    from fleetwise.paths import path_kind
    from fleetwise.report import write_report
    from fleetwise.result import check_output_dir

    if path_kind(output, "-o") == "dir":
        raise ConfigError(f"-o {output}: is a directory; give the HTML file to write, e.g. {output / 'report.html'}")
    try:
        check_output_dir(output.parent)
    except ConfigError as e:
        raise ConfigError(f"-o {output}: cannot write the report there: {e}") from None
    try:
        path = write_report(list(inputs), output, title=title)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except OSError as e:  # the output's directory cannot be created or written
        raise ConfigError(f"{e.filename or output}: cannot write the report: {e.strerror or e}") from None
    out.print(f"report written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
