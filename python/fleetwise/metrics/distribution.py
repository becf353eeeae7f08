"""``Distribution``: the mean and percentiles a summary reports for one latency."""

from __future__ import annotations

from typing import TypedDict

import numpy as np

PERCENTILES = (50, 90, 99)
"""The percentiles every distribution reports."""


class Distribution(TypedDict):
    """Mean and percentiles of one metric; None when it has no values."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None


def distribution(values: np.ndarray, reorder: bool = False) -> Distribution:
    """Mean and p50/p90/p99 of ``values`` (None when empty). With ``reorder`` the percentiles
    sort ``values`` in place (the caller's array of its own) instead of partitioning a copy."""
    if len(values) == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    mean = float(np.mean(values))  # before any reordering: the pairwise sum depends on the order
    if reorder:
        # numpy's SIMD sort, then percentile's partition of a sorted array, is about twice as fast
        # as its partition of an unsorted one (1.6 -> 0.8 ms at 100k values); the order
        # statistics, hence the percentiles, are the same values.
        values.sort()
    qs = np.percentile(values, PERCENTILES, overwrite_input=reorder)
    return {"mean": mean, **{f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)}}
