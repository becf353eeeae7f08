"""The run summary (summary.json): counts, throughput, latency distributions, SLO attainment,
energy, cost, prefix-cache, expert, mixed-pool and speculative decoding metrics, rejection reasons.

A metric that has no value (no request finished, no token generated) is ``None`` in the summary,
``null`` in summary.json: never NaN, which is not JSON.
"""

from __future__ import annotations

import math
from typing import TypedDict

import polars as pl

from fleetwise.metrics.distribution import Distribution, distribution
from fleetwise.metrics.energy import CostSummary, EnergySummary, energy_and_cost
from fleetwise.metrics.experts import ExpertSummary, expert_summary
from fleetwise.metrics.latency import itl_distribution
from fleetwise.metrics.mixed_pool import MixedPoolSummary, mixed_pool_summary
from fleetwise.metrics.prefix import PrefixCacheSummary, prefix_cache_summary
from fleetwise.metrics.rejections import RejectionCount, rejection_reasons
from fleetwise.metrics.slo import SloSummary, slo_attainment
from fleetwise.metrics.speculative import SpeculativeSummary, speculative_summary
from fleetwise.metrics.table_reads import FINISHED, Table, aggregates, column_names, finished_columns


class Throughput(TypedDict):
    """The summary's ``throughput`` entry, over the span from the first arrival to the last completion."""

    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float


class _SummaryRequired(TypedDict):
    requests: int
    finished: int
    rejected: int
    duration_s: float
    throughput: Throughput
    ttft_s: Distribution
    tpot_s: Distribution
    itl_s: Distribution
    e2e_s: Distribution
    preemptions: int


class Summary(_SummaryRequired, total=False):
    """A run's summary as summary.json holds it; the optional entries appear when they apply
    (``simulate`` adds scenario, seed, events and, for a trace selection, trace_rows; for a length
    file, length_rows)."""

    energy: EnergySummary
    cost: CostSummary
    prefix_cache: PrefixCacheSummary
    experts: ExpertSummary
    mixed_pool: MixedPoolSummary
    speculative: SpeculativeSummary
    slo: SloSummary
    rejections: list[RejectionCount]
    scenario: str
    seed: int
    events: int
    trace_rows: dict
    length_rows: dict
    engines: dict
    error_bars: dict
    scheduling_delay_s: Distribution


def _json_safe(x):
    """``x`` with every non-finite float replaced by None (summary.json is strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summarize(requests: Table, itl: dict, slo=None, instances: pl.DataFrame | None = None, wall_seconds: float = 0.0) -> Summary:
    """The run summary: counts, throughput, latency distributions, SLO attainment, energy, cost."""
    agg = aggregates(requests, requests=pl.len(), finished=FINISHED.sum(), rejected=(pl.col("status") == "rejected").sum(),
                     first_arrival=pl.col("arrival_ns").min(), last_done=pl.col("completion_ns").filter(FINISHED).max(),
                     out_tokens=pl.col("output_tokens").filter(FINISHED).sum(), in_tokens=pl.col("prompt_tokens").filter(FINISHED).sum(),
                     preemptions=pl.col("preemptions").sum())
    n_done = int(agg["finished"])
    first_arrival = agg["first_arrival"] if agg["requests"] else 0
    last_done = agg["last_done"] if n_done else first_arrival
    span = max((last_done - first_arrival) * 1e-9, 1e-12) if n_done else 0.0
    out_tokens = int(agg["out_tokens"]) if n_done else 0
    in_tokens = int(agg["in_tokens"]) if n_done else 0
    names = column_names(requests)
    # The finished requests' latency distributions, their columns read together (TPOT is null
    # for a one-token output).
    latency = ["ttft_s", "tpot_s", "e2e_s"] + (["scheduling_delay_s"] if "scheduling_delay_s" in names else [])
    dists = {}
    for name, values in finished_columns(requests, latency, drop_nulls=frozenset({"tpot_s", "scheduling_delay_s"})):
        dists[name] = distribution(values, reorder=True)
        del values  # before the next column is read: a long table's columns never exist together
    summary: Summary = {
        "requests": int(agg["requests"]),
        "finished": n_done,
        "rejected": int(agg["rejected"]),
        "duration_s": span,
        "throughput": {
            "requests_per_s": n_done / span if span else 0.0,
            "output_tokens_per_s": out_tokens / span if span else 0.0,
            "total_tokens_per_s": (in_tokens + out_tokens) / span if span else 0.0,
        },
        "ttft_s": dists["ttft_s"],
        "tpot_s": dists["tpot_s"],
        "itl_s": itl_distribution(itl),
        "e2e_s": dists["e2e_s"],
        "preemptions": int(agg["preemptions"] or 0),
    }
    if "scheduling_delay_s" in dists:
        # Arrival to the first iteration that includes it (vLLM's queue time), finished requests.
        summary["scheduling_delay_s"] = dists["scheduling_delay_s"]
    if instances is not None:
        # A run that finished nothing lasts 0 s: no energy, no cost, nothing per token (None).
        summary.update(energy_and_cost(requests, instances, wall_seconds))
    prefix = prefix_cache_summary(instances) if instances is not None else None
    if prefix is not None:
        summary["prefix_cache"] = prefix
    experts = expert_summary(instances) if instances is not None else None
    if experts is not None:
        summary["experts"] = experts
    mixed = mixed_pool_summary(requests, instances) if instances is not None else None
    if mixed is not None:
        summary["mixed_pool"] = mixed
    speculative = speculative_summary(instances) if instances is not None else None
    if speculative is not None:
        summary["speculative"] = speculative
    slo_part = slo_attainment(requests, slo)
    if slo_part is not None:
        # vLLM's request goodput at this run's load: requests per second that met every target
        # (DistServe's goodput, the highest rate meeting an attainment target, is `fleetwise goodput`).
        att = slo_part["attainment"]
        slo_part["request_goodput"] = None if att is None or not span else att * summary["requests"] / span
        summary["slo"] = slo_part
    if "reject_reason" in names and summary["rejected"]:
        summary["rejections"] = rejection_reasons(requests.lazy().select(pl.col("reject_reason").drop_nulls()).collect().to_series().to_list())
    return _json_safe(summary)
