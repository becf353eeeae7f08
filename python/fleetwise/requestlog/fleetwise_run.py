"""Reader for fleetwise's own ``requests.parquet`` (a run's output, ``fleetwise.result``), as a
``RequestLog``.

Columns used: ``arrival_ns``, ``first_token_ns``, ``completion_ns`` (integer nanoseconds),
``prompt_tokens``, ``output_tokens`` and ``status``. Only ``finished`` requests are kept; the others
are counted under their status (``rejected``, ``unfinished``). The file has no per-token times, so
the log has no ITL. Replaying it on the scenario that produced it gives the same latencies (the
round trip ``fleetwise validate`` is tested on).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fleetwise.requestlog.log import RequestLog, finish_log
from fleetwise.requestlog.table import _read_parquet

REQUIRED_COLUMNS = ("arrival_ns", "first_token_ns", "completion_ns", "prompt_tokens", "output_tokens", "status")
"""The columns of a fleetwise ``requests.parquet`` this reader needs."""
FORMAT = "fleetwise"
"""This reader's name."""


def is_fleetwise_requests(columns: list[str]) -> bool:
    """Whether a Parquet file with these columns is a fleetwise ``requests.parquet``."""
    return all(c in columns for c in REQUIRED_COLUMNS)


def read_fleetwise_log(path: str | Path) -> RequestLog:
    """Read a fleetwise ``requests.parquet`` into a ``RequestLog`` (finished requests only).

    Raises ``TraceError`` naming the file when it is unreadable or lacks a column (listing those
    present), and naming the 0-based row of a finished request with a null time.
    """
    from fleetwise.errors import TraceError

    path = Path(path)
    frame = _read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TraceError(f"{path}: missing column(s) {', '.join(missing)} of a fleetwise requests.parquet "
                         f"(expected {', '.join(REQUIRED_COLUMNS)}); columns present: {', '.join(frame.columns[:40])}")
    for name in REQUIRED_COLUMNS[:5]:
        if not frame[name].dtype.is_integer():
            raise TraceError(f"{path}: column {name} must be integers, got {frame[name].dtype}")
    status = frame["status"].cast(pl.String)
    counts = status.value_counts()
    dropped = {str(s): int(n) for s, n in zip(counts["status"].to_list(), counts["count"].to_list()) if s != "finished"}
    done = frame.filter(status == "finished")
    raw = done.select(
        "source_row",
        (pl.col("arrival_ns").cast(pl.Float64) * 1e-9).alias("arrival_s"),
        (pl.col("first_token_ns").cast(pl.Float64) * 1e-9).alias("first_token_s"),
        (pl.col("completion_ns").cast(pl.Float64) * 1e-9).alias("last_token_s"),
        pl.col("prompt_tokens").cast(pl.Int64),
        pl.col("output_tokens").cast(pl.Int64),
    )
    return finish_log(raw, path, FORMAT, "row", frame.height, dict(sorted(dropped.items())))
