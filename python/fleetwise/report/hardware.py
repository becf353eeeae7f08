"""MoE and PIM panels: per-instance counters whose columns start with expert_, moe_ or pim_."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fleetwise.report.load import ReportData
from fleetwise.report.panel import Panel, label_meta, skipped, style

PREFIXES = ("expert_", "moe_", "pim_")
MAX_COLUMNS = 12


def _columns(frame: pl.DataFrame | None) -> list[str]:
    if frame is None:
        return []
    return [c for c, t in frame.schema.items() if c.startswith(PREFIXES) and t.is_numeric()]


def moe_pim_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of MoE expert-cache and PIM figures per instance (a skipped panel when no run has such columns)."""
    name, title = "moe-pim", "MoE and PIM counters"
    desc = "Per-instance counters of mixture-of-experts and processing-in-memory models (instances.parquet columns expert_*, moe_*, pim_*)."
    runs = [r for r in data.runs if _columns(r.instances)]
    if not runs:
        return skipped(name, title, desc, "No expert_*, moe_* or pim_* columns in instances.parquet (the runs have no MoE/PIM counters).")
    cols = sorted({c for r in runs for c in _columns(r.instances)})
    if len(cols) > MAX_COLUMNS:
        desc += f" First {MAX_COLUMNS} of {len(cols)} columns."
        cols = cols[:MAX_COLUMNS]
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=cols, vertical_spacing=min(0.15, 0.4 / nrows) if nrows > 1 else 0.1, horizontal_spacing=0.08)
    for k, c in enumerate(cols):
        r, col = divmod(k, ncols)
        for run in runs:
            if c not in run.instances.columns:
                continue
            inst = run.instances.sort("instance")
            fig.add_trace(
                go.Bar(x=[f"i{i}" for i in inst["instance"].to_list()], y=inst[c].cast(pl.Float64).to_numpy(), marker_color=colors[run.label], name=run.label, legendgroup=run.label,
                       showlegend=k == 0, meta=label_meta(run.label), hovertemplate=f"{run.label}<br>instance %{{x}}<br>{c} %{{y:.4g}}<extra></extra>"),
                row=r + 1, col=col + 1,
            )
    fig.update_layout(barmode="group")
    return Panel(name, title, desc, style(fig, 120 + 260 * nrows))
