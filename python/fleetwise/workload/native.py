"""Reader for fleetwise's native trace format: a Parquet file with one row per request.

Required columns: ``arrival_ns`` (integer nanoseconds, non-decreasing), ``prompt_tokens`` and
``output_tokens`` (integers >= 1). Optional: ``hash_ids`` (list of integers: the request's prompt
KV-block hashes), ``session_id`` (integer, -1 for no session) and ``acceptance_class`` (string or
null: the request's speculative acceptance class by name). Other columns are ignored, so
``Workload.to_frame().write_parquet(path)`` writes a valid file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import polars as pl

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.workload._files import (
    POLARS_ERRORS,
    SPAN_YEARS,
    first_backwards,
    first_past_span,
    first_true,
)

REQUIRED_COLUMNS = ("arrival_ns", "prompt_tokens", "output_tokens")
"""The columns a native trace must have."""
OPTIONAL_COLUMNS = ("session_id", "hash_ids", "acceptance_class")
"""The columns a native trace may have."""


def load_parquet(path: str | Path) -> pl.DataFrame:
    """Read a native Parquet trace.

    Returns int64 ``arrival_ns`` (made relative to the first row, so the first is 0),
    ``prompt_tokens`` and ``output_tokens``, then ``session_id`` (int64), ``hash_ids`` (list of
    int64) and ``acceptance_class`` (string, nulls kept) when the file has them, in file order.

    Raises ``TraceError`` naming the file for an unreadable or empty file, a missing column
    (listing those present) or a column of the wrong type (any integer width is accepted; floats
    and strings are not), and naming the 0-based row for a null, a token count below 1, an
    ``arrival_ns`` smaller than the previous row's, a ``session_id`` below -1, a null hash or a
    value that does not fit in int64.
    """
    from fleetwise.errors import TraceError

    from fleetwise.paths import path_kind

    path = Path(path)
    kind = path_kind(path, "trace", TraceError)
    if kind is None:
        raise TraceError(f"{path}: file not found")
    if kind == "dir":
        raise TraceError(f"{path}: is a directory, not a file")

    def fail(message: str, row: int | None = None) -> NoReturn:
        """Raise ``TraceError`` naming the file and, when given, the 0-based row."""
        where = "" if row is None else f"row {row} (0-based): "
        raise TraceError(f"{path}: {where}{message}")

    try:
        present = list(pl.read_parquet_schema(path))
    except POLARS_ERRORS as exc:  # polars/arrow raise several types, or panic
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"not a readable Parquet file: {message}")
    missing = [name for name in REQUIRED_COLUMNS if name not in present]
    if missing:
        fail(
            f"missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}; "
            f"columns present: {', '.join(present)}"
        )
    names = [*REQUIRED_COLUMNS, *(name for name in OPTIONAL_COLUMNS if name in present)]
    try:
        frame = pl.read_parquet(path, columns=names)  # only these: other columns are not decoded
    except POLARS_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"not a readable Parquet file: {message}")
    if frame.height == 0:
        fail("has no rows")

    for name in names:
        column = frame[name]
        dtype = column.dtype
        if name == "acceptance_class":
            if dtype not in (pl.String, pl.Categorical, pl.Enum, pl.Null):
                fail(f"column acceptance_class must be strings (class names) or null, got {dtype}")
            continue  # null: the class is drawn by share
        if name == "hash_ids":
            if not (isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_integer()):
                fail(f"column hash_ids must be a list of integers, got {dtype}")
        elif not dtype.is_integer():
            fail(f"column {name} must be integers (int64), got {dtype}")
        row = first_true(column.is_null())
        if row is not None:
            fail(f"{name} is null", row)

    casts = {}
    for name in names:
        if name == "acceptance_class":
            casts[name] = frame[name].cast(pl.String)
            continue
        target = pl.List(pl.Int64) if name == "hash_ids" else pl.Int64
        try:
            casts[name] = frame[name].cast(target)
        except POLARS_ERRORS:  # overflow of an unsigned or wide value
            if name == "hash_ids":
                rows = pl.Series(range(frame.height)).to_frame("row").with_columns(frame[name])
                flat = rows.explode(name)
                values, row_of = flat[name], flat["row"]
            else:
                values, row_of = frame[name], pl.Series(range(frame.height))
            too_big = values.cast(pl.Int64, strict=False).is_null() & values.is_not_null()
            first = first_true(too_big)
            fail(
                f"{name} has a value that does not fit in int64: {values[first]}",
                None if first is None else int(row_of[first]),
            )
    frame = pl.DataFrame(casts)

    for name in ("prompt_tokens", "output_tokens"):
        row = first_true(frame[name] < 1)
        if row is not None:
            fail(f"{name} must be >= 1, got {frame[name][row]}", row)
        row = first_true(frame[name] > MAX_TOKENS)
        if row is not None:
            fail(f"{name} must be <= {MAX_TOKENS:,} tokens, got {frame[name][row]}", row)
    arrival = frame["arrival_ns"]
    row = first_backwards(arrival)
    if row is not None:
        fail(
            f"arrival_ns {arrival[row]} is smaller than the previous row's {arrival[row - 1]}; "
            "rows must be in arrival order",
            row,
        )
    row = first_past_span(arrival)
    if row is not None:
        fail(
            f"arrival_ns {arrival[row]} is more than {SPAN_YEARS:.0f} years after the first row's "
            f"{arrival[0]}",
            row,
        )
    if "session_id" in frame.columns:
        row = first_true(frame["session_id"] < -1)
        if row is not None:
            fail(f"session_id must be >= 0, or -1 for none; got {frame['session_id'][row]}", row)
    if "hash_ids" in frame.columns:
        hashes = frame["hash_ids"]
        row = first_true(hashes.list.len() != hashes.list.drop_nulls().list.len())
        if row is not None:
            fail("hash_ids contains null", row)
    return frame.with_columns(pl.col("arrival_ns") - arrival[0])
