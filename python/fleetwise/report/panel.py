"""A report section: a figure (or the reason it was skipped) with its stable id and caption."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

MAX_POINTS = 2000
"""Most points per CDF series and most time bins per time series (keeps the file small)."""


@dataclass
class Panel:
    """One figure of the report; ``figure`` None means skipped, ``note`` says why."""

    name: str
    """The figure's div id is ``fig-<name>``."""
    title: str
    description: str
    figure: go.Figure | None = None
    note: str | None = None

    @property
    def div_id(self) -> str:
        """The HTML element id of this panel's figure."""
        return f"fig-{self.name}"


def skipped(name: str, title: str, description: str, why: str) -> Panel:
    """A panel without a figure: the report shows ``why`` in its place."""
    return Panel(name=name, title=title, description=description, figure=None, note=why)


def _legend_rows(fig: go.Figure, width_px: int = 1150) -> int:
    """Rough number of rows the horizontal legend wraps into (about 7 px per character)."""
    names = [t.name or "" for t in fig.data if t.showlegend is not False and t.name]
    if not names:
        return 0
    rows, used = 1, 0
    for n in names:
        w = 45 + 7 * len(n)
        if used and used + w > width_px:
            rows, used = rows + 1, 0
        used += w
    return rows


def style(fig: go.Figure, height: int) -> go.Figure:
    """The layout every report figure shares: the legend sits in the top margin, above subplot titles."""
    top = 50 + 22 * _legend_rows(fig)
    fig.update_layout(
        template="plotly_white",
        height=height + top,
        margin=dict(l=70, r=30, t=top, b=50),
        legend=dict(orientation="h", yref="container", y=1, yanchor="top", xanchor="left", x=0, groupclick="togglegroup"),
        hovermode="closest",
        font=dict(size=12),
    )
    return fig


def label_meta(label: str) -> dict:
    """Trace ``meta`` for a trace coloured by its series label."""
    return {"color_by": "label", "label": label}


def instance_meta(label: str, instance: int) -> dict:
    """Trace ``meta`` for a trace coloured by its instance."""
    return {"color_by": "instance", "label": label, "instance": int(instance)}
