"""Latency figures: CDFs of TTFT/TPOT/E2E per run, and their percentiles against request rate."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fleetwise.report.colors import DASHES
from fleetwise.report.load import ReportData
from fleetwise.report.panel import MAX_POINTS, Panel, label_meta, skipped, style

METRICS = (("ttft_s", "ttft", "TTFT"), ("tpot_s", "tpot", "TPOT"), ("e2e_s", "e2e", "E2E"))


def cdf_points(values: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF of ``values``, at most ``max_points`` points (exact steps kept)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if n == 0:
        return v, v
    if n <= max_points:
        return v, np.arange(1, n + 1, dtype=np.float64) / n
    p = np.linspace(1.0 / max_points, 1.0, max_points)
    idx = np.clip(np.ceil(p * n).astype(np.int64) - 1, 0, n - 1)
    return v[idx], (idx + 1) / n


def cdf_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of TTFT, TPOT and E2E cumulative distributions."""
    name, title = "latency-cdf", "Latency distributions"
    desc = "Empirical CDFs of time to first token, time per output token and end-to-end latency of finished requests (log x)."
    runs = [r for r in data.runs if r.requests is not None and r.requests.height]
    if not runs:
        return skipped(name, title, desc, "No per-request tables (requests.parquet) in the inputs (sweeps run with --no-requests keep only summaries).")
    if data.sweeps:
        desc += " Sweep series are shown at one point each (see the run table)."
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m[2] for m in METRICS], horizontal_spacing=0.06)
    for run in runs:
        done = run.requests.filter(pl.col("status") == "finished")
        for col, (key, _, label) in enumerate(METRICS, start=1):
            if key not in done.columns:
                continue
            v = done[key].drop_nulls().to_numpy()
            v = v[np.isfinite(v) & (v > 0)]
            if len(v) == 0:
                continue
            x, y = cdf_points(v)
            fig.add_trace(
                go.Scatter(
                    x=x.astype(np.float32), y=y.astype(np.float32), mode="lines", line=dict(color=colors[run.label], width=2, shape="hv"),
                    name=run.label, legendgroup=run.label, showlegend=col == 1, meta=label_meta(run.label),
                    hovertemplate=f"{run.label}<br>{label} %{{x:.4g}} s<br>F %{{y:.3f}}<extra></extra>",
                ),
                row=1, col=col,
            )
    fig.update_xaxes(type="log", title_text="seconds")
    fig.update_yaxes(range=[0, 1.02], title_text="fraction of requests", row=1, col=1)
    return Panel(name, title, desc, style(fig, 430))


def percentiles_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of latency percentiles (p50/p90/p99) of each metric against a sweep's request rate."""
    name, title = "percentiles", "Latency percentiles against request rate"
    desc = "p50 (solid), p90 (dashed) and p99 (dotted) of TTFT, TPOT and E2E at every rate of the sweep, one colour per series (log y)."
    rows = []
    for s in data.sweeps:
        if s.points.height and s.points["rate"].null_count() < s.points.height:
            rows.append(s.points.filter(pl.col("rate").is_not_null()))
    if not rows:
        why = "Needs a sweep over workload.arrivals.rate (fleetwise sweep --grid workload.arrivals.rate=...)." if not data.sweeps else "The sweep does not vary workload.arrivals.rate."
        return skipped(name, title, desc, why)
    pts = pl.concat(rows, how="diagonal_relaxed")
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m[2] for m in METRICS], horizontal_spacing=0.06)
    for label in sorted(set(pts["label"].to_list())):
        sub = pts.filter(pl.col("label") == label).sort("rate")
        first = True
        for col, (_, short, mlabel) in enumerate(METRICS, start=1):
            for q, dash in zip(("p50", "p90", "p99"), DASHES):
                c = f"{short}_{q}"
                if c not in sub.columns:
                    continue
                y = sub[c].cast(pl.Float64).to_numpy()
                fig.add_trace(
                    go.Scatter(
                        x=sub["rate"].to_numpy(), y=y, mode="lines+markers", line=dict(color=colors[label], dash=dash, width=2), marker=dict(size=5),
                        name=label, legendgroup=label, showlegend=first, meta=label_meta(label),
                        hovertemplate=f"{label}<br>{mlabel} {q} %{{y:.4g}} s<br>rate %{{x:.4g}} req/s<extra></extra>",
                    ),
                    row=1, col=col,
                )
                first = False
    fig.update_xaxes(title_text="request rate (req/s)")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="seconds", row=1, col=1)
    return Panel(name, title, desc, style(fig, 430))
