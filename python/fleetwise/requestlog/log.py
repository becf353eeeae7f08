"""``RequestLog``: a deployment's measured requests as one typed polars frame, whatever file they
came from, and the checks every reader shares.

The frame (``RequestLog.frame``) has one row per successful request, in arrival order:

========================  =================  ==================================================
column                    type               meaning
========================  =================  ==================================================
``source_row``            Int64              where the request is in its file (``RequestLog.row_label``)
``arrival_s``             Float64            arrival, seconds after the log's first arrival (first row 0)
``first_token_s``         Float64            first output token, same clock
``last_token_s``          Float64            last output token, same clock
``prompt_tokens``         Int64              prompt length, >= 1
``output_tokens``         Int64              output length, >= 1
``itl_s``                 List(Float64)      gaps between consecutive output tokens (only when the log has them)
========================  =================  ==================================================

The latencies derived from it follow vLLM's ``bench serve``: TTFT = first token - arrival, E2E =
last token - arrival, TPOT = (E2E - TTFT) / (output tokens - 1) for requests with more than one
output token, ITL = every gap between two consecutive tokens, all requests pooled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TIME_NS, MAX_TOKENS
from fleetwise.workload import Workload
from fleetwise.workload._files import first_true

TIME_COLUMNS = ("arrival_s", "first_token_s", "last_token_s")
"""The three time columns of a log frame, seconds."""
TOKEN_COLUMNS = ("prompt_tokens", "output_tokens")
"""The two token-count columns of a log frame."""
ITL_COLUMN = "itl_s"
"""The optional per-token gap column of a log frame."""

_TOLERANCE_S = 1e-9
"""How far a time may run backwards (float rounding) before a row is refused."""
_ITL_SLACK, _ITL_SLACK_S = 0.01, 1e-3
"""How much a row's inter-token gaps may add up to beyond its first-to-last-token time (1% and
1 ms: logs round their times and gaps separately)."""


@dataclass(frozen=True)
class RequestLog:
    """A deployment's per-request log, read by one of ``fleetwise.requestlog``'s readers."""

    frame: pl.DataFrame
    """The successful requests in arrival order (columns in the module docstring)."""
    path: Path
    """The file it was read from."""
    format: str
    """The reader that read it: ``vllm-bench``, ``table`` or ``fleetwise``."""
    row_label: str
    """What ``source_row`` counts, for messages: ``line`` (1-based file line), ``row`` (0-based
    Parquet row) or ``request`` (0-based index into a vLLM result's lists)."""
    rows_read: int
    """Requests in the file, kept or not."""
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Requests left out on purpose, by reason (``failed``, ``rejected``, ``unfinished``,
    ``not_selected``)."""
    notes: tuple[str, ...] = ()
    """How the reader obtained what the file does not record directly (e.g. arrivals rebuilt
    from send times)."""

    def __len__(self) -> int:
        """The number of requests kept."""
        return self.frame.height

    @property
    def has_itl(self) -> bool:
        """Whether the log records the gaps between tokens."""
        return ITL_COLUMN in self.frame.columns

    def to_workload(self) -> Workload:
        """The requests to replay: arrivals in integer nanoseconds (first at 0), prompt and output
        lengths, in arrival order."""
        arrival = np.rint(self.frame["arrival_s"].to_numpy() * 1e9).astype(np.int64)
        return Workload(
            arrival_ns=arrival,
            prompt_tokens=self.frame["prompt_tokens"].to_numpy(),
            output_tokens=self.frame["output_tokens"].to_numpy(),
        )

    def latencies(self) -> dict[str, np.ndarray]:
        """Measured ``ttft``, ``tpot`` (requests with more than one output token), ``e2e`` and,
        when the log has them, ``itl`` (every gap, pooled), seconds."""
        f = self.frame
        arrival = f["arrival_s"].to_numpy()
        ttft = f["first_token_s"].to_numpy() - arrival
        e2e = f["last_token_s"].to_numpy() - arrival
        out = f["output_tokens"].to_numpy()
        many = out > 1
        result = {"ttft": ttft, "tpot": (e2e[many] - ttft[many]) / (out[many] - 1), "e2e": e2e}
        if self.has_itl:
            result["itl"] = f[ITL_COLUMN].explode().drop_nulls().to_numpy().astype(np.float64)
        return result


def finish_log(
    raw: pl.DataFrame,
    path: Path,
    format: str,
    row_label: str,
    rows_read: int,
    dropped: Mapping[str, int] | None = None,
    notes: tuple[str, ...] = (),
) -> RequestLog:
    """Check a reader's rows and turn them into a ``RequestLog``.

    ``raw`` has ``source_row``, the three time columns (Float64 seconds on any common clock), the
    two token columns (Int64) and optionally ``itl_s`` (List(Float64)). Raises ``TraceError``
    ``"<path>: <row_label> <N>: <problem>"`` for the first row (in file order) with a null or
    non-finite time, a first token before the arrival, a last token before the first or further from
    the arrival than the simulator's clock reaches, a token
    count outside 1 .. MAX_TOKENS, or a negative or non-finite gap; and naming the file when no
    row is left or the arrivals span more than the simulator's clock.
    """
    from fleetwise.errors import TraceError

    def fail(row: int, message: str) -> NoReturn:
        raise TraceError(f"{path}: {row_label} {int(raw['source_row'][row])}: {message}")

    if raw.height == 0:
        reasons = ", ".join(f"{n} {k}" for k, n in (dropped or {}).items() if n)
        raise TraceError(f"{path}: no successful request to replay" + (f" ({reasons})" if reasons else ""))
    problems: list[tuple[int, str]] = []
    for name in TIME_COLUMNS:
        col = raw[name]
        row = first_true(col.is_null() | ~col.is_finite())
        if row is not None:
            problems.append((row, f"{name} must be a finite number of seconds, got {col[row]}"))
    if not problems:
        early = raw["first_token_s"] < raw["arrival_s"] - _TOLERANCE_S
        row = first_true(early)
        if row is not None:
            problems.append((row, f"first token ({raw['first_token_s'][row]:.9g} s) is before the arrival ({raw['arrival_s'][row]:.9g} s)"))
        late = raw["last_token_s"] < raw["first_token_s"] - _TOLERANCE_S
        row = first_true(late)
        if row is not None:
            problems.append((row, f"last token ({raw['last_token_s'][row]:.9g} s) is before the first token ({raw['first_token_s'][row]:.9g} s)"))
        longest = MAX_TIME_NS / 1e9
        row = first_true(raw["last_token_s"] - raw["arrival_s"] > longest)
        if row is not None:
            problems.append((row, f"last token {raw['last_token_s'][row] - raw['arrival_s'][row]:.3g} s after the arrival, more than the simulator's clock allows ({longest:.3g} s)"))
    for name in TOKEN_COLUMNS:
        col = raw[name]
        row = first_true(col.is_null() | (col < 1) | (col > MAX_TOKENS))
        if row is not None:
            problems.append((row, f"{name} must be an integer from 1 to {MAX_TOKENS:,}, got {col[row]}"))
    if ITL_COLUMN in raw.columns:
        gaps = raw[ITL_COLUMN]
        bad = gaps.list.eval(pl.element().is_null() | ~pl.element().is_finite() | (pl.element() < 0)).list.any()
        row = first_true(bad)
        if row is not None:
            problems.append((row, f"{ITL_COLUMN} must be finite gaps >= 0 seconds, got {gaps[row].to_list()[:10]}"))
        elif not problems:  # the times and counts these are checked against are valid
            count = gaps.list.len().fill_null(0)
            row = first_true(count > raw["output_tokens"] - 1)
            if row is not None:
                problems.append((row, f"{ITL_COLUMN} holds {count[row]} gaps; {raw['output_tokens'][row]} output tokens have at most {raw['output_tokens'][row] - 1}"))
            span = raw["last_token_s"] - raw["first_token_s"]
            total = gaps.list.sum().fill_null(0.0)
            row = first_true(total > span * (1 + _ITL_SLACK) + _ITL_SLACK_S)
            if row is not None:
                problems.append((row, f"{ITL_COLUMN} gaps add up to {total[row]:.6g} s, more than the {span[row]:.6g} s from the first token to the last"))
    if problems:
        fail(*min(problems))
    frame = (
        raw.with_columns(pl.col(c) - raw["arrival_s"].min() for c in TIME_COLUMNS)
        .sort("arrival_s", maintain_order=True)
        .select("source_row", *TIME_COLUMNS, *TOKEN_COLUMNS, *([ITL_COLUMN] if ITL_COLUMN in raw.columns else []))
    )
    span = float(frame["arrival_s"].max())
    if span * 1e9 > MAX_TIME_NS:
        raise TraceError(f"{path}: the arrivals span {span:.3g} s, more than the simulator's clock allows ({MAX_TIME_NS / 1e9:.3g} s)")
    return RequestLog(frame=frame, path=path, format=format, row_label=row_label, rows_read=rows_read,
                      dropped=dict(dropped or {}), notes=notes)
