"""Mixture-of-experts metrics: expert-cache hit rates, fetched bytes, stalls and load imbalance."""

from __future__ import annotations

from typing import TypedDict

import polars as pl


class ExpertSummary(TypedDict):
    """The summary's ``experts`` entry (bytes are per GPU)."""

    hit_rate: float | None
    cache_hit_rate: float | None
    prefetch_hit_rate: float | None
    fetched_bytes_per_token: float
    wasted_prefetch_bytes: float
    stall_ms_per_iteration: float
    experts_activated_per_iteration: float
    load_imbalance: float | None
    hbm_expert_gib_per_gpu: float
    hbm_saved_gib_per_gpu: float


def expert_hit_rate(hits, prefetch_hits, lookups):
    """Fraction of expert lookups served without a demand fetch (cached or prefetched); None without lookups."""
    return (hits + prefetch_hits) / lookups if lookups else None


def expert_columns(stats: dict | None) -> dict:
    """An instance's MoE counters as ``expert_*`` columns, with its hit rate."""
    if stats is None:
        return {}
    cols = {f"expert_{k}": v for k, v in stats.items()}
    cols["expert_hit_rate"] = expert_hit_rate(stats["hits"], stats["prefetch_hits"], stats["lookups"])
    return cols


def expert_summary(instances: pl.DataFrame) -> ExpertSummary | None:
    """Mixture-of-experts counters over all instances with expert settings (bytes are per GPU)."""
    if "expert_lookups" not in instances.columns:
        return None
    x = instances.filter(pl.col("expert_iterations").is_not_null())
    if x.height == 0:
        return None

    def total(col: str) -> float:
        return float(x[col].sum())

    looked, iters, tokens = total("expert_lookups"), total("expert_iterations"), total("expert_tokens")
    fetched = total("expert_demand_bytes") + total("expert_prefetch_bytes")
    return {
        "hit_rate": expert_hit_rate(total("expert_hits"), total("expert_prefetch_hits"), looked),
        "cache_hit_rate": total("expert_hits") / looked if looked else None,
        "prefetch_hit_rate": total("expert_prefetch_hits") / looked if looked else None,
        "fetched_bytes_per_token": fetched / tokens if tokens else 0.0,
        "wasted_prefetch_bytes": total("expert_wasted_prefetch_bytes"),
        "stall_ms_per_iteration": total("expert_stall_ns") / iters * 1e-6 if iters else 0.0,
        "experts_activated_per_iteration": total("expert_activated") / iters if iters else 0.0,
        "load_imbalance": total("expert_imbalance_sum") / total("expert_imbalance_layers") if total("expert_imbalance_layers") else None,
        "hbm_expert_gib_per_gpu": float(x["expert_hbm_bytes"].mean()) / 2**30,
        "hbm_saved_gib_per_gpu": float(x["expert_hbm_saved_bytes"].mean()) / 2**30,
    }
