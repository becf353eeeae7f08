"""Reader for a generic per-request table (CSV, JSON Lines or Parquet), as a ``RequestLog``.

One row (CSV line, JSON object, Parquet row) per request. Columns, by what they hold; each is found
under any of its names, with an optional unit suffix ``_s`` (seconds, also the meaning of no
suffix), ``_ms``, ``_us`` or ``_ns``:

==================  ==========================================================================
holds               accepted names (before the unit suffix)
==================  ==========================================================================
arrival             ``arrival``, ``arrival_time``, ``start``, ``start_time``, ``send_time``, ``timestamp``
first token         ``first_token``, ``first_token_time``, or else a TTFT: ``ttft``, ``time_to_first_token``
last token          ``last_token``, ``last_token_time``, ``completion``, ``completion_time``,
                    ``end_time``, ``finish_time``, or else an E2E latency: ``e2e``, ``latency``, ``e2e_latency``
prompt tokens       ``prompt_tokens``, ``input_tokens``, ``prompt_len``, ``input_len``, ``num_prompt_tokens``
output tokens       ``output_tokens``, ``completion_tokens``, ``output_len``, ``generated_tokens``, ``num_output_tokens``
ITL (optional)      ``itl``, ``itls``, ``inter_token_latencies``: a list of gaps (JSON list, Parquet
                    list, or in CSV ``;``-separated numbers)
==================  ==========================================================================

So ``arrival_s, first_token_s, last_token_s, prompt_tokens, output_tokens`` is the documented
spelling. Times are on any common clock (epoch seconds work); TTFT and E2E are relative to the
arrival. Parquet timestamp and duration columns are read in their own unit. Token counts are
integers. Other columns are ignored, except for selecting rows
(``select={"trace": "rate6"}`` keeps the rows whose ``trace`` column is ``rate6``). Errors name the
1-based line (CSV, JSON Lines) or the 0-based row (Parquet).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.requestlog.log import ITL_COLUMN, RequestLog, finish_log
from fleetwise.workload._files import POLARS_ERRORS, clip, first_true, nonblank_lines, read_table, read_text

UNITS = {"": 1.0, "_s": 1.0, "_ms": 1e-3, "_us": 1e-6, "_ns": 1e-9}
"""Unit suffixes of a time column and their factor to seconds."""
NAMES = {
    "arrival": ("arrival", "arrival_time", "start", "start_time", "send_time", "timestamp"),
    "first_token": ("first_token", "first_token_time"),
    "ttft": ("ttft", "time_to_first_token"),
    "last_token": ("last_token", "last_token_time", "completion", "completion_time", "end_time", "finish_time"),
    "e2e": ("e2e", "latency", "e2e_latency"),
    "itl": ("itl", "itls", "inter_token_latencies"),
}
"""Accepted names of each time column, before the unit suffix."""
TOKEN_NAMES = {
    "prompt_tokens": ("prompt_tokens", "input_tokens", "prompt_len", "input_len", "num_prompt_tokens"),
    "output_tokens": ("output_tokens", "completion_tokens", "output_len", "generated_tokens", "num_output_tokens"),
}
"""Accepted names of the token-count columns."""
FORMAT = "table"
"""This reader's name."""


def read_table_log(path: str | Path, select: dict[str, str] | None = None) -> RequestLog:
    """Read a per-request CSV (``.csv``), JSON Lines (``.jsonl``, ``.ndjson``) or Parquet
    (``.parquet``, ``.pq``) table into a ``RequestLog``; ``select`` keeps the rows whose named
    columns equal the given strings (the rest are counted under ``not_selected``).

    Raises ``TraceError`` naming the file for an unknown extension, an unreadable file, a missing
    column (listing the accepted names and the columns present) or two columns holding the same
    thing, and naming the line or row of a value that is not a number (or integer token count).
    """
    from fleetwise.errors import TraceError

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame, label = _read_csv(path), "line"
    elif suffix in (".jsonl", ".ndjson"):
        frame, label = _read_jsonl(path), "line"
    elif suffix in (".parquet", ".pq"):
        frame, label = _read_parquet(path), "row"
    else:
        raise TraceError(f"{path}: unknown per-request table extension {suffix!r}; expected .csv, .jsonl, .ndjson or .parquet")
    rows_read = frame.height
    dropped = {}
    if select:
        for name, value in select.items():
            if name not in frame.columns:
                raise TraceError(f"{path}: cannot select on {name!r}: no such column; columns: {', '.join(frame.columns[:40])}")
            keep = frame[name].cast(pl.String, strict=False) == value
            frame = frame.filter(keep.fill_null(False))
        dropped["not_selected"] = rows_read - frame.height
    columns = _resolve(path, [c for c in frame.columns if c != "source_row"])

    def fail(row: int, message: str) -> None:
        raise TraceError(f"{path}: {label} {int(frame['source_row'][row])}: {message}")

    def seconds(column: tuple[str, float]) -> pl.Series:
        name, scale = column
        raw = frame[name]
        if isinstance(raw.dtype, pl.Datetime):  # a timestamp: its own unit, not the name's
            values, scale = raw.dt.epoch("ns").cast(pl.Float64), 1e-9
        elif isinstance(raw.dtype, pl.Duration):
            values, scale = raw.dt.total_nanoseconds().cast(pl.Float64), 1e-9
        elif raw.dtype == pl.String:
            values = raw.str.strip_chars().cast(pl.Float64, strict=False)
        elif raw.dtype.is_numeric():
            values = raw.cast(pl.Float64)
        else:
            fail(0, f"{name} must be numbers (seconds), timestamps or durations, got a column of {raw.dtype}")
        row = first_true(values.is_null())
        if row is not None:
            fail(row, f"{name} must be a number, got {clip(frame[name][row])}")
        return values * scale

    arrival = seconds(columns["arrival"])
    first = seconds(columns["first_token"]) if "first_token" in columns else arrival + seconds(columns["ttft"])
    last = seconds(columns["last_token"]) if "last_token" in columns else arrival + seconds(columns["e2e"])
    out = {"source_row": frame["source_row"], "arrival_s": arrival, "first_token_s": first, "last_token_s": last}
    for key in TOKEN_NAMES:
        name = columns[key][0]
        raw = frame[name]
        ints = (raw.str.strip_chars() if raw.dtype == pl.String else raw).cast(pl.Int64, strict=False)
        if raw.dtype.is_float():
            ints = ints.set(raw != raw.round(0), None)
        row = first_true(ints.is_null())
        if row is not None:
            fail(row, f"{name} must be an integer, got {clip(raw[row])}")
        out[key] = ints
    result = pl.DataFrame(out)
    if "itl" in columns:
        result = result.with_columns(_gaps(frame, columns["itl"], fail).alias(ITL_COLUMN))
    return finish_log(result, path, FORMAT, label, rows_read, dropped)


def _resolve(path: Path, present: list[str]) -> dict[str, tuple[str, float]]:
    """The column of each thing the table holds, with its factor to seconds: every time column
    found under its names and units, the token columns; ``TraceError`` when one is missing or
    found twice."""
    from fleetwise.errors import TraceError

    found: dict[str, tuple[str, float]] = {}
    lowered = {c.lower(): c for c in present}
    wanted = {**{k: [n + u for n in names for u in UNITS] for k, names in NAMES.items()}, **{k: list(v) for k, v in TOKEN_NAMES.items()}}
    for key, names in wanted.items():
        hits = [lowered[n] for n in names if n in lowered]
        if len(hits) > 1:
            raise TraceError(f"{path}: columns {', '.join(hits)} all hold the {key.replace('_', ' ')}; keep one")
        if hits:
            name = hits[0]
            unit = next((u for u in ("_ms", "_us", "_ns", "_s") if name.lower().endswith(u)), "")
            found[key] = (name, UNITS[unit])
    need = [("arrival",), ("first_token", "ttft"), ("last_token", "e2e"), ("prompt_tokens",), ("output_tokens",)]
    missing = [alts for alts in need if not any(a in found for a in alts)]
    if missing:
        accepted = "; ".join(" or ".join("/".join(NAMES.get(a, TOKEN_NAMES.get(a, (a,)))) for a in alts) for alts in missing)
        raise TraceError(f"{path}: missing column(s) for {', '.join(' or '.join(alts) for alts in missing)} "
                         f"(accepted names: {accepted}; times may end in _s, _ms, _us or _ns); columns present: "
                         f"{', '.join(clip(c, 40)[1:-1] for c in present[:40]) or 'none'}")
    for pair in (("first_token", "ttft"), ("last_token", "e2e")):
        if all(p in found for p in pair):
            raise TraceError(f"{path}: columns {found[pair[0]][0]} and {found[pair[1]][0]} both give the {pair[0].replace('_', ' ')}; keep one")
    return found


def _gaps(frame: pl.DataFrame, column: tuple[str, float], fail) -> pl.Series:
    """The ITL column as List(Float64) seconds: a list column as it is, a string column split on
    ``;`` (CSV); the first entry that is not a list of numbers fails."""
    name, scale = column
    raw = frame[name]
    if raw.dtype == pl.String:
        parts = raw.fill_null("").str.strip_chars().str.split(";")
        lists = parts.list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != "").cast(pl.Float64, strict=False))
        bad = lists.list.eval(pl.element().is_null()).list.any()
    elif isinstance(raw.dtype, (pl.List, pl.Array)) and (raw.dtype.inner.is_numeric()):
        lists = raw.cast(pl.List(pl.Float64))
        bad = raw.is_null()
    else:
        fail(0, f"{name} must be a list of numbers (seconds), got a column of {raw.dtype}")
    row = first_true(bad)
    if row is not None:
        fail(row, f"{name} must be a list of numbers, got {clip(raw[row])}")
    return lists.list.eval(pl.element() * scale)


def _read_csv(path: Path) -> pl.DataFrame:
    """A CSV as string columns plus ``source_row`` (the 1-based line)."""
    table = read_table(path, ())
    return table.rows.with_columns(pl.Series("source_row", table.lines, dtype=pl.Int64))


def _read_jsonl(path: Path) -> pl.DataFrame:
    """A JSON Lines file (one object per non-blank line) plus ``source_row`` (the 1-based line)."""
    from fleetwise.errors import TraceError

    lines = nonblank_lines(read_text(path))
    if lines.height == 0:
        raise TraceError(f"{path}: file is empty")
    records = []
    for number, text in zip(lines["line"].to_list(), lines["text"].to_list()):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: line {number} column {exc.colno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise TraceError(f"{path}: line {number}: invalid JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise TraceError(f"{path}: line {number}: invalid JSON: {str(exc)[:200]}") from None
        if not isinstance(record, dict):
            raise TraceError(f"{path}: line {number}: expected a JSON object (one request), got {type(record).__name__}")
        records.append(record)
    keys = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for key in keys:
        values = [r.get(key) for r in records]
        if any(isinstance(v, list) for v in values):
            columns[key] = pl.Series(key, [[g if isinstance(g, (int, float)) and not isinstance(g, bool) else None for g in v] if isinstance(v, list) else None for v in values], dtype=pl.List(pl.Float64), strict=False)
        else:
            columns[key] = pl.Series(key, [None if v is None else (json.dumps(v) if isinstance(v, (dict, bool)) else str(v)) for v in values], dtype=pl.String)
    return pl.DataFrame(columns).with_columns(pl.Series("source_row", lines["line"], dtype=pl.Int64))


def _read_parquet(path: Path) -> pl.DataFrame:
    """A Parquet file plus ``source_row`` (the 0-based row)."""
    from fleetwise.errors import TraceError

    from fleetwise.paths import path_kind

    kind = path_kind(path, "request log", TraceError)
    if kind != "file":
        raise TraceError({None: f"{path}: file not found", "dir": f"{path}: is a directory, not a file"}.get(
            kind, f"{path}: not a regular file (a pipe, device or socket)"))
    try:
        frame = pl.read_parquet(path)
    except POLARS_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceError(f"{path}: not a readable Parquet file: {message}") from None
    return frame.with_columns(pl.Series("source_row", np.arange(frame.height, dtype=np.int64)))
