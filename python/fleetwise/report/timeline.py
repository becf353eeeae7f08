"""A request timeline (Gantt) for a deterministic sample of each run's requests."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fleetwise.report.colors import instance_color, with_alpha
from fleetwise.report.load import ReportData
from fleetwise.report.panel import Panel, instance_meta, skipped, style


def sample_step(rows: int, n: int, instances: int = 1) -> int:
    """The stride k: every k-th of ``rows`` requests gives at most ``n`` of them.

    k is the smallest stride >= ceil(rows / n) that shares no factor with the number of instances,
    so a round-robin router (request i on instance i mod m) cannot alias every sampled request
    onto the same few instances.
    """
    k = max(1, math.ceil(rows / max(n, 1)))
    while instances > 1 and math.gcd(k, instances) != 1:
        k += 1
    return k


def sample_every_kth(requests: pl.DataFrame, n: int) -> pl.DataFrame:
    """Every k-th request by request_id (see ``sample_step``): at most ``n`` rows, the same on every call."""
    instances = requests["instance"].n_unique() if "instance" in requests.columns and requests.height else 1
    return requests.sort("request_id").gather_every(sample_step(requests.height, n, instances))


def timeline_panel(data: ReportData, colors: dict[str, str], sample_requests: int = 200) -> Panel:
    """The panel of per-request timelines (queued, prefill, decode) for a sample of requests."""
    name, title = "timeline", "Request timeline"
    runs = [r for r in data.runs if r.requests is not None and r.requests.height]
    desc = (f"Every k-th request (at most {sample_requests} per run): the light bar runs from arrival to the first token "
            "(queueing and prefill), the solid bar from the first token to completion (decoding); colour = instance, x = rejected.")
    if not runs:
        return skipped(name, title, desc, "No per-request tables (requests.parquet) in the inputs (sweeps run with --no-requests keep only summaries).")
    rows = len(runs)
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[r.label + (f" ({r.note})" if r.note else "") for r in runs], vertical_spacing=min(0.08, 0.3 / rows) if rows > 1 else 0.1)
    shown: set[int] = set()
    rejected_shown = False
    for row, run in enumerate(runs, start=1):
        s = sample_every_kth(run.requests, sample_requests)
        k = int(s["request_id"][1] - s["request_id"][0]) if s.height > 1 else 1
        done = s.filter(pl.col("status") == "finished")
        for i in sorted(set(done["instance"].to_list())):
            d = done.filter(pl.col("instance") == i)
            rid = d["request_id"].to_numpy()
            arr = d["arrival_ns"].cast(pl.Float64).to_numpy() * 1e-9
            first = d["first_token_ns"].cast(pl.Float64).to_numpy() * 1e-9
            comp = d["completion_ns"].cast(pl.Float64).to_numpy() * 1e-9
            extra = [d[c].cast(pl.Float64).to_numpy() if c in d.columns else np.full(d.height, np.nan) for c in ("prompt_tokens", "output_tokens", "preemptions")]
            custom = np.stack([arr, first, comp, *extra], axis=1)
            c = instance_color(i)
            common = dict(y=rid, orientation="h", width=0.8 * k, legendgroup=f"instance {i}", meta=instance_meta(run.label, i), customdata=custom)
            hover = (f"{run.label}<br>request %{{y}} on instance {i}<br>arrival %{{customdata[0]:.3f}} s, first token %{{customdata[1]:.3f}} s, "
                     "done %{customdata[2]:.3f} s<br>prompt %{customdata[3]} / output %{customdata[4]} tokens, preemptions %{customdata[5]}<extra></extra>")
            fig.add_trace(go.Bar(base=arr, x=first - arr, marker=dict(color=with_alpha(c, 0.35), line=dict(width=0)), name=f"instance {i} queue+prefill", showlegend=False,
                                 hovertemplate=hover, **common), row=row, col=1)
            fig.add_trace(go.Bar(base=first, x=comp - first, marker=dict(color=c, line=dict(width=0)), name=f"instance {i}", showlegend=i not in shown,
                                 hovertemplate=hover, **common), row=row, col=1)
            shown.add(i)
        rej = s.filter(pl.col("status") != "finished")
        if rej.height:
            fig.add_trace(go.Scatter(x=rej["arrival_ns"].cast(pl.Float64).to_numpy() * 1e-9, y=rej["request_id"].to_numpy(), mode="markers", marker=dict(symbol="x", color="#222222", size=6),
                                     name="rejected / unfinished", legendgroup="rejected", showlegend=not rejected_shown, meta={"color_by": "fixed"},
                                     hovertemplate=f"{run.label}<br>request %{{y}} %{{x:.3f}} s: not finished<extra></extra>"), row=row, col=1)
            rejected_shown = True
        fig.update_yaxes(autorange="reversed", title_text="request id", row=row, col=1)
    for k, ann in enumerate(fig.layout.annotations[:rows]):
        ann.font = dict(color=colors[runs[k].label], size=13)
    fig.update_layout(barmode="overlay", bargap=0.15)
    fig.update_xaxes(title_text="simulated time (s)", row=len(runs))
    return Panel(name, title, desc, style(fig, 120 + 380 * rows))
