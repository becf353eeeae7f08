"""Expert cache policies replayed on a sequence of expert accesses (the simulator's own caches)."""

from __future__ import annotations

from typing import Literal, Sequence

from fleetwise import _core


def cache_hits(policy: Literal["lru", "lfu", "static"], num_experts: int, capacity: int, accesses: Sequence[int], popularity: Sequence[float] | None = None) -> int:
    """Hits of one layer's expert cache of ``capacity`` experts over ``accesses`` (expert ids in
    order), with exactly the simulator's policy. A static cache holds the ``capacity`` most
    ``popular`` experts (default: the lowest ids)."""
    return _core.expert_cache_hits(policy, num_experts, capacity, [int(a) for a in accesses], None if popularity is None else [float(p) for p in popularity])
