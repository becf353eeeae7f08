"""Small HTML summary tables: one column per run, and per sweep its points and goodput."""

from __future__ import annotations

import math
from html import escape


from fleetwise.metrics.flatten import flatten_summary
from fleetwise.report.load import RunData, SweepData, attainment_target
from fleetwise.report.slo import slo_text

MAX_POINT_ROWS = 400


def _num(x, fmt: str = "{:.3g}", scale: float = 1.0) -> str:
    if x is None or isinstance(x, bool):
        return "–" if x is None else str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return "–"
        return fmt.format(x * scale if scale != 1.0 else x)
    return escape(str(x))


def swatch(color: str) -> str:
    """A small coloured square (HTML) for a legend cell."""
    return f'<span class="swatch" style="background:{color}"></span>'


def _requests_cell(summary: dict):
    """"N (finished / rejected)" as summary.json holds them, or None without a request count."""
    if "requests" not in summary:
        return None
    return f"{summary['requests']} ({summary.get('finished', '–')} / {summary.get('rejected', '–')})"


_REQUESTS = "requests (finished / rejected)"

_RUN_ROWS = (
    ("scenario", "scenario", "{}"),
    (_REQUESTS, None, "{}"),
    ("duration (s)", "duration_s", "{:.2f}"),
    ("throughput (req/s)", "requests_per_s", "{:.3g}"),
    ("output tokens/s", "output_tokens_per_s", "{:,.0f}"),
    *[(f"{m.upper()} {q} (ms)", f"{m}_{q}", "{:.1f}") for m in ("ttft", "tpot", "itl") for q in ("p50", "p90", "p99")],
    *[(f"E2E {q} (s)", f"e2e_{q}", "{:.3g}") for q in ("p50", "p90", "p99")],
    ("preemptions", "preemptions", "{:,.0f}"),
    ("energy (J / output token)", "energy_joules_per_output_token", "{:.3g}"),
    ("cost ($ / M output tokens)", "dollars_per_million_output_tokens", "{:.3g}"),
    ("SLO attainment", "slo_attainment", "{:.1%}"),
)
"""The runs table's rows: label, column of the flattened summary (``flatten_summary``; None: the
requests cell), format."""
_MS = {f"{m.upper()} {q} (ms)" for m in ("ttft", "tpot", "itl") for q in ("p50", "p90", "p99")}


def runs_table(runs: list[RunData], colors: dict[str, str]) -> str:
    """One column per run: where it came from and its headline metrics."""
    if not runs:
        return ""
    head = "".join(f"<th>{swatch(colors[r.label])}{escape(r.label)}</th>" for r in runs)
    body = ["<tr><th>directory</th>" + "".join(f"<td><code>{escape(str(r.path))}</code>{'<br>' + escape(r.note) if r.note else ''}</td>" for r in runs) + "</tr>"]
    flats = [flatten_summary(r.summary) for r in runs]
    for name, column, fmt in _RUN_ROWS:
        vals = [_requests_cell(r.summary) if column is None else f[column] for f, r in zip(flats, runs)]
        if all(v is None for v in vals):
            continue
        scale = 1e3 if name in _MS else 1.0
        body.append(f"<tr><th>{escape(name)}</th>" + "".join(f"<td>{_num(v, fmt, scale)}</td>" for v in vals) + "</tr>")
    targets = [f["slo_targets"] for f in flats]
    if any(targets):
        body.append("<tr><th>SLO targets</th>" + "".join(f"<td>{escape(slo_text(t, None)) if t else '–'}</td>" for t in targets) + "</tr>")
    return f'<table class="summary runs"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_POINT_COLS = (
    ("rate", "rate (req/s)", "{:.4g}", 1.0),
    ("finished", "finished", "{:,.0f}", 1.0),
    ("requests_per_s", "req/s", "{:.3g}", 1.0),
    ("output_tokens_per_s", "output tok/s", "{:,.0f}", 1.0),
    ("ttft_p50", "TTFT p50 (ms)", "{:.1f}", 1e3),
    ("ttft_p90", "TTFT p90 (ms)", "{:.1f}", 1e3),
    ("ttft_p99", "TTFT p99 (ms)", "{:.1f}", 1e3),
    ("tpot_p90", "TPOT p90 (ms)", "{:.1f}", 1e3),
    ("e2e_p90", "E2E p90 (s)", "{:.3g}", 1.0),
    ("slo_attainment", "SLO attainment", "{:.1%}", 1.0),
)


def sweep_tables(sweep: SweepData, colors: dict[str, str]) -> str:
    """The sweep's grid, its points (by series and rate) and its goodput."""
    parts = []
    grid = sweep.manifest.get("grid")
    meta = [f"directory <code>{escape(str(sweep.path))}</code>"]
    if sweep.manifest.get("scenario"):
        meta.append(f"scenario <b>{escape(str(sweep.manifest['scenario']))}</b>")
    if isinstance(grid, dict):
        meta.append("grid " + "; ".join(f"<code>{escape(str(k))}</code> = {escape(', '.join(map(str, v)) if isinstance(v, list) else str(v))}" for k, v in grid.items()))
    meta.append(f"{sweep.points.height} points")
    if sweep.reference_rate is not None:
        meta.append(f"per-run figures at {sweep.reference_rate:.4g} req/s")
    parts.append(f'<p class="meta">{"; ".join(meta)}</p>')
    if sweep.goodput:
        rows = []
        for label in sorted(sweep.goodput):
            g = sweep.goodput[label]
            rows.append(f"<tr><td>{swatch(colors[label])}{escape(label)}</td><td>{_num(g.get('goodput_rate'), '{:.3g}')}</td><td>{_num(g.get('goodput_per_gpu'), '{:.3g}')}</td>"
                        f"<td>{_num(g.get('gpus'), '{:.0f}')}</td><td>{escape(slo_text(g.get('slo'), g.get('attainment_target')))}</td></tr>")
        parts.append('<table class="summary goodput"><thead><tr><th>series</th><th>goodput (req/s)</th><th>per GPU</th><th>GPUs</th><th>SLO</th></tr></thead>'
                     f"<tbody>{''.join(rows)}</tbody></table>")
    pts = sweep.points
    if pts.height:
        cols = [c for c in _POINT_COLS if c[0] in pts.columns and pts[c[0]].null_count() < pts.height]
        shown = pts.sort(["label", "rate", "point"], nulls_last=True).head(MAX_POINT_ROWS)
        rows = []
        for row in shown.iter_rows(named=True):
            cells = "".join(f"<td>{_num(row[c], fmt, scale)}</td>" for c, _, fmt, scale in cols)
            rows.append(f"<tr><td>{swatch(colors[row['label']])}{escape(row['label'])}</td>{cells}</tr>")
        more = f'<p class="note">First {MAX_POINT_ROWS} of {pts.height} points.</p>' if pts.height > MAX_POINT_ROWS else ""
        heads = "".join(f"<th>{escape(h)}</th>" for _, h, _, _ in cols)
        parts.append(f'<table class="summary points"><thead><tr><th>series</th>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>{more}')
    target = attainment_target(sweep)
    if target is not None and not sweep.goodput:
        parts.append(f'<p class="meta">target attainment {target:.0%}</p>')
    return "".join(parts)
