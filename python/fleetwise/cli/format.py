"""Shared pieces of the commands: number formatting, the summary table, default output directories,
option checks, error messages with long user values shortened."""

from __future__ import annotations

import re
from pathlib import Path

from rich.table import Table

from fleetwise.paths import SHOWN_LIMIT, shortened


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


def _length_rows_line(rows: dict[str, int], path: str) -> str:
    """``lengths file PATH: N rows read, M kept; left out on purpose: reason count, ...``."""
    left = ", ".join(f"{k} {v}" for k, v in rows.items() if k not in ("rows_read", "kept") and v)
    line = f"lengths file {path}: {rows.get('rows_read', 0)} rows read, {rows.get('kept', 0)} kept"
    return line + (f"; left out on purpose: {left}" if left else "")


MESSAGE_LIMIT = 4000
"""An error message still longer than this (a long list echoed with spaces in it) keeps its first
and last parts around a note of its length."""

# A quoted value ('...' or "..." as repr writes it) starting after a space or an opening bracket
# and ending before a space or punctuation (so an apostrophe in prose opens nothing); or any run of
# non-space characters.
_LONG_VALUE = re.compile(
    r"""(?<![^\s(\[{=:,])(?P<q>'[^'\n]{%d,}'|"[^"\n]{%d,}")(?=[\s,;:.)\]}]|$)|(?P<bare>\S{%d,})""" % ((SHOWN_LIMIT + 1,) * 3)
)


def _shorten(m: re.Match) -> str:
    """One long value of ``shorten_values``, shortened as ``fleetwise.paths.shortened`` shortens a
    path (a quoted value inside its quotes; a bare run without the punctuation that ends it)."""
    if m.group("q"):
        quoted = m.group("q")
        short = shortened(quoted[1:-1])
        head, _, count = short.rpartition(" (")
        return f"{quoted[0]}{head}{quoted[0]} ({count}" if count else quoted
    bare = m.group("bare")
    value = bare.rstrip(",;:.)]}")
    return shortened(value) + bare[len(value):]


def shorten_values(message: str) -> str:
    """``message`` with every quoted value or unbroken run of characters longer than
    ``SHOWN_LIMIT`` shortened (``'xxxx...xxxx' (100,000 characters)``), and then, were it still longer
    than ``MESSAGE_LIMIT``, its middle left out: what an error echoes of a user's value stays readable."""
    message = _LONG_VALUE.sub(_shorten, message)
    if len(message) > MESSAGE_LIMIT:
        head, tail = MESSAGE_LIMIT * 2 // 3, MESSAGE_LIMIT // 4
        message = f"{message[:head]} ... ({len(message) - head - tail:,} characters left out) ... {message[-tail:]}"
    return message


def error_text(e: BaseException) -> str:
    """``TypeName: message`` of an error for the terminal, long user values shortened (``shorten_values``)."""
    return shorten_values(f"{type(e).__name__}: {e}")
