"""``flatten_summary``: a summary's scalar metrics as one flat row, the one place tables, sweep
rows and side-by-side comparisons read a summary's nested entries from."""

from __future__ import annotations

from fleetwise.metrics.distribution import PERCENTILES

LATENCIES = ("ttft", "tpot", "itl", "e2e")
"""The latency distributions of a summary (entries ``<name>_s``)."""

_PATHS: dict[str, tuple[str, ...]] = {
    "scenario": ("scenario",),
    "requests": ("requests",),
    "finished": ("finished",),
    "rejected": ("rejected",),
    "duration_s": ("duration_s",),
    "preemptions": ("preemptions",),
    "requests_per_s": ("throughput", "requests_per_s"),
    "output_tokens_per_s": ("throughput", "output_tokens_per_s"),
    "total_tokens_per_s": ("throughput", "total_tokens_per_s"),
    **{f"{m}_{stat}": (f"{m}_s", stat) for m in LATENCIES for stat in ("mean", *(f"p{p}" for p in PERCENTILES))},
    "slo_attainment": ("slo", "attainment"),
    "slo_targets": ("slo", "targets"),
    "energy_joules_per_output_token": ("energy", "joules_per_output_token"),
    "dollars_per_million_output_tokens": ("cost", "dollars_per_million_output_tokens"),
    "expert_hit_rate": ("experts", "hit_rate"),
    "expert_stall_ms_per_iteration": ("experts", "stall_ms_per_iteration"),
    "expert_hbm_gib_per_gpu": ("experts", "hbm_expert_gib_per_gpu"),
    "prefix_hit_rate": ("prefix_cache", "hit_rate"),
    "spec_acceptance_rate": ("speculative", "acceptance_rate"),
    "spec_mean_acceptance_length": ("speculative", "mean_acceptance_length"),
}
"""Each flat column and where it lives in a summary."""


def _get(d, keys: tuple[str, ...]):
    """``d[k0][k1]...``, or None where a level is missing or not a mapping (summaries read from
    disk may be partial or malformed)."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def flatten_summary(summary: dict) -> dict:
    """The summary's metrics as ``{column: value}`` (None where absent): ``requests_per_s``,
    ``ttft_p90``, ``slo_attainment``, ``expert_hit_rate``, ... (see ``_PATHS``)."""
    return {name: _get(summary, path) for name, path in _PATHS.items()}
