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
        (d / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
        return d


def write_stopped(directory: str | Path, requests: pl.DataFrame, scenario: str, reason: str) -> Path:
    """Writes what a run that stopped part way kept: requests.parquet (finished requests with their
    times; the others with status ``unfinished`` or ``rejected``) and a summary.json that says why it
    stopped and counts the requests, with no metrics (they would describe a cut-off run)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    requests.write_parquet(d / "requests.parquet")
    counts = requests["status"].value_counts()
    by_status = dict(zip(counts["status"].to_list(), counts["count"].to_list()))
    summary = {"scenario": scenario, "stopped": reason, "requests": requests.height, "finished": by_status.get("finished", 0), "rejected": by_status.get("rejected", 0), "unfinished": by_status.get("unfinished", 0)}
    (d / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return d
