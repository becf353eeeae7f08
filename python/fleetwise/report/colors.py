"""Fixed palettes: every series label, and every instance index, keeps one colour in every figure."""

from __future__ import annotations

LABEL_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
)
"""Series (run or sweep label) colours, assigned in sorted label order."""

INSTANCE_PALETTE = (
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
)
"""Instance colours (instance i of every run), used by the per-instance figures and the timeline."""

DASHES = ("solid", "dash", "dot")
"""p50, p90, p99 line styles."""


def label_colors(labels: list[str]) -> dict[str, str]:
    """One colour per label, by sorted order, cycling through the palette (built once per report)."""
    return {lab: LABEL_PALETTE[i % len(LABEL_PALETTE)] for i, lab in enumerate(sorted(set(labels)))}


def instance_color(instance: int) -> str:
    """The colour of instance ``instance`` (the same in every figure and every run)."""
    return INSTANCE_PALETTE[int(instance) % len(INSTANCE_PALETTE)]


def with_alpha(hex_color: str, alpha: float) -> str:
    """``#rrggbb`` as an ``rgba(...)`` string with the given opacity."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha:g})"
