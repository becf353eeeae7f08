"""Expert cache policies: which MoE experts of a layer stay in HBM.

The interface follows the simulator's per-layer cache exactly: every expert a token is routed to is
an :meth:`ExpertCachePolicy.access` (a hit when resident); a miss is fetched and then offered to
:meth:`ExpertCachePolicy.admit`, which may evict one resident expert. ``prefetch`` candidates are
admitted the same way before their layer runs. The built-ins below make the same decisions as the
simulator's Rust caches (``fleetwise.moe.cache_hits``), so a real model driven by one of them
(``fleetwise.integrations.hf_moe``) reports the simulator's hit rate on the same routing.

A policy also runs inside the simulator (``experts: {cache: {policy: {name: ...}}}`` in a pool, or
``fleetwise.simulate(..., expert_caches=...)``): one object per GPU of each instance, called through
:class:`ExpertCacheBridge`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
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
        _check_popularity(popularity, num_layers, num_experts)
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


def _is_list(x) -> bool:
    """Whether ``x`` is a list-like of values (a list, tuple, numpy array), not text or a mapping."""
    return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, (str, bytes, Mapping))


def _check_popularity(popularity, num_layers: int, num_experts: int) -> None:
    """ValueError naming ``popularity`` and the shape it must have unless it is None or one list per
    layer of one finite number per expert (a malformed one used to fail as IndexError or KeyError)."""
    if popularity is None:
        return
    expected = f"popularity must be null or {num_layers} lists (one per layer) of {num_experts} finite numbers (one per expert)"
    if not _is_list(popularity):
        raise ValueError(f"{expected}, got {type(popularity).__name__} {popularity!r}"[:300])
    if len(popularity) != num_layers:
        raise ValueError(f"{expected}, got a list of length {len(popularity)}")
    for layer, row in enumerate(popularity):
        if not _is_list(row) or len(row) != num_experts:
            got = f"a list of length {len(row)}" if _is_list(row) else f"{type(row).__name__} {row!r}"
            raise ValueError(f"{expected}; layer {layer} is {got}"[:300])
        for expert, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{expected}; layer {layer}, expert {expert} is {value!r}"[:300])


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


class ExpertCacheBridge:
    """Calls the ExpertCachePolicy of one GPU for the core: ``num_layers`` layers of ``num_experts``
    experts (the GPU's local ids), ``capacity`` of them cached per layer. ``label`` names it in
    messages; ``clock`` notes each call (for the per-call time limit)."""

    def __init__(self, policy, num_layers: int, num_experts: int, capacity: int, label: str = "the expert cache policy", clock=None):
        from fleetwise.policy.watchdog import CallClock

        self.policy = policy
        self.num_layers, self.num_experts, self.capacity = num_layers, num_experts, capacity
        self.label = label
        self.clock = clock or CallClock()
        self._resident: list[frozenset[int]] = []

    def resident_all(self) -> list[list[int]]:
        """Each layer's resident experts at the start, for the core's mirror."""
        self._resident = [self._ask_resident(layer) for layer in range(self.num_layers)]
        return [sorted(r) for r in self._resident]

    def lookup(self, layer: int, hits: Sequence[int], misses: Sequence[int]) -> list[int]:
        """One layer's lookups, as the core makes them: each of ``hits`` (resident when the layer
        ran) is accessed, then each of ``misses`` is accessed and, fetched, offered to ``admit``.
        Returns the layer's resident experts after them. An answer that contradicts what
        ``resident`` listed is a PolicyAnswerError."""
        from fleetwise.policy.bridge import PolicyAnswerError

        policy, clock = self.policy, self.clock
        resident = set(self._resident[layer])
        access, admit = f"{self.label}: access()", f"{self.label}: admit()"
        try:
            for e in hits:
                clock.calls += 1
                clock.busy = access
                if not policy.access(layer, e):
                    raise PolicyAnswerError(f"access({layer}, {e}) answered a miss, but resident({layer}) listed expert {e}")
            for e in misses:
                clock.calls += 1
                clock.busy = access
                if policy.access(layer, e):
                    raise PolicyAnswerError(f"access({layer}, {e}) answered a hit, but resident({layer}) did not list expert {e}")
                clock.calls += 1
                clock.busy = admit
                evicted = policy.admit(layer, e)
                if evicted is not None:
                    if isinstance(evicted, bool) or not isinstance(evicted, numbers.Integral) or int(evicted) not in resident:
                        raise PolicyAnswerError(f"admit({layer}, {e}) evicted {evicted!r}, which is not a resident expert of layer {layer} ({sorted(resident)})"[:300])
                    resident.discard(int(evicted))
                resident.add(e)
        finally:
            clock.busy = None
        now = self._ask_resident(layer)
        if not now <= resident:
            raise PolicyAnswerError(f"resident({layer}) lists experts {sorted(now - resident)} that were neither resident nor admitted")
        self._resident[layer] = now
        return sorted(now)

    def _ask_resident(self, layer: int) -> frozenset[int]:
        """``policy.resident(layer)``, checked: expert ids of this GPU, at most ``capacity``."""
        self.clock.calls += 1
        self.clock.busy = f"{self.label}: resident()"
        try:
            # Reading the answer runs the policy's own code (a generator it returned): still under
            # the per-call time limit.
            return checked_resident(self.policy.resident(layer), layer, self.num_experts, self.capacity)
        finally:
            self.clock.busy = None


def checked_resident(got, layer: int, num_experts: int, capacity: int) -> frozenset[int]:
    """An answer of ``resident(layer)`` as a frozenset of expert ids: any iterable of ints in
    ``0..num_experts`` (repeats count once), at most ``capacity`` of them; PolicyAnswerError saying
    what is wrong otherwise. The simulator and ``check-policy`` both read answers with it."""
    from fleetwise.policy.bridge import PolicyAnswerError

    if isinstance(got, (str, bytes)):
        raise PolicyAnswerError(f"resident({layer}) must return a set of expert ids, got {got!r}"[:300])
    try:
        experts = frozenset(got)
    except TypeError:
        raise PolicyAnswerError(f"resident({layer}) must return a set of expert ids, got {got!r}"[:300]) from None
    bad = [e for e in experts if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < num_experts]
    if bad:
        raise PolicyAnswerError(f"resident({layer}) lists {bad[:5]!r}, which are not expert ids in 0..{num_experts}"[:300])
    if len(experts) > capacity:
        raise PolicyAnswerError(f"resident({layer}) lists {len(experts)} experts, over the capacity of {capacity}")
    return frozenset(int(e) for e in experts)
