"""The outcome of a simulation: per-request table, per-instance facts and the summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class Result:
    """What ``fleetwise.simulate`` returns.

    ``requests`` has one row per request: times in integer ns (exact) and derived latencies in
    seconds; ``instances`` one row per instance; ``iterations`` one row per iteration when asked
    for; ``summary`` the metrics of ``fleetwise.metrics.summarize``.
    """

    requests: pl.DataFrame
    instances: pl.DataFrame
    summary: dict
    iterations: pl.DataFrame | None = None

    def write(self, directory: str | Path) -> Path:
        """Writes requests.parquet, instances.parquet, summary.json (and iterations.parquet)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.requests.write_parquet(d / "requests.parquet")
        self.instances.write_parquet(d / "instances.parquet")
        if self.iterations is not None:
            self.iterations.write_parquet(d / "iterations.parquet")
        (d / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
        return d
