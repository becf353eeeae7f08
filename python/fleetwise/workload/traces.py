"""The trace formats by name, and the selection of a trace's requests (time window, length
filters, first N, rate scaling) that ``TraceArrivals`` describes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np
import polars as pl

from fleetwise.workload.azure import load_azure_csv
from fleetwise.config.limits import MAX_TIME_NS
from fleetwise.workload.burstgpt import load_burstgpt, read_burstgpt
from fleetwise.workload.config import TraceArrivals, TraceFormat
from fleetwise.workload.mooncake import load_mooncake
from fleetwise.workload.native import load_parquet

TRACE_LOADERS: dict[str, Callable[[Path], pl.DataFrame]] = {
    "azure": load_azure_csv,
    "mooncake": load_mooncake,
    "burstgpt": load_burstgpt,
    "parquet": load_parquet,
}
"""The reader of each ``TraceArrivals.format``: ``path -> frame`` with int64 ``arrival_ns``
(first row 0), ``prompt_tokens`` and ``output_tokens``, plus ``hash_ids``, ``session_id`` and
``acceptance_class`` when the format has them."""

assert set(TRACE_LOADERS) == set(get_args(TraceFormat)), "every trace format needs a loader"


def load_trace(path: str | Path, format: str, **options: object) -> pl.DataFrame:
    """Read the trace at ``path`` with the reader registered for ``format``; ``options`` are
    passed to it (e.g. ``model=`` for ``burstgpt``). Raises ``ValueError`` for an unknown
    format."""
    try:
        loader = TRACE_LOADERS[format]
    except KeyError:
        known = ", ".join(TRACE_LOADERS)
        raise ValueError(f"unknown trace format {format!r}; known: {known}") from None
    return loader(Path(path), **options)


def select_requests(
    frame: pl.DataFrame,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    min_prompt_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    requests: int | None = None,
    rate_scale: float = 1.0,
    source: str = "the trace",
    counts: dict[str, int] | None = None,
) -> pl.DataFrame:
    """Select requests of a loaded trace, in this order:

    1. the time window: keep rows with ``start_s <= arrival < start_s + duration_s`` (seconds, in
       the trace's own time; ``duration_s=None``: to the end);
    2. the length filters: drop rows with ``prompt_tokens < min_prompt_tokens``, ``prompt_tokens >
       max_prompt_tokens`` or ``output_tokens > max_output_tokens`` (after the window, so the
       filters never move it);
    3. re-base: subtract the first remaining arrival, so the first request arrives at 0;
    4. keep the first ``requests`` rows;
    5. divide every arrival by ``rate_scale`` (rounded to the nearest nanosecond).

    Other columns (``hash_ids``, ``session_id``, ``acceptance_class``) follow their rows. Raises ``ConfigError`` (naming
    ``source``) when nothing is left or fewer than ``requests`` rows are, or when ``rate_scale``
    stretches the arrivals past ``MAX_TIME_NS``. When ``counts`` is given, the rows each step
    leaves out are added to it: ``outside_window``, ``min_prompt_tokens``, ``max_prompt_tokens``,
    ``max_output_tokens`` (a row failing several length filters counts under the first),
    ``beyond_requests``, and ``replayed``.
    """
    tally: dict[str, int] = {}
    from fleetwise.errors import ConfigError

    arrival = pl.col("arrival_ns")
    start_ns = round(start_s * 1e9)
    window = arrival >= start_ns
    if duration_s is not None:
        window = window & (arrival < start_ns + round(duration_s * 1e9))
    selected = frame.filter(window)
    tally["outside_window"] = frame.height - selected.height
    if selected.height == 0:
        end = "the end" if duration_s is None else f"{start_s + duration_s:g} s"
        raise ConfigError(
            f"{source}: no request arrives between {start_s:g} s and {end} "
            f"(the trace spans {frame['arrival_ns'].max() / 1e9:g} s)"
        )
    conditions = []
    if min_prompt_tokens is not None:
        conditions.append(("min_prompt_tokens", pl.col("prompt_tokens") >= min_prompt_tokens))
    if max_prompt_tokens is not None:
        conditions.append(("max_prompt_tokens", pl.col("prompt_tokens") <= max_prompt_tokens))
    if max_output_tokens is not None:
        conditions.append(("max_output_tokens", pl.col("output_tokens") <= max_output_tokens))
    if conditions:
        windowed = selected.height
        for name, condition in conditions:
            before = selected.height
            selected = selected.filter(condition)
            tally[name] = before - selected.height
        if selected.height == 0:
            raise ConfigError(
                f"{source}: none of the {windowed} requests in the time window passes the "
                "length filters (min_prompt_tokens, max_prompt_tokens, max_output_tokens)"
            )
    selected = selected.with_columns(arrival - selected["arrival_ns"][0])
    if requests is not None:
        if requests > selected.height:
            after = ""
            if selected.height < frame.height:
                after = " after the time window and length filters"
            raise ConfigError(
                f"requests is {requests} but {source} has only {selected.height} rows{after}"
            )
        tally["beyond_requests"] = selected.height - requests
        selected = selected.head(requests)
    if rate_scale != 1.0:
        scaled = selected["arrival_ns"].to_numpy() / rate_scale
        if scaled[-1] > MAX_TIME_NS:
            raise ConfigError(
                f"{source}: rate_scale {rate_scale:g} stretches the replayed arrivals to "
                f"{scaled[-1] / 1e9:.3g} s, past the {MAX_TIME_NS / 1e9:.3g} s the simulator's "
                "clock allows; raise rate_scale or shorten the window (duration_s, requests)"
            )
        selected = selected.with_columns(pl.Series("arrival_ns", np.rint(scaled).astype(np.int64)))
    tally["replayed"] = selected.height
    if counts is not None:
        for name, value in tally.items():
            counts[name] = counts.get(name, 0) + value
    return selected


def replay_frame(
    arrivals: TraceArrivals,
    path: Path,
    requests: int | None,
    counts: dict[str, int] | None = None,
) -> pl.DataFrame:
    """Load the trace ``arrivals`` names (already resolved to ``path``) and select the requests it
    and the workload's ``requests`` ask for (see ``select_requests``). When ``counts`` is given it
    receives ``rows_read``, the rows the reader left out on purpose (BurstGPT's ``failed``,
    ``empty_prompt``, ``other_model``, ``other_log_type``) and ``select_requests``'s counts."""
    tally: dict[str, int] = {}
    if arrivals.format == "burstgpt":
        loaded = read_burstgpt(path, model=arrivals.model, log_type=arrivals.log_type)
        frame = loaded.frame
        tally["rows_read"] = loaded.rows_read
        tally.update(loaded.dropped)
    else:
        frame = load_trace(path, arrivals.format)
        tally["rows_read"] = frame.height
    if counts is not None:
        counts.update(tally)
    return select_requests(
        frame,
        start_s=arrivals.start_s,
        duration_s=arrivals.duration_s,
        min_prompt_tokens=arrivals.min_prompt_tokens,
        max_prompt_tokens=arrivals.max_prompt_tokens,
        max_output_tokens=arrivals.max_output_tokens,
        requests=requests,
        rate_scale=arrivals.rate_scale,
        source=f"the trace {path}",
        counts=counts,
    )
