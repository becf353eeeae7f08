"""Prefix-cache metrics: prompt tokens found cached over tokens looked up."""

from __future__ import annotations

from typing import TypedDict

import polars as pl


class PrefixCacheSummary(TypedDict):
    """The summary's ``prefix_cache`` entry."""

    hit_tokens: int
    lookup_tokens: int
    hit_rate: float


def prefix_cache_summary(instances: pl.DataFrame) -> PrefixCacheSummary | None:
    """Prefix-cache hits over all instances; None when no instance looked a prefix up."""
    if "prefix_lookup_tokens" not in instances.columns or int(instances["prefix_lookup_tokens"].sum()) <= 0:
        return None
    hits, looked = int(instances["prefix_hit_tokens"].sum()), int(instances["prefix_lookup_tokens"].sum())
    return {"hit_tokens": hits, "lookup_tokens": looked, "hit_rate": hits / looked}
