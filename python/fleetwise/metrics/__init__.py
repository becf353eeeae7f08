"""Metrics of a run, one concept per module: per-request latencies (``latency``), distributions
(``distribution``), SLO attainment (``slo``), energy and cost (``energy``), expert and prefix-cache
hit rates (``experts``, ``prefix``), speculative decoding (``speculative``), rejection reasons (``rejections``), the typed run summary
(``summary``) and its flattening into table rows (``flatten``)."""

from fleetwise.metrics.distribution import PERCENTILES, Distribution, distribution
from fleetwise.metrics.energy import energy_and_cost
from fleetwise.metrics.experts import expert_columns, expert_hit_rate, expert_summary
from fleetwise.metrics.flatten import flatten_summary
from fleetwise.metrics.latency import itl_distribution, request_latencies
from fleetwise.metrics.prefix import prefix_cache_summary
from fleetwise.metrics.rejections import rejection_reasons
from fleetwise.metrics.slo import SLO_COLUMNS, attainment, slo_attainment
from fleetwise.metrics.speculative import speculative_columns, speculative_summary
from fleetwise.metrics.summary import Summary, _json_safe, summarize

__all__ = [
    "PERCENTILES",
    "Distribution",
    "Summary",
    "attainment",
    "distribution",
    "energy_and_cost",
    "expert_columns",
    "expert_hit_rate",
    "expert_summary",
    "flatten_summary",
    "itl_distribution",
    "prefix_cache_summary",
    "rejection_reasons",
    "request_latencies",
    "slo_attainment",
    "speculative_columns",
    "speculative_summary",
    "SLO_COLUMNS",
    "summarize",
]
