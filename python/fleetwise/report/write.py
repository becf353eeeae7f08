"""``write_report``: inputs in, one self-contained HTML file out."""

from __future__ import annotations

from pathlib import Path

from fleetwise.report.colors import label_colors
from fleetwise.report.hardware import moe_pim_panel
from fleetwise.report.latency import cdf_panel, percentiles_panel
from fleetwise.report.load import classify, load_inputs
from fleetwise.report.page import HEAD, render
from fleetwise.report.panel import Panel
from fleetwise.report.slo import attainment_panel, goodput_panel
from fleetwise.report.tables import runs_table, sweep_tables
from fleetwise.result import same_file
from fleetwise.report.timeline import timeline_panel
from fleetwise.report.timeseries import kv_panel, queues_panel, utilisation_panel

FIGURE_IDS = (
    "fig-latency-cdf",
    "fig-percentiles",
    "fig-goodput",
    "fig-slo-attainment",
    "fig-utilisation",
    "fig-kv-usage",
    "fig-queues",
    "fig-timeline",
    "fig-moe-pim",
)
"""Every figure's div id, in page order (a figure without data is replaced by a note)."""


def build_panels(data, colors: dict[str, str], sample_requests: int = 200) -> list[Panel]:
    """Every figure of the report, in page order."""
    return [
        cdf_panel(data, colors),
        percentiles_panel(data, colors),
        goodput_panel(data, colors),
        attainment_panel(data, colors),
        utilisation_panel(data, colors),
        kv_panel(data, colors),
        queues_panel(data, colors),
        timeline_panel(data, colors, sample_requests),
        moe_pim_panel(data, colors),
    ]


_INPUT_SUFFIXES = (".json", ".parquet", ".jsonl", ".csv", ".yaml", ".yml")
"""Names that a run or sweep directory's own files have: never written inside an input directory."""


def _is_report(path: Path) -> bool:
    """Whether ``path`` is a report this function wrote (it begins as every report does)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HEAD.encode())) == HEAD.encode()
    except OSError:
        return False


def check_output(inputs: list[Path], output: Path) -> None:
    """A ValueError when writing the report to ``output`` would overwrite an input: ``output`` is
    (by any path, links resolved) one of the input files, or lies inside an input run or sweep
    directory and is an existing file other than an earlier report, or has the name of a run's or
    sweep's own files (summary.json, *.parquet, ...: the report, or the sweep, would read it next)."""
    from fleetwise.paths import path_kind, resolved

    out = Path(output)
    target = resolved(out, "-o", ValueError)
    for given in inputs:
        given = Path(given)
        if path_kind(given, "report input", ValueError) == "file" and (target == given.resolve() or (out.exists() and same_file(out, given))):
            raise ValueError(f"-o {out}: is the input {given}; writing the report there would overwrite it: give another file, e.g. report.html")
        kind, d = classify(given)
        root = d.resolve()
        if target == root or root not in target.parents:
            continue
        what = f"the {kind} directory {d}"
        if out.is_symlink():
            what = f"the {kind} directory {d} (it links to {target})"
        if out.exists() and not out.is_dir() and not _is_report(out):
            raise ValueError(f"-o {out}: is a file of {what}, an input of this report; writing the report there would overwrite it: "
                             f"give a file outside {d}, or a new .html file, e.g. {d / 'report.html'}")
        if target.suffix.lower() in _INPUT_SUFFIXES:
            raise ValueError(f"-o {out}: inside {what}, an input of this report, where {target.suffix} files are its own data "
                             f"(a later report or sweep would read it): give an .html file, e.g. {d / 'report.html'}, or a file outside {d}")


def write_report(inputs: list[Path], output: Path, title: str | None = None, sample_requests: int = 200) -> Path:
    """Writes one self-contained HTML report comparing ``inputs`` and returns its path.

    ``inputs`` are run directories (compared side by side, labelled by directory name) and/or sweep
    directories (points.parquet, sweep.json, optionally goodput.json). The page embeds plotly.js
    once and works offline; each figure is a div ``fig-<name>`` (see ``FIGURE_IDS``); a figure whose
    data is absent is replaced by a note saying what is missing. ``sample_requests`` bounds the
    requests drawn per run in the timeline. The same inputs give a byte-identical file. An
    ``output`` that would overwrite an input is a ValueError (see ``check_output``).
    """
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    check_output(paths, Path(output))
    data = load_inputs(paths)
    colors = label_colors(data.labels())
    panels = build_panels(data, colors, sample_requests)
    tables: list[tuple[str, str]] = []
    for s in data.sweeps:
        tables.append((f"Sweep {s.name}", sweep_tables(s, colors)))
    if data.runs:
        tables.append(("Runs" if not data.sweeps else "Runs shown in the per-run figures", runs_table(data.runs, colors)))
    if title is None:
        title = "fleetwise report: " + ", ".join(p.resolve().name or str(p) for p in paths)
    html = render(title, [str(p) for p in paths], tables, panels, colors, data.notes)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
