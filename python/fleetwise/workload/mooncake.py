"""Reader for the Mooncake (FAST'25) trace format: JSON Lines with prefix-block hashes.

Each non-blank line is one request, for example::

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, 3]}

``timestamp`` is milliseconds since the trace start, ``input_length`` and ``output_length`` are
token counts and ``hash_ids`` are the hashes of the prompt's KV blocks (512 tokens per block in the
released traces, so ``len(hash_ids) == ceil(input_length / 512)``; equal ids at the same position
mean a shareable prefix). Other keys are ignored. The whole file is parsed by polars at once; only
when that fails is it read line by line, to name the first bad line.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TIME_NS, MAX_TOKENS
from fleetwise.workload._files import (
    POLARS_ERRORS,
    SPAN_YEARS,
    clip,
    first_backwards,
    first_true,
    nonblank_lines,
    read_text,
)

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block in the released Mooncake traces."""

_INT64_MAX = 2**63 - 1
_SCHEMA = {
    "timestamp": pl.Float64,
    "input_length": pl.Int64,
    "output_length": pl.Int64,
    "hash_ids": pl.List(pl.Int64),
}
_REQUIRED = ("timestamp", "input_length", "output_length")


def load_mooncake(path: str | Path) -> pl.DataFrame:
    """Read a Mooncake JSONL trace.

    Returns a frame with int64 ``arrival_ns`` (``timestamp`` converted from milliseconds and made
    relative to the first line, so the first is 0), ``prompt_tokens`` (``input_length``),
    ``output_tokens`` (``output_length``) and, when the lines have them, ``hash_ids`` (list of
    int64), in file order. ``hash_ids`` must be on every line or on none.

    Raises ``TraceError`` naming the file and the 1-based line for: a line that is not a JSON
    object, a missing (or null) key, a value of the wrong type, ``input_length`` or
    ``output_length`` below 1 (the released traces have none: their smallest output is 1), a
    timestamp earlier than the previous line's (the traces are in time order), and for an empty
    file.
    """
    from fleetwise.errors import TraceError

    path = Path(path)
    lines = nonblank_lines(read_text(path))
    if lines.height == 0:
        raise TraceError(f"{path}: file is empty")
    numbers = lines["line"].to_numpy()
    body = "\n".join(lines["text"].to_list()).encode("utf-8")
    try:
        frame = pl.read_ndjson(io.BytesIO(body), schema=_SCHEMA)
    except POLARS_ERRORS as exc:  # polars raises several types, or panics; find the culprit
        _raise_first_bad_line(path, lines)
        raise TraceError(f"{path}: cannot parse as JSON Lines: {clip(str(exc), 200)}") from None
    if frame.height != lines.height:
        _raise_first_bad_line(path, lines)
        raise TraceError(
            f"{path}: parsed {frame.height} records from {lines.height} non-blank lines"
        )

    def fail(row: int, message: str) -> None:
        """Raise ``TraceError`` for data row ``row`` (0-based), naming its line."""
        raise TraceError(f"{path}: line {int(numbers[row])}: {message}")

    for key in _SCHEMA:  # polars keeps a repeated key's first value, json.loads its last: refuse it
        suspects = np.flatnonzero((lines["text"].str.count_matches(rf'"{key}"\s*:') > 1).to_numpy())
        for row in suspects:  # the count also sees the key inside a nested object: check the line's own keys
            top = json.JSONDecoder(object_pairs_hook=lambda pairs: pairs).decode(lines["text"][int(row)])
            if sum(k == key for k, _ in top) > 1:
                fail(int(row), f"key {key!r} appears more than once")

    for key in _REQUIRED:
        row = first_true(frame[key].is_null())
        if row is not None:
            fail(row, f"missing or null key {key!r}")
    has_hashes = frame["hash_ids"].null_count() < frame.height
    if has_hashes:
        row = first_true(frame["hash_ids"].is_null())
        if row is not None:
            fail(row, "missing or null key 'hash_ids' (other lines have it)")
        inner_nulls = frame["hash_ids"].list.len() - frame["hash_ids"].list.drop_nulls().list.len()
        row = first_true(inner_nulls > 0)
        if row is not None:
            fail(row, "hash_ids contains null")
    for key in ("input_length", "output_length"):
        row = first_true(frame[key] < 1)
        if row is not None:
            fail(row, f"{key} must be >= 1, got {frame[key][row]}")
        row = first_true(frame[key] > MAX_TOKENS)
        if row is not None:
            fail(row, f"{key} must be <= {MAX_TOKENS:,} tokens, got {frame[key][row]}")
    timestamps = frame["timestamp"]
    row = first_true(~timestamps.is_finite())
    if row is not None:
        fail(row, f"timestamp must be a finite number, got {timestamps[row]}")
    row = first_true(timestamps < 0)
    if row is not None:
        fail(row, f"timestamp must be >= 0 (milliseconds since the trace start), got {timestamps[row]:g}")
    row = first_backwards(timestamps)
    if row is not None:
        fail(
            row,
            f"timestamp {timestamps[row]:g} is earlier than the previous line's "
            f"{timestamps[row - 1]:g} (line {int(numbers[row - 1])}); lines must be in time order",
        )

    ms = timestamps.to_numpy()
    relative_ns = (ms - ms[0]) * 1e6
    beyond = np.flatnonzero(relative_ns > MAX_TIME_NS)
    if beyond.size:
        row = int(beyond[0])
        fail(
            row,
            f"timestamp {timestamps[row]:g} ms is more than {SPAN_YEARS:.0f} years after the first "
            f"line's {timestamps[0]:g} (line {int(numbers[0])}); timestamps are milliseconds "
            "since the trace start (is this trace in another unit, such as nanoseconds?)",
        )
    arrival_ns = np.rint(relative_ns).astype(np.int64)
    columns = [
        pl.Series("arrival_ns", arrival_ns),
        frame["input_length"].alias("prompt_tokens"),
        frame["output_length"].alias("output_tokens"),
    ]
    if has_hashes:
        columns.append(frame["hash_ids"])
    return pl.DataFrame(columns)


def _raise_first_bad_line(path: Path, lines: pl.DataFrame) -> None:
    """Parse ``lines`` one by one and raise ``TraceError`` at the first that is not a valid
    request record; return if every line is valid."""
    from fleetwise.errors import TraceError

    for number, text in zip(lines["line"].to_list(), lines["text"].to_list()):
        problem = _record_problem(text)
        if problem is not None:
            raise TraceError(f"{path}: line {number}: {problem}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_problem(text: str) -> str | None:
    """What is wrong with one JSONL line as a Mooncake record, or ``None``."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at column {exc.colno}: {exc.msg}"
    except RecursionError:
        return "JSON nested too deeply"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key in _REQUIRED:
        if record.get(key) is None:
            return f"missing or null key {key!r}"
    timestamp = record["timestamp"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        return f"timestamp must be a number (milliseconds), got {clip(timestamp)}"
    if not math.isfinite(timestamp):
        return f"timestamp must be a finite number, got {timestamp!r}"
    for key in ("input_length", "output_length"):
        value = record[key]
        if not _is_int(value):
            return f"{key} must be an integer, got {clip(value)}"
        if value < 1:
            return f"{key} must be >= 1, got {value}"
        if value > MAX_TOKENS:
            return f"{key} must be <= {MAX_TOKENS:,} tokens, got {clip(value)}"
    hashes = record.get("hash_ids")
    if hashes is not None:
        if not isinstance(hashes, list):
            return f"hash_ids must be a list of integers, got {hashes!r}"[:200]
        for index, value in enumerate(hashes):
            if not _is_int(value) or not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                return f"hash_ids[{index}] must be a 64-bit integer, got {clip(value)}"
    return None
