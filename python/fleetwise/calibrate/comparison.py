"""Simulated against measured latencies of one request log: the table ``fleetwise validate`` prints
and the errors ``fleetwise calibrate --requests`` minimises.

For each metric (TTFT, TPOT, ITL where the log has it, E2E) and statistic (mean, p50, p90, p99):
the measured value (the log's requests), the simulated one (the same requests replayed) and the
relative error ``simulated / measured - 1``. Percentiles of both sides are numpy's linear ones over
the requests (TPOT: requests with more than one output token); the simulated ITL comes from the
core's streaming sketch (relative error 0.5%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwise.metrics.distribution import distribution
from fleetwise.requestlog import RequestLog

METRICS = ("ttft", "tpot", "itl", "e2e")
"""The compared metrics, in table order."""
STATISTICS = ("mean", "p50", "p90", "p99")
"""The compared statistics of each metric."""


@dataclass(frozen=True)
class MetricError:
    """One statistic of one metric, measured and simulated."""

    metric: str
    """``ttft``, ``tpot``, ``itl`` or ``e2e``."""
    statistic: str
    """``mean``, ``p50``, ``p90`` or ``p99``."""
    measured_s: float
    """From the log, seconds."""
    simulated_s: float | None
    """From the replay, seconds (``None`` when no simulated request finished)."""

    @property
    def error(self) -> float | None:
        """``simulated / measured - 1`` (``None`` without a simulated value or a zero measurement)."""
        if self.simulated_s is None or self.measured_s == 0:
            return None
        return self.simulated_s / self.measured_s - 1.0


@dataclass(frozen=True)
class LogComparison:
    """A log's requests, measured and replayed on a scenario."""

    rows: tuple[MetricError, ...]
    """Every metric and statistic the log has, in ``METRICS`` x ``STATISTICS`` order."""
    requests: int
    """Requests replayed (the log's successful ones)."""
    finished: int
    """Of those, finished in the simulation."""
    rejected: int
    """Of those, rejected by the simulated cluster."""

    def error(self, metric: str, statistic: str) -> float | None:
        """The relative error of ``metric``'s ``statistic`` (``KeyError`` when not compared)."""
        for row in self.rows:
            if (row.metric, row.statistic) == (metric, statistic):
                return row.error
        raise KeyError(f"{metric} {statistic} not compared")

    def errors(self) -> dict[str, float | None]:
        """Every relative error, keyed ``<metric>_<statistic>`` (``ttft_p50`` ...)."""
        return {f"{r.metric}_{r.statistic}": r.error for r in self.rows}

    def to_json(self) -> dict:
        """The comparison as a JSON-ready dict: ``requests``, ``finished``, ``rejected`` and
        ``metrics: {metric: {statistic: {measured_s, simulated_s, error}}}``."""
        metrics: dict[str, dict] = {}
        for r in self.rows:
            metrics.setdefault(r.metric, {})[r.statistic] = {"measured_s": r.measured_s, "simulated_s": r.simulated_s, "error": r.error}
        return {"requests": self.requests, "finished": self.finished, "rejected": self.rejected, "metrics": metrics}


def compare(log: RequestLog, result) -> LogComparison:
    """Compare the log's measured latencies with ``result`` (a ``Result`` of replaying exactly
    the log's requests, ``calibrate.replay.replay``)."""
    measured = log.latencies()
    req = result.requests
    simulated = {
        "ttft": result.summary["ttft_s"],
        "tpot": result.summary["tpot_s"],
        "itl": result.summary["itl_s"],
        "e2e": result.summary["e2e_s"],
    }
    rows = []
    for metric in METRICS:
        if metric not in measured or len(measured[metric]) == 0:
            continue
        m = distribution(np.asarray(measured[metric], dtype=np.float64))
        for stat in STATISTICS:
            rows.append(MetricError(metric, stat, float(m[stat]), simulated[metric][stat]))
    finished = int((req["status"] == "finished").sum())
    rejected = int((req["status"] == "rejected").sum())
    return LogComparison(rows=tuple(rows), requests=req.height, finished=finished, rejected=rejected)
