"""SLO figures: goodput per series (total and per GPU) and SLO attainment against request rate."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fleetwise.report.load import ReportData, attainment_curves, attainment_target
from fleetwise.report.panel import Panel, label_meta, skipped, style


def slo_text(slo: dict | None, target: float | None) -> str:
    """``ttft ≤ 0.5 s, tpot ≤ 0.05 s at 90% attainment``."""
    parts = [f"{k} ≤ {v:g} s" for k, v in (slo or {}).items() if isinstance(v, (int, float))]
    text = ", ".join(parts) if parts else "the SLO"
    return text + (f" at {target:.0%} attainment" if target is not None else "")


def goodput_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of goodput against arrival rate, from a goodput search's results."""
    name, title = "goodput", "Goodput"
    desc = "The highest request rate at which the target fraction of requests meets every SLO (DistServe's goodput), per series, in total and per GPU."
    entries = {lab: g for s in data.sweeps for lab, g in s.goodput.items()}
    if not entries:
        return skipped(name, title, desc, "No goodput.json in the inputs (fleetwise goodput writes one).")
    slos = {slo_text(g.get("slo"), g.get("attainment_target")) for g in entries.values()}
    if len(slos) == 1:
        desc += f" SLO: {next(iter(slos))}."
    fig = make_subplots(rows=1, cols=2, subplot_titles=["goodput (req/s)", "goodput per GPU (req/s/GPU)"], horizontal_spacing=0.1)
    for label in sorted(entries):
        g = entries[label]
        rate = float(g.get("goodput_rate", float("nan")))
        gpus = g.get("gpus")
        per_gpu = float(g["goodput_per_gpu"]) if "goodput_per_gpu" in g else (rate / gpus if gpus else float("nan"))
        for col, value in ((1, rate), (2, per_gpu)):
            fig.add_trace(
                go.Bar(
                    x=[label], y=[value], marker_color=colors[label], name=label, legendgroup=label, showlegend=col == 1,
                    text=[f"{value:.3g}"], textposition="outside", meta=label_meta(label),
                    hovertemplate=f"{label}<br>%{{y:.4g}}" + (" req/s" if col == 1 else " req/s per GPU") + (f"<br>{gpus} GPUs" if gpus else "") + "<extra></extra>",
                ),
                row=1, col=col,
            )
    fig.update_xaxes(showticklabels=len(entries) <= 6)
    fig.update_yaxes(rangemode="tozero")
    return Panel(name, title, desc, style(fig, 430))


def attainment_panel(data: ReportData, colors: dict[str, str]) -> Panel:
    """The panel of SLO attainment (share of requests meeting each SLO)."""
    name, title = "slo-attainment", "SLO attainment against request rate"
    desc = "Fraction of all requests meeting every SLO target at each rate; the dashed line is the target attainment, dotted verticals mark each series' goodput."
    curves: dict[str, list[tuple[float, float]]] = {}
    targets: set[float] = set()
    goodputs: dict[str, float] = {}
    for s in data.sweeps:
        curves.update(attainment_curves(s))
        t = attainment_target(s)
        if t is not None:
            targets.add(t)
        for lab, g in s.goodput.items():
            if isinstance(g.get("goodput_rate"), (int, float)):
                goodputs[lab] = float(g["goodput_rate"])
    if not curves:
        why = "Needs a sweep (or goodput search) whose scenario has an slo: section." if data.sweeps else "Needs a sweep directory; single runs have one attainment each (see the table)."
        return skipped(name, title, desc, why)
    fig = go.Figure()
    xs = [r for c in curves.values() for r, _ in c]
    lo, hi = min(xs), max(xs)
    for label in sorted(curves):
        rate, att = zip(*curves[label])
        fig.add_trace(
            go.Scatter(
                x=list(rate), y=list(att), mode="lines+markers", line=dict(color=colors[label], width=2), name=label, legendgroup=label, meta=label_meta(label),
                hovertemplate=f"{label}<br>rate %{{x:.4g}} req/s<br>attainment %{{y:.1%}}<extra></extra>",
            )
        )
        if label in goodputs and goodputs[label] > 0:
            g = goodputs[label]
            fig.add_trace(
                go.Scatter(
                    x=[g, g], y=[0, 1], mode="lines", line=dict(color=colors[label], dash="dot", width=1), name=f"{label} goodput", legendgroup=label,
                    showlegend=False, meta=label_meta(label), hovertemplate=f"{label}<br>goodput %{{x:.4g}} req/s<extra></extra>",
                )
            )
    for t in sorted(targets):
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[t, t], mode="lines", line=dict(color="#444444", dash="dash", width=1.5), name=f"target {t:.0%}",
                meta={"color_by": "fixed"}, hoverinfo="skip",
            )
        )
    fig.update_xaxes(title_text="request rate (req/s)")
    fig.update_yaxes(title_text="SLO attainment", range=[0, 1.05], tickformat=".0%")
    return Panel(name, title, desc, style(fig, 430))
