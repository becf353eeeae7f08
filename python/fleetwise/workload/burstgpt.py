"""Reader for the BurstGPT trace CSV (Azure OpenAI GPT-3.5/GPT-4 usage logs, HPMLL/BurstGPT).

A file starts with the header ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log
Type``; each following line is one request, for example ``5,ChatGPT,472,18,490,Conversation log``.
``Timestamp`` is seconds since the trace start (possibly fractional). Rows whose ``Response tokens``
is 0 are requests that failed (the BurstGPT README says so); they are dropped and counted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TIME_NS
from fleetwise.workload._files import SPAN_YEARS, clip, first_true, read_table
from fleetwise.workload.loaded import LoadedTable

TIMESTAMP = "Timestamp"
"""Header of the arrival-time column (seconds from the trace start)."""
MODEL = "Model"
"""Header of the model-name column (``ChatGPT`` or ``GPT-4``)."""
REQUEST_TOKENS = "Request tokens"
"""Header of the prompt-length column."""
RESPONSE_TOKENS = "Response tokens"
"""Header of the output-length column (0 for a failed request)."""
LOG_TYPE = "Log Type"
"""Header of the log-type column (``Conversation log`` or ``API log``)."""
BURSTGPT_COLUMNS = (TIMESTAMP, MODEL, REQUEST_TOKENS, RESPONSE_TOKENS)
"""The columns a BurstGPT file must have (``Total tokens`` and ``Log Type`` are optional)."""


def read_burstgpt(
    path: str | Path, model: str | None = None, log_type: str | None = None
) -> LoadedTable:
    """Read a BurstGPT CSV, keeping the successful requests (of ``model`` and ``log_type`` when
    given), and count the rows dropped.

    Every row is validated first; ``TraceError`` names the file and 1-based line (the header is line
    1) of the first bad one: a ``Timestamp`` that is not a finite number, a token count that is not
    an integer >= 0, a row with the wrong number of fields; also for an empty file or a missing
    column. Then rows are dropped, counted in ``dropped`` under:

    - ``failed``: ``Response tokens`` is 0 (a failed request);
    - ``empty_prompt``: ``Request tokens`` is 0 in an otherwise successful row (the simulator needs
      at least one prompt token);
    - ``other_model`` / ``other_log_type``: excluded by the ``model`` / ``log_type`` filter.

    The kept rows are put in time order (a stable sort on ``Timestamp``; the released files are
    already in order) and ``frame`` has int64 ``arrival_ns`` (relative to the first kept row, so the
    first is 0), ``prompt_tokens`` and ``output_tokens``. Raises ``ConfigError`` when a filter
    matches no row (naming the values present) and ``TraceError`` when no successful request is
    left.
    """
    from fleetwise.errors import ConfigError, TraceError

    required = BURSTGPT_COLUMNS + ((LOG_TYPE,) if log_type is not None else ())
    table = read_table(Path(path), required=required)
    if table.rows.height == 0:
        raise TraceError(f"{table.path}: has a header but no requests")
    raw_time = table.rows[TIMESTAMP]
    seconds = raw_time.cast(pl.Float64, strict=False)
    bad_time = first_true(seconds.is_null() | ~seconds.is_finite() | (seconds < 0))
    prompt, bad_prompt = table.int_values(REQUEST_TOKENS, minimum=0)
    output, bad_output = table.int_values(RESPONSE_TOKENS, minimum=0)
    time_problem = None
    if bad_time is not None:
        what = "is not a number of seconds" if seconds[bad_time] is None or not math.isfinite(seconds[bad_time]) else "must be >= 0 (seconds since the trace start), got"
        time_problem = (bad_time, f"{TIMESTAMP} {what}: {clip(raw_time[bad_time])}")
    table.fail_first(time_problem, bad_prompt, bad_output)

    columns = {
        "line": table.lines,
        "seconds": seconds,
        "model": table.rows[MODEL],
        "prompt_tokens": prompt,
        "output_tokens": output,
    }
    if LOG_TYPE in table.header:
        columns["log_type"] = table.rows[LOG_TYPE]
    frame = pl.DataFrame(columns)
    dropped: dict[str, int] = {}
    for name, column, wanted in (("model", MODEL, model), ("log_type", LOG_TYPE, log_type)):
        if wanted is None:
            continue
        keep = frame[name] == wanted
        if not keep.any():
            present = ", ".join(repr(v) for v in frame[name].unique().sort().to_list()[:20])
            raise ConfigError(
                f"{table.path}: no row has {column} {wanted!r}; values present: {present}"
            )
        dropped[f"other_{name}"] = int((~keep).sum())
        frame = frame.filter(keep)
    failed = frame["output_tokens"] == 0
    dropped["failed"] = int(failed.sum())
    frame = frame.filter(~failed)
    empty = frame["prompt_tokens"] == 0
    dropped["empty_prompt"] = int(empty.sum())
    frame = frame.filter(~empty)
    if frame.height == 0:
        raise TraceError(f"{table.path}: no successful request (every row was dropped: {dropped})")

    frame = frame.sort("seconds", maintain_order=True)
    seconds_kept = frame["seconds"].to_numpy()
    relative_ns = (seconds_kept - seconds_kept[0]) * 1e9
    beyond = np.flatnonzero(relative_ns > MAX_TIME_NS)
    if beyond.size:
        row = int(beyond[0])
        raise TraceError(
            f"{table.path}: line {frame['line'][row]}: {TIMESTAMP} {seconds_kept[row]:g} s is more "
            f"than {SPAN_YEARS:.0f} years after the earliest kept row's {seconds_kept[0]:g} s "
            f"(line {frame['line'][0]}); timestamps are seconds since the trace start"
        )
    arrival_ns = np.rint(relative_ns).astype(np.int64)
    result = pl.DataFrame(
        {
            "arrival_ns": arrival_ns,
            "prompt_tokens": frame["prompt_tokens"],
            "output_tokens": frame["output_tokens"],
        }
    )
    return LoadedTable(frame=result, rows_read=table.rows.height, dropped=dropped)


def load_burstgpt(
    path: str | Path, model: str | None = None, log_type: str | None = None
) -> pl.DataFrame:
    """Read a BurstGPT CSV: ``read_burstgpt(path, model, log_type).frame`` (the successful
    requests, failed ones dropped; use ``read_burstgpt`` for the counts)."""
    return read_burstgpt(path, model, log_type).frame
