"""Prompt and output length distributions, and the CSV length-file reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.workload._files import read_table, resolve_path
from fleetwise.workload.config import (
    ConstantLengths,
    FileLengths,
    LengthDistribution,
    LognormalLengths,
    UniformLengths,
)

# Upper clip for unbounded log-normal samples: far beyond any context length, and exactly
# representable as a float, so the conversion to int64 cannot overflow.
_UNBOUNDED = float(2**53)


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


def sample_lengths(
    cfg: LengthDistribution, n: int, rng: np.random.Generator, base_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (prompt, output) length pairs from ``cfg``.

    Returns two int64 arrays of length ``n``, every value >= 1. ``base_dir`` is the directory a
    relative ``FileLengths.path`` is resolved against before the current directory.
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
        return _sample_file(cfg, n, rng, base_dir)
    raise TypeError(f"unknown length distribution {type(cfg).__name__}")


def _lognormal(
    rng: np.random.Generator, n: int, median: float, sigma: float, maximum: int | None
) -> np.ndarray:
    samples = rng.lognormal(mean=np.log(median), sigma=sigma, size=n)
    upper = _UNBOUNDED if maximum is None else float(maximum)
    return np.clip(np.rint(samples), 1.0, upper).astype(np.int64)


def _sample_file(
    cfg: FileLengths, n: int, rng: np.random.Generator, base_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    path = resolve_path(cfg.path, base_dir)
    frame = load_length_file(path, cfg.prompt_column, cfg.output_column)
    if cfg.max_total_tokens is not None:
        frame = frame.filter(
            pl.col("prompt_tokens") + pl.col("output_tokens") <= cfg.max_total_tokens
        )
        if frame.height == 0:
            from fleetwise.errors import ConfigError

            raise ConfigError(
                f"{path}: no row has {cfg.prompt_column} + {cfg.output_column} <= "
                f"max_total_tokens ({cfg.max_total_tokens})"
            )
    rows = rng.integers(0, frame.height, size=n)
    prompt = frame["prompt_tokens"].to_numpy()[rows].astype(np.int64, copy=False)
    output = frame["output_tokens"].to_numpy()[rows].astype(np.int64, copy=False)
    return prompt, output
