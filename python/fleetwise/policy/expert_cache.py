"""Expert cache policies: which MoE experts of a layer stay in HBM.

The interface follows the simulator's per-layer cache exactly: every expert a token is routed to is
an :meth:`ExpertCachePolicy.access` (a hit when resident); a miss is fetched and then offered to
:meth:`ExpertCachePolicy.admit`, which may evict one resident expert. ``prefetch`` candidates are
admitted the same way before their layer runs. The built-ins below make the same decisions as the
simulator's Rust caches (``fleetwise.moe.cache_hits``), so a real model driven by one of them
(``fleetwise.integrations.hf_moe``) reports the simulator's hit rate on the same routing.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class ExpertCachePolicy(Protocol):
    """Keeps up to a fixed number of each layer's experts resident."""

    def access(self, layer: int, expert: int) -> bool:
        """Records a use of ``expert`` in ``layer``; whether it was resident."""
        ...

    def admit(self, layer: int, expert: int) -> int | None:
        """Makes a fetched ``expert`` resident if the policy wants it; the expert evicted, if any."""
        ...

    def resident(self, layer: int) -> frozenset[int]:
        """The experts of ``layer`` resident now."""
        ...


class _Layer:
    __slots__ = ("resident", "last_use", "uses", "clock")

    def __init__(self, experts: int):
        self.resident: set[int] = set()
        self.last_use = [0] * experts
        self.uses = [0] * experts
        self.clock = 0


class RecencyCache:
    """LRU (``frequency=False``) or LFU with ties to the least recent (``frequency=True``), per layer."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int, frequency: bool = False):
        if capacity < 0 or num_experts < 1:
            raise ValueError("capacity must be >= 0 and num_experts >= 1")
        self.num_experts = num_experts
        self.capacity = min(capacity, num_experts)
        self.frequency = frequency
        self.layers = [_Layer(num_experts) for _ in range(num_layers)]

    def access(self, layer: int, expert: int) -> bool:
        """Counts the use; a hit when resident."""
        c = self.layers[layer]
        c.clock += 1
        c.last_use[expert] = c.clock
        c.uses[expert] += 1
        return expert in c.resident

    def admit(self, layer: int, expert: int) -> int | None:
        """Admits ``expert``, evicting the least recently (or least frequently) used when full."""
        c = self.layers[layer]
        if expert in c.resident or self.capacity == 0:
            return None
        victim = None
        if len(c.resident) >= self.capacity:
            key = (lambda e: (c.uses[e], c.last_use[e])) if self.frequency else (lambda e: c.last_use[e])
            victim = min(sorted(c.resident), key=key)
            c.resident.remove(victim)
        c.resident.add(expert)
        return victim

    def resident(self, layer: int) -> frozenset[int]:
        """Resident experts of ``layer``."""
        return frozenset(self.layers[layer].resident)


class LruExpertCache(RecencyCache):
    """Least recently used eviction (the simulator's ``lru``)."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int):
        super().__init__(num_layers, num_experts, capacity, frequency=False)


class LfuExpertCache(RecencyCache):
    """Least frequently used eviction, ties to the least recent (the simulator's ``lfu``)."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int):
        super().__init__(num_layers, num_experts, capacity, frequency=True)


class StaticExpertCache:
    """A fixed hot set per layer: the ``capacity`` most popular experts (the simulator's ``static``)."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int, popularity: Sequence[Sequence[float]] | None = None):
        capacity = min(capacity, num_experts)
        self.hot = []
        for layer in range(num_layers):
            pop = popularity[layer] if popularity is not None else [num_experts - e for e in range(num_experts)]
            order = sorted(range(num_experts), key=lambda e: (-pop[e], e))
            self.hot.append(frozenset(order[:capacity]))

    def access(self, layer: int, expert: int) -> bool:
        """A hit when ``expert`` is in the layer's hot set."""
        return expert in self.hot[layer]

    def admit(self, layer: int, expert: int) -> int | None:
        """Admits nothing: a fetched expert lives only in a staging buffer."""
        return None

    def resident(self, layer: int) -> frozenset[int]:
        """The hot set."""
        return self.hot[layer]


def make_expert_cache(policy: str, num_layers: int, num_experts: int, capacity: int, popularity=None) -> ExpertCachePolicy:
    """The built-in expert cache ``policy`` (lru, lfu, static) with ``capacity`` experts per layer."""
    if policy == "lru":
        return LruExpertCache(num_layers, num_experts, capacity)
    if policy == "lfu":
        return LfuExpertCache(num_layers, num_experts, capacity)
    if policy == "static":
        return StaticExpertCache(num_layers, num_experts, capacity, popularity)
    raise ValueError(f"unknown expert cache policy {policy!r}; allowed: lru, lfu, static")


def replay(policy: ExpertCachePolicy, layer: int, accesses: Sequence[int]) -> int:
    """Hits of ``policy`` over one layer's ``accesses`` (misses admitted), as the simulator replays them."""
    hits = 0
    for e in accesses:
        if policy.access(layer, int(e)):
            hits += 1
        else:
            policy.admit(layer, int(e))
    return hits
