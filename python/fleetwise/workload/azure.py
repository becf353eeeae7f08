"""Reader for the Azure LLM inference trace CSV format (2023 and 2024 releases).

A file starts with the header ``TIMESTAMP,ContextTokens,GeneratedTokens``; each following line is
one request, for example ``2023-11-16 18:17:03.9799600,4808,10`` (2023: 7 fractional digits, i.e.
100 ns resolution, no time zone) or ``2024-05-10 00:00:00.010000+00:00,2048,28`` (2024: microseconds
and a UTC offset). Python's ``datetime`` cannot parse 7 fractional digits, so timestamps are
converted to integer nanoseconds here, exactly and vectorised; an offset is applied, so rows with
different offsets are ordered by their UTC time.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fleetwise.workload._files import (
    SPAN_YEARS,
    Problem,
    TextTable,
    clip,
    first_backwards,
    first_past_span,
    first_true,
    read_table,
)

TIMESTAMP = "TIMESTAMP"
"""Header of the wall-clock arrival time column."""
CONTEXT_TOKENS = "ContextTokens"
"""Header of the prompt-length column."""
GENERATED_TOKENS = "GeneratedTokens"
"""Header of the output-length column."""
AZURE_COLUMNS = (TIMESTAMP, CONTEXT_TOKENS, GENERATED_TOKENS)
"""The columns an Azure trace must have."""

# ``YYYY-MM-DD HH:MM:SS[.f{1,9}]`` with an optional ``Z`` or ``+HH:MM`` offset (the 2024 release of
# the trace writes microseconds and ``+00:00``).
_TIMESTAMP_PATTERN = (
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[ T](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?(?:Z|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))?$"
)
_NS_PER_SECOND = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_SECOND
# Days since 1970 whose nanoseconds fit in int64 with room for the time of day (1680 to 2260).
_MIN_DAYS, _MAX_DAYS = -106_000, 106_000


def load_azure_csv(path: str | Path) -> pl.DataFrame:
    """Read an Azure LLM inference trace CSV (2023 or 2024 release).

    Returns a frame with int64 columns ``arrival_ns`` (nanoseconds since the first row's timestamp,
    so the first is 0), ``prompt_tokens`` (``ContextTokens``) and ``output_tokens``
    (``GeneratedTokens``), in file order. Raises ``TraceError`` naming the file, and for a bad row
    its 1-based line number (the header is line 1), when the file is missing or empty, a column is
    missing, a timestamp is malformed or earlier than the previous row's, or a token count is not an
    integer >= 1.
    """
    table = read_table(Path(path), required=AZURE_COLUMNS)
    if table.rows.height == 0:
        from fleetwise.errors import TraceError

        raise TraceError(f"{table.path}: has a header but no requests")
    timestamps, bad_timestamp = _parse_timestamps(table)
    prompt, bad_prompt = table.int_values(CONTEXT_TOKENS, minimum=1)
    output, bad_output = table.int_values(GENERATED_TOKENS, minimum=1)
    table.fail_first(bad_timestamp, bad_prompt, bad_output, _first_backwards(table, timestamps))
    row = first_past_span(timestamps)
    if row is not None:
        raw = table.rows[TIMESTAMP]
        table.fail(
            row,
            f"timestamp {clip(raw[row])} is more than {SPAN_YEARS:.0f} years after the first "
            f"row's {clip(raw[0])} (line {table.line_of(0)})",
        )
    return pl.DataFrame(
        {"arrival_ns": timestamps - timestamps[0], "prompt_tokens": prompt, "output_tokens": output}
    )


def _first_backwards(table: TextTable, timestamps: pl.Series) -> Problem | None:
    """The first row whose timestamp is earlier than the previous row's, if any."""
    row = first_backwards(timestamps)
    if row is None:
        return None
    raw = table.rows[TIMESTAMP]
    return row, (
        f"timestamp {clip(raw[row])} is earlier than the previous row's {clip(raw[row - 1])} "
        f"(line {table.line_of(row - 1)}); rows must be in time order"
    )


def _parse_timestamps(table: TextTable) -> tuple[pl.Series, Problem | None]:
    """The ``TIMESTAMP`` column as int64 nanoseconds since the Unix epoch (UTC when an offset is
    given, otherwise the file's unstated local time; null where malformed), and the first malformed
    one, if any."""
    raw = table.rows[TIMESTAMP]
    hour, minute, second = (pl.col(name).cast(pl.Int64) for name in ("hour", "minute", "second"))
    off_hour, off_minute = (pl.col(name).cast(pl.Int64) for name in ("off_hour", "off_minute"))
    sign = pl.when(pl.col("sign") == "-").then(-1).otherwise(1)
    valid = (
        pl.col("days").is_between(_MIN_DAYS, _MAX_DAYS)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
        & (off_hour.is_null() | ((off_hour <= 23) & (off_minute <= 59)))
    ).fill_null(False)
    offset_seconds = (sign * (off_hour * 3600 + off_minute * 60)).fill_null(0)
    ns = (
        pl.col("days") * _NS_PER_DAY
        + (hour * 3600 + minute * 60 + second - offset_seconds) * _NS_PER_SECOND
        + pl.col("fraction").str.pad_end(9, "0").cast(pl.Int64).fill_null(0)
    )
    parsed = (
        raw.to_frame("t")
        .select(pl.col("t").str.extract_groups(_TIMESTAMP_PATTERN))
        .unnest("t")
        .with_columns(days=pl.col("date").str.to_date("%Y-%m-%d", strict=False).cast(pl.Int64))
        .select(ns=pl.when(valid).then(ns))
        .to_series()
    )
    row = first_true(parsed.is_null())
    if row is None:
        return parsed, None
    return parsed, (
        row,
        f"bad TIMESTAMP {clip(raw[row])}; expected 'YYYY-MM-DD HH:MM:SS.fffffff' (years 1680 to "
        "2260), optionally with a "
        "'+HH:MM' offset (e.g. '2023-11-16 18:17:03.9799600' or "
        "'2024-05-10 00:00:00.010000+00:00')",
    )
