"""Turning a ``WorkloadConfig`` into concrete request arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.workload._files import resolve_path
from fleetwise.workload.arrivals import poisson_arrivals
from fleetwise.workload.azure import load_azure_csv
from fleetwise.workload.config import PoissonArrivals, TraceArrivals, WorkloadConfig
from fleetwise.workload.lengths import sample_lengths

# Sub-stream keys of np.random.default_rng([seed, key]): each purpose draws from its own stream, so
# changing the length distribution never moves the arrival times.
_ARRIVAL_STREAM = 1
_LENGTH_STREAM = 2


@dataclass(frozen=True, eq=False)
class Workload:
    """The requests of one simulation: equal-length, read-only int64 arrays, one entry per request,
    in arrival order (request ``i`` is entry ``i``)."""

    arrival_ns: np.ndarray
    """Arrival time of each request in nanoseconds, non-decreasing."""
    prompt_tokens: np.ndarray
    """Prompt (prefill) length of each request in tokens, >= 1."""
    output_tokens: np.ndarray
    """Output (decode) length of each request in tokens, >= 1."""

    def __post_init__(self) -> None:
        for name in ("arrival_ns", "prompt_tokens", "output_tokens"):
            array = np.array(getattr(self, name), dtype=np.int64, copy=True)
            if array.ndim != 1:
                raise ValueError(f"Workload.{name} must be 1-D, got shape {array.shape}")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        n = len(self.arrival_ns)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError(
                "Workload arrays differ in length: "
                f"arrival_ns {n}, prompt_tokens {len(self.prompt_tokens)}, "
                f"output_tokens {len(self.output_tokens)}"
            )
        if n > 1 and bool(np.any(np.diff(self.arrival_ns) < 0)):
            raise ValueError("Workload.arrival_ns must be non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("Workload token counts must be >= 1")

    def __len__(self) -> int:
        """The number of requests."""
        return len(self.arrival_ns)

    def to_frame(self) -> pl.DataFrame:
        """The requests as a frame with int64 columns ``request_id`` (0, 1, ...), ``arrival_ns``,
        ``prompt_tokens`` and ``output_tokens``."""
        return pl.DataFrame(
            {
                "request_id": np.arange(len(self), dtype=np.int64),
                "arrival_ns": self.arrival_ns,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
            }
        )


def build_workload(cfg: WorkloadConfig, seed: int, base_dir: Path | None = None) -> Workload:
    """Generate (Poisson arrivals) or load (trace arrivals) the requests ``cfg`` describes.

    ``seed`` makes the result deterministic: arrivals draw from ``np.random.default_rng([seed, 1])``
    and lengths from ``np.random.default_rng([seed, 2])``. Relative file paths are resolved against
    ``base_dir`` (the scenario file's directory) first, then the current directory; a file found in
    neither raises ``ConfigError``. A malformed file raises ``TraceError``.
    """
    arrivals = cfg.arrivals
    if isinstance(arrivals, PoissonArrivals):
        assert cfg.lengths is not None and cfg.requests is not None  # enforced by WorkloadConfig
        arrival_ns = poisson_arrivals(
            cfg.requests, arrivals.rate, np.random.default_rng([seed, _ARRIVAL_STREAM])
        )
        prompt, output = sample_lengths(
            cfg.lengths, cfg.requests, np.random.default_rng([seed, _LENGTH_STREAM]), base_dir
        )
        return Workload(arrival_ns=arrival_ns, prompt_tokens=prompt, output_tokens=output)
    if isinstance(arrivals, TraceArrivals):
        return _replay_trace(arrivals, cfg.requests, base_dir)
    raise TypeError(f"unknown arrival process {type(arrivals).__name__}")


def _replay_trace(arrivals: TraceArrivals, requests: int | None, base_dir: Path | None) -> Workload:
    path = resolve_path(arrivals.path, base_dir)
    frame = load_azure_csv(path)
    if requests is not None:
        if requests > frame.height:
            from fleetwise.errors import ConfigError

            raise ConfigError(
                f"requests is {requests} but the trace {path} has only {frame.height} rows"
            )
        frame = frame.head(requests)
    arrival_ns = frame["arrival_ns"].to_numpy()
    if arrivals.rate_scale != 1.0:
        arrival_ns = np.rint(arrival_ns / arrivals.rate_scale).astype(np.int64)
    return Workload(
        arrival_ns=arrival_ns,
        prompt_tokens=frame["prompt_tokens"].to_numpy(),
        output_tokens=frame["output_tokens"].to_numpy(),
    )
