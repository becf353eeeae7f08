"""Shared pieces of the commands: number formatting, the summary table, default output directories, option checks."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def _ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x * 1e3:.1f}"


def _num(x: float | None, fmt: str) -> str:
    """``x`` formatted, or "-" when the summary has no value for it."""
    return "-" if x is None else format(x, fmt)


def _scaled(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def _summary_table(summary: dict) -> Table:
    t = Table(title=f"{summary['scenario']}: {summary['finished']}/{summary['requests']} requests finished in {summary['duration_s']:.1f} s simulated")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(f"{c} (ms)", justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E"), ("scheduling_delay_s", "Sched. delay")):
        d = summary.get(key)
        if d is None:
            continue
        t.add_row(label, *(_ms(d[c]) for c in ("mean", "p50", "p90", "p99")))
    return t


def _default_dir(base: str, name: str) -> Path:
    """``base/name``, the default output directory of a scenario named ``name``; it never leaves ``base``."""
    from fleetwise.errors import ConfigError

    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"scenario name {name!r} cannot name a directory under {base}/ (no / or \\, not . or ..); rename it or give -o")
    return Path(base) / name


def _check_positive(option: str, value: float | None) -> None:
    """``ConfigError`` unless ``value`` (an option's number) is unset or finite and > 0."""
    import math

    from fleetwise.errors import ConfigError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} {value:g}: must be a finite number > 0")


def _trace_rows_line(rows: dict[str, int]) -> str:
    """``trace: N rows read, M replayed; left out on purpose: reason count, ...``."""
    left = ", ".join(f"{k} {v}" for k, v in rows.items() if k not in ("rows_read", "replayed") and v)
    line = f"trace: {rows.get('rows_read', 0)} rows read, {rows.get('replayed', 0)} replayed"
    return line + (f"; left out on purpose: {left}" if left else "")
