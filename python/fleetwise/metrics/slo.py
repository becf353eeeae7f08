"""SLO attainment: the fraction of all requests that finished meeting every latency target
(a rejected or unfinished request never does), as DistServe defines it for goodput."""

from __future__ import annotations

from typing import TypedDict

import polars as pl

from fleetwise.metrics.table_reads import Table, aggregates

SLO_COLUMNS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "scheduling_delay": "scheduling_delay_s"}
"""Each SLO target's name and the per-request column it bounds."""


class SloSummary(TypedDict):
    """The summary's ``slo`` entry: the targets set and the attainment (None without targets or requests)."""

    targets: dict[str, float]
    attainment: float | None
    request_goodput: float | None
    """vLLM's request goodput: requests per second that met every target, at the run's load."""


def attainment(requests: Table, targets: dict[str, float]) -> float:
    """Fraction of all requests that finished and met every target (seconds, by ``SLO_COLUMNS`` name)."""
    ok = pl.col("status") == "finished"
    for name, limit in targets.items():
        ok = ok & (pl.col(SLO_COLUMNS[name]).fill_null(0.0) <= limit)
    counts = aggregates(requests, ok=ok.sum(), n=pl.len())
    return float(counts["ok"]) / max(counts["n"], 1)


def slo_attainment(requests: Table, slo) -> SloSummary | None:
    """The targets of ``slo`` (a ``SloConfig``) and their attainment; None when there is no SLO,
    attainment None when it has no target or there are no requests."""
    if slo is None:
        return None
    targets = {name: getattr(slo, name) for name in SLO_COLUMNS if getattr(slo, name) is not None}
    if not targets or aggregates(requests, n=pl.len())["n"] == 0:
        return {"targets": targets, "attainment": None}
    return {"targets": targets, "attainment": attainment(requests, targets)}
