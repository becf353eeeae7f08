"""Per-instance time series from iterations.parquet: busy fraction, KV cache use, queue lengths.

Every iteration is a piece of a piecewise-constant signal on [start, end); each time bin shows the
signal's time average over the bin (an idle instance counts as 0), computed exactly from prefix
sums, so the figure is the same whatever the bin width.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from fleetwise.report.colors import instance_color
from fleetwise.report.load import ReportData, RunData
from fleetwise.report.panel import MAX_POINTS, Panel, instance_meta, skipped, style

MAX_INSTANCES = 16
"""Instances drawn per run (the first ones by index)."""
_NO_ITERATIONS = "No iterations.parquet in the inputs: write runs with `fleetwise run ... --iterations` (sweep points are saved without it)."


def bin_edges(end_s: float, durations_s: np.ndarray, max_bins: int = MAX_POINTS) -> np.ndarray:
    """Edges from 0 to ``end_s``: about ten median iterations per bin, between 20 and ``max_bins`` bins."""
    med = float(np.median(durations_s)) if len(durations_s) else 0.0
    n = int(round(end_s / (10 * med))) if med > 0 else max_bins
    n = int(np.clip(n, 20, max_bins))
    return np.linspace(0.0, max(end_s, 1e-9), n + 1)


def time_average(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean over each bin of sum_i values[i] * [starts[i] <= t < ends[i]] (exact)."""

    def integral(t: np.ndarray, at: np.ndarray, sign: float) -> np.ndarray:
        order = np.argsort(at, kind="stable")
        a, v = at[order], values[order]
        cv = np.concatenate([[0.0], np.cumsum(v)])
        cav = np.concatenate([[0.0], np.cumsum(v * a)])
        k = np.searchsorted(a, t, side="right")
        return sign * (t * cv[k] - cav[k])

    f = integral(edges, starts, 1.0) + integral(edges, ends, -1.0)
    return np.diff(f) / np.diff(edges)


def _runs_with_iterations(data: ReportData) -> list[RunData]:
    return [r for r in data.runs if r.iterations is not None and r.iterations.height]


def _series(run: RunData, value, max_bins: int = MAX_POINTS):
    """Yields (instance, x0, dx, y) per instance of ``run``; ``value(frame, instance)`` gives the per-iteration values (None: skip)."""
    it = run.iterations
    start = it["start_ns"].cast(pl.Float64).to_numpy() * 1e-9
    end = it["end_ns"].cast(pl.Float64).to_numpy() * 1e-9
    edges = bin_edges(float(end.max()), end - start, max_bins)
    width = edges[1] - edges[0]
    inst = it["instance"].cast(pl.Int64).to_numpy()
    for i in sorted(set(inst.tolist()))[:MAX_INSTANCES]:
        mask = inst == i
        v = value(it.filter(pl.Series(mask)), i)
        if v is None:
            continue
        order = np.argsort(start[mask], kind="stable")
        s, e = not_overlapping(start[mask][order], end[mask][order])
        y = time_average(s, e, np.asarray(v, dtype=np.float64)[order], edges)
        yield i, width / 2, width, y.astype(np.float32)


def not_overlapping(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One instance's iteration intervals (rows in start order) cut so that none overlaps the next:
    a pipelined instance (pp > 1) has several batches in flight, whose rows overlap and each hold
    an instance-wide snapshot (KV blocks, queues), so summing them counted the instance up to pp
    times. Batches finish in the order they start, so at any time the latest batch started is the
    one in flight, if any: row k holds from its start to the next row's start or its own end."""
    following = np.append(starts[1:], np.inf)
    return starts, np.minimum(ends, following)


def _subplot_title(run: RunData) -> str:
    return run.label + (f" ({run.note})" if run.note else "")


def _grid(runs: list[RunData], cols: int, col_titles: list[str] | None = None) -> go.Figure:
    rows = len(runs)
    titles = []
    for r in runs:
        for c in range(cols):
            titles.append(_subplot_title(r) + (f": {col_titles[c]}" if col_titles else ""))
    return make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=min(0.12, 0.35 / rows) if rows > 1 else 0.1, horizontal_spacing=0.07)


def _colour_titles(fig: go.Figure, runs: list[RunData], cols: int, colors: dict[str, str]) -> None:
    for k, ann in enumerate(fig.layout.annotations[: len(runs) * cols]):
        ann.font = dict(color=colors[runs[k // cols].label], size=13)


def _per_instance_panel(name, title, desc, data, colors, value, y_title, y_format=None, y_range=None, missing=None) -> Panel:
    runs = _runs_with_iterations(data)
    if not runs:
        return skipped(name, title, desc, _NO_ITERATIONS)
    fig = _grid(runs, 1)
    shown: set[int] = set()
    drawn = 0
    for row, run in enumerate(runs, start=1):
        for i, x0, dx, y in _series(run, lambda f, i: value(run, f, i)):
            fig.add_trace(
                go.Scatter(
                    x0=x0, dx=dx, y=y, mode="lines", line=dict(color=instance_color(i), width=1.5), name=f"instance {i}", legendgroup=f"instance {i}",
                    showlegend=i not in shown, meta=instance_meta(run.label, i), hovertemplate=f"{run.label} instance {i}<br>t %{{x:.3f}} s<br>%{{y:.3g}}<extra></extra>",
                ),
                row=row, col=1,
            )
            shown.add(i)
            drawn += 1
    if not drawn:
        return skipped(name, title, desc, missing or _NO_ITERATIONS)
    _colour_titles(fig, runs, 1, colors)
    fig.update_xaxes(title_text="simulated time (s)", row=len(runs))
    fig.update_yaxes(title_text=y_title, tickformat=y_format, range=y_range)
    return Panel(name, title, desc, style(fig, 120 + 230 * len(runs)))


def utilisation_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of each instance's busy share over time."""
    desc = "Fraction of each time bin in which the instance was running an iteration (one row per run, one colour per instance)."
    return _per_instance_panel("utilisation", "Instance utilisation over time", desc, data, colors, lambda run, f, i: np.ones(f.height), "busy fraction", ".0%", [0, 1.05])


def kv_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of each instance's KV-cache occupancy over time."""
    desc = "KV cache blocks in use as a fraction of the instance's blocks (kv_blocks / num_blocks), time-averaged per bin."

    def value(run: RunData, f: pl.DataFrame, i: int):
        inst = run.instances
        if inst is None or "num_blocks" not in inst.columns or "kv_blocks" not in f.columns:
            return None
        nb = inst.filter(pl.col("instance") == i)["num_blocks"]
        if nb.len() == 0 or not nb[0]:
            return None
        return f["kv_blocks"].cast(pl.Float64).to_numpy() / float(nb[0])

    return _per_instance_panel("kv-usage", "KV cache usage over time", desc, data, colors, value, "KV blocks used", ".0%", [0, 1.05],
                               missing="No kv_blocks in iterations.parquet or num_blocks in instances.parquet.")


def queues_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of waiting and running requests over time."""
    name, title = "queues", "Queue lengths over time"
    desc = "Requests waiting (left) and running (right) on each instance, time-averaged per bin."
    runs = [r for r in _runs_with_iterations(data) if {"waiting", "running"} <= set(r.iterations.columns)]
    if not runs:
        return skipped(name, title, desc, _NO_ITERATIONS)
    fig = _grid(runs, 2, ["waiting", "running"])
    shown: set[int] = set()
    for row, run in enumerate(runs, start=1):
        for col, key in ((1, "waiting"), (2, "running")):
            for i, x0, dx, y in _series(run, lambda f, i: f[key].cast(pl.Float64).to_numpy()):
                fig.add_trace(
                    go.Scatter(
                        x0=x0, dx=dx, y=y, mode="lines", line=dict(color=instance_color(i), width=1.5), name=f"instance {i}", legendgroup=f"instance {i}",
                        showlegend=i not in shown, meta=instance_meta(run.label, i), hovertemplate=f"{run.label} instance {i}<br>t %{{x:.3f}} s<br>{key} %{{y:.3g}}<extra></extra>",
                    ),
                    row=row, col=col,
                )
                shown.add(i)
    _colour_titles(fig, runs, 2, colors)
    fig.update_xaxes(title_text="simulated time (s)", row=len(runs))
    fig.update_yaxes(title_text="requests", rangemode="tozero")
    return Panel(name, title, desc, style(fig, 120 + 230 * len(runs)))
