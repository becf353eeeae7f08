"""Prompt and output length distributions, and the length-file readers by format name."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.workload._files import read_table, resolve_path
from fleetwise.workload.config import (
    AnyFormat,
    ConstantLengths,
    FileLengths,
    FitLengths,
    LengthDistribution,
    LengthFormat,
    LognormalLengths,
    UniformLengths,
)
from fleetwise.workload.burstgpt import read_burstgpt
from fleetwise.workload.fit import fit_lognormal
from fleetwise.workload.loaded import LoadedTable
from fleetwise.workload.sharegpt import load_sharegpt
from fleetwise.workload.traces import TRACE_LOADERS
from fleetwise.workload.vllm_bench import read_vllm_bench

# Upper clip for unbounded log-normal samples: MAX_TOKENS, the most any length field allows, far
# beyond any context (such a request is rejected as too long, like any other that fits no model).
# It was 2**53, which the core refused with "prompt_tokens[i] = 9007199254740992 is out of range"
# (its token counts are 32-bit) and which let a session's growing prompt pass int64.
_UNBOUNDED = float(MAX_TOKENS)


def load_length_file(
    path: str | Path,
    prompt_column: str = "num_prefill_tokens",
    output_column: str = "num_decode_tokens",
) -> pl.DataFrame:
    """Read a CSV length file into a frame of int64 ``prompt_tokens`` and ``output_tokens``.

    Other columns of the file are ignored. Raises ``TraceError`` for a missing or empty file, a
    missing column (naming the columns present), or a value that is not an integer >= 1 (naming the
    1-based line number, the header being line 1, and the column).
    """
    table = read_table(Path(path), required=(prompt_column, output_column))
    if table.rows.height == 0:
        from fleetwise.errors import TraceError

        raise TraceError(f"{table.path}: has a header but no rows")
    return pl.DataFrame(
        {
            "prompt_tokens": table.int_column(prompt_column, minimum=1),
            "output_tokens": table.int_column(output_column, minimum=1),
        }
    )


LENGTH_FORMATS: tuple[str, ...] = get_args(LengthFormat)
"""The length-only formats: ``csv``, ``sharegpt`` and ``vllm-bench``."""


def load_lengths(
    path: str | Path,
    format: str = "csv",
    *,
    prompt_column: str = "num_prefill_tokens",
    output_column: str = "num_decode_tokens",
    chars_per_token: float = 4.0,
) -> pl.DataFrame:
    """The int64 ``prompt_tokens`` and ``output_tokens`` of every request in a file of any format
    (``AnyFormat``): a length format (``csv`` uses ``prompt_column`` / ``output_column``,
    ``sharegpt`` uses ``chars_per_token``) or a trace format (its arrival times and other columns
    are dropped). Raises ``ValueError`` for an unknown format."""
    return read_lengths(path, format, prompt_column=prompt_column, output_column=output_column, chars_per_token=chars_per_token).frame


def read_lengths(
    path: str | Path,
    format: str = "csv",
    *,
    prompt_column: str = "num_prefill_tokens",
    output_column: str = "num_decode_tokens",
    chars_per_token: float = 4.0,
) -> LoadedTable:
    """``load_lengths`` with the rows the reader left out on purpose: ``frame`` is
    ``load_lengths``'s, ``rows_read`` the requests in the file and ``dropped`` the readers' counts
    (``vllm-bench`` and ``burstgpt``: ``failed``, ...; empty for the formats that drop nothing)."""
    path = Path(path)
    if format == "vllm-bench":
        return read_vllm_bench(path)
    if format == "burstgpt":
        loaded = read_burstgpt(path)
        return LoadedTable(frame=loaded.frame.select("prompt_tokens", "output_tokens"), rows_read=loaded.rows_read, dropped=loaded.dropped)
    if format == "csv":
        frame = load_length_file(path, prompt_column, output_column)
    elif format == "sharegpt":
        frame = load_sharegpt(path, chars_per_token)
    elif format in TRACE_LOADERS:
        frame = TRACE_LOADERS[format](path).select("prompt_tokens", "output_tokens")
    else:
        known = ", ".join(get_args(AnyFormat))
        raise ValueError(f"unknown length file format {format!r}; known: {known}")
    return LoadedTable(frame=frame, rows_read=frame.height)


def sample_lengths(
    cfg: LengthDistribution,
    n: int,
    rng: np.random.Generator,
    base_dir: Path | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (prompt, output) length pairs from ``cfg``.

    Returns two int64 arrays of length ``n``, every value >= 1. ``base_dir`` is the directory a
    relative ``FileLengths.path`` is resolved against before the current directory. For a length
    file (``file``, ``fit``), ``counts`` (when given) receives ``rows_read``, the rows left out on
    purpose by reason (the reader's ``failed``, ...; ``max_total_tokens``) and ``kept``, the rows
    sampled from or fitted to.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if isinstance(cfg, ConstantLengths):
        return np.full(n, cfg.prompt, dtype=np.int64), np.full(n, cfg.output, dtype=np.int64)
    if isinstance(cfg, UniformLengths):
        prompt = rng.integers(cfg.prompt_min, cfg.prompt_max, size=n, endpoint=True, dtype=np.int64)
        output = rng.integers(cfg.output_min, cfg.output_max, size=n, endpoint=True, dtype=np.int64)
        return prompt, output
    if isinstance(cfg, LognormalLengths):
        prompt = _lognormal(rng, n, cfg.prompt_median, cfg.prompt_sigma, cfg.prompt_max)
        output = _lognormal(rng, n, cfg.output_median, cfg.output_sigma, cfg.output_max)
        return prompt, output
    if isinstance(cfg, FileLengths):
        return _sample_file(cfg, n, rng, base_dir, counts)
    if isinstance(cfg, FitLengths):
        return _sample_fit(cfg, n, rng, base_dir, counts)
    raise TypeError(f"unknown length distribution {type(cfg).__name__}")


def _lognormal(
    rng: np.random.Generator, n: int, median: float, sigma: float, maximum: int | None
) -> np.ndarray:
    samples = rng.lognormal(mean=np.log(median), sigma=sigma, size=n)
    upper = _UNBOUNDED if maximum is None else float(maximum)
    return np.clip(np.rint(samples), 1.0, upper).astype(np.int64)


def _load_config_file(
    cfg: FileLengths | FitLengths, base_dir: Path | None, counts: dict[str, int] | None = None
) -> tuple[Path, pl.DataFrame]:
    """The resolved path and the length table of the file ``cfg`` names; ``counts`` (when given)
    receives ``rows_read`` and the rows the reader left out on purpose."""
    path = resolve_path(cfg.path, base_dir, "workload.lengths.path")
    loaded = read_lengths(
        path,
        cfg.format,
        prompt_column=cfg.prompt_column,
        output_column=cfg.output_column,
        chars_per_token=cfg.chars_per_token,
    )
    if counts is not None:
        counts["rows_read"] = loaded.rows_read
        counts.update(loaded.dropped)
    return path, loaded.frame


def _sample_file(
    cfg: FileLengths, n: int, rng: np.random.Generator, base_dir: Path | None, counts: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    tally: dict[str, int] = {}
    path, frame = _load_config_file(cfg, base_dir, tally)
    if cfg.max_total_tokens is not None:
        before = frame.height
        total = pl.col("prompt_tokens") + pl.col("output_tokens")
        shortest = frame.select(total.min()).item()
        frame = frame.filter(total <= cfg.max_total_tokens)
        tally["max_total_tokens"] = before - frame.height
        if frame.height == 0:
            from fleetwise.errors import ConfigError

            raise ConfigError(
                f"workload.lengths.max_total_tokens: no request of {path} has prompt + output "
                f"tokens <= {cfg.max_total_tokens} (the shortest has {shortest}); allowed: "
                f"{shortest} or more"
            )
    tally["kept"] = frame.height
    if counts is not None:
        counts.update(tally)
    rows = rng.integers(0, frame.height, size=n)
    prompt = frame["prompt_tokens"].to_numpy()[rows].astype(np.int64, copy=False)
    output = frame["output_tokens"].to_numpy()[rows].astype(np.int64, copy=False)
    return prompt, output


def fit_file_lengths(cfg: FitLengths, base_dir: Path | None = None, counts: dict[str, int] | None = None) -> LognormalLengths:
    """The log-normal length distribution ``cfg`` describes: ``fit_lognormal`` of the prompt and
    of the output lengths of its file, with ``cfg``'s clipping limits. ``counts`` (when given)
    receives ``rows_read``, the rows the reader left out on purpose and ``kept``, the rows fitted to."""
    _, frame = _load_config_file(cfg, base_dir, counts)
    if counts is not None:
        counts["kept"] = frame.height
    prompt_median, prompt_sigma = fit_lognormal(frame["prompt_tokens"].to_numpy())
    output_median, output_sigma = fit_lognormal(frame["output_tokens"].to_numpy())
    return LognormalLengths(
        prompt_median=prompt_median,
        prompt_sigma=prompt_sigma,
        output_median=output_median,
        output_sigma=output_sigma,
        prompt_max=cfg.prompt_max,
        output_max=cfg.output_max,
    )


def _sample_fit(
    cfg: FitLengths, n: int, rng: np.random.Generator, base_dir: Path | None, counts: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    fitted = fit_file_lengths(cfg, base_dir, counts)
    prompt = _lognormal(rng, n, fitted.prompt_median, fitted.prompt_sigma, fitted.prompt_max)
    output = _lognormal(rng, n, fitted.output_median, fitted.output_sigma, fitted.output_max)
    return prompt, output
