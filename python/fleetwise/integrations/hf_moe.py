"""Drive a Hugging Face transformers MoE model's experts with a fleetwise expert cache policy.

transformers (5.x) makes the routed experts of Mixtral-style models pluggable: the experts module
(``MixtralExperts`` and the other classes decorated with ``@use_experts_implementation``) dispatches
its forward through ``transformers.integrations.moe.ExpertsInterface`` on
``config._experts_implementation``. This module registers one more implementation,
``"fleetwise_offload"`` (:data:`IMPLEMENTATION`), and :class:`ExpertOffload` attaches an
:class:`~fleetwise.policy.ExpertCachePolicy` to a model that uses it::

    from fleetwise.integrations.hf_moe import ExpertOffload, IMPLEMENTATION, register
    from fleetwise.policy import LruExpertCache

    register()                                      # once; importing this module does it too
    model = MixtralForCausalLM._from_config(config, experts_implementation=IMPLEMENTATION)
    offload = ExpertOffload(model, LruExpertCache(layers, experts, 2), capacity=2)
    offload.new_request()                           # before each request's first forward
    ...                                             # forward passes / greedy decoding, batch 1
    offload.summary(); offload.accesses[layer]; offload.write_routing_trace("routing.jsonl")

Weights. Each expert's weights live in a master copy on ``offload_device`` (host memory by default;
pinned when the model runs on a GPU) and, with ``release=True``, leave the model's parameters. Each
MoE layer has ``capacity`` cache slots on the model's device that mirror the policy's resident set,
one staging area of ``num_experts`` slots for experts fetched on demand and, with ``prefetch``, two
areas for prefetched experts. A layer's output is computed from the slots and staging areas with the
same arithmetic as transformers' eager experts, so the model's outputs do not change.

Order of the policy calls (the simulator's, ``rust/core/src/moe/runtime.rs``). Every forward call is
one step (one simulator iteration: a prefill chunk or a decode step). In each MoE layer the step's
tokens run as one fused expert GEMM, which needs every expert any of them chose; so per layer and
step, with ``needed`` the distinct experts the step's tokens chose, in ascending id:

1. the ``needed`` experts resident now (``policy.resident(layer)``) are looked up, ascending:
   ``policy.access(layer, e)`` (hits);
2. the others, ascending: ``policy.access(layer, e)`` (a miss), fetched (or taken from the prefetch
   area: a prefetch hit), then ``policy.admit(layer, e)``;
3. the layer computes from cached, staged and prefetched weights; then the cache slots are brought in
   line with the policy's new resident set (admitted experts copied in, evicted ones dropped).

This is the sequence :attr:`ExpertOffload.accesses` records per layer, so
``fleetwise.moe.cache_hits(policy, E, capacity, offload.accesses[layer])`` (the simulator's Rust cache)
equals the layer's measured hits, and a simulation replaying :meth:`ExpertOffload.routing_trace` with
one request at a time reports the same hits, misses and lookups. It is *not* a token-by-token replay
in router order: hits are looked up before any miss is admitted so that admitting a fetched expert
never evicts one the same step still needs, as in the simulator.

Pre-gated prefetch (``prefetch=True``): when layer ``l`` runs, layer ``l + 1``'s router is applied to
layer ``l``'s MoE input, and the experts it names that layer ``l + 1``'s cache does not hold are
fetched into a prefetch area. Layer ``l + 1`` counts a needed expert found there as a prefetch hit
instead of a miss (the policy calls stay the same); prefetched experts it does not use are wasted
bytes. Layer 0 has no earlier layer and fetches on demand.

Routing is recorded per step and layer (top-k expert ids per token in router order, as the router
returned them); requests are delimited by :meth:`ExpertOffload.new_request`, and one request's
forwards must run with batch size 1 for :meth:`ExpertOffload.routing_trace` to assign tokens to
requests (the cache accounting itself works for any batch).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from fleetwise.moe.routing_trace import RoutingTrace, write_routing_trace
from fleetwise.policy.expert_cache import ExpertCachePolicy

IMPLEMENTATION = "fleetwise_offload"
"""The name this module registers in transformers' ``ExpertsInterface``."""

# experts module -> (ExpertOffload, MoE layer index)
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(name: str = IMPLEMENTATION) -> str:
    """Registers the offloading experts implementation in transformers under ``name`` (idempotent)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(name, offloaded_experts_forward)
    return name


def _compute(module, hidden_states, top_k_index, top_k_weights, experts, weights):
    """transformers' eager experts arithmetic over ``experts`` (ascending ids), with each expert's
    ``(gate_up_proj, down_proj)`` from ``weights(e)``."""
    import torch
    from torch.nn import functional as F

    final = torch.zeros_like(hidden_states)
    by_pos = top_k_index.transpose(0, 1)  # (top_k, tokens), as the eager mask is laid out
    for e in experts:
        top_k_pos, token_idx = torch.where(by_pos == e)
        gate_up, down = weights(e)
        current = hidden_states[token_idx]
        h = module._apply_gate(F.linear(current, gate_up))
        h = F.linear(h, down)
        h = h * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, h.to(final.dtype))
    return final


def offloaded_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The registered experts forward: the attached :class:`ExpertOffload` runs the layer, or, for a
    module no offload is attached to, transformers' eager arithmetic on the module's own weights."""
    entry = _ATTACHED.get(self)
    if entry is None:
        experts = sorted({int(e) for e in top_k_index.reshape(-1).tolist() if 0 <= int(e) < self.num_experts})
        return _compute(self, hidden_states, top_k_index, top_k_weights, experts, lambda e: (self.gate_up_proj[e], self.down_proj[e]))
    offload, layer = entry
    return offload._forward(layer, self, hidden_states, top_k_index, top_k_weights)


register()


@dataclass
class LayerStats:
    """One MoE layer's expert counters (bytes of expert weights moved to the model's device)."""

    lookups: int = 0
    """Experts looked up: per step, each distinct expert the step's tokens chose."""
    hits: int = 0
    """Lookups found in the cache."""
    prefetch_hits: int = 0
    """Lookups served by a prefetch."""
    misses: int = 0
    """Lookups fetched on demand."""
    demand_bytes: int = 0
    """Bytes fetched on demand."""
    prefetch_bytes: int = 0
    """Bytes prefetched."""
    wasted_prefetch_bytes: int = 0
    """Prefetched bytes the layer did not use."""
    fill_bytes: int = 0
    """Bytes loaded into the cache for experts the layer did not fetch (a static policy's hot set)."""

    def add(self, other: LayerStats) -> LayerStats:
        """The sum of two counters."""
        return LayerStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _is_moe_block(m) -> bool:
    ex = getattr(m, "experts", None)
    return ex is not None and hasattr(m, "gate") and hasattr(ex, "gate_up_proj") and hasattr(ex, "down_proj") and hasattr(ex, "num_experts")


class ExpertOffload:
    """Runs ``model``'s routed experts through ``policy`` with ``capacity`` cached experts per layer.

    ``model`` is a transformers model whose experts use ``@use_experts_implementation`` (Mixtral and
    its kin, with concatenated gate/up weights, not transposed, no biases); its experts
    implementation is switched to :data:`IMPLEMENTATION`. ``prefetch`` turns on Pre-gated prefetching
    (module docstring). With ``release`` the model's own expert parameters are emptied while the
    offload is attached (:meth:`detach` restores them).
    """

    def __init__(self, model, policy: ExpertCachePolicy, capacity: int, *, prefetch: bool = False, offload_device="cpu", release: bool = True):
        import torch

        self.model = model
        self.policy = policy
        self.capacity = int(capacity)
        self.prefetch = bool(prefetch)
        self._blocks = [m for m in model.modules() if _is_moe_block(m)]
        if not self._blocks:
            raise ValueError("the model has no MoE blocks with pluggable experts (a module with .gate and .experts.gate_up_proj)")
        first = self._blocks[0].experts
        for b in self._blocks:
            ex = b.experts
            if not getattr(ex, "has_gate", True) or getattr(ex, "is_transposed", False) or getattr(ex, "has_bias", False):
                raise ValueError(f"{type(ex).__name__}: unsupported experts layout; ExpertOffload supports gated experts with (out, in) weights and no biases")
            if ex.num_experts != first.num_experts:
                raise ValueError("all MoE layers must have the same number of experts")
        self.num_layers = len(self._blocks)
        self.num_experts = int(first.num_experts)
        self.top_k = int(getattr(self._blocks[0], "top_k", None) or getattr(model.config, "num_experts_per_tok"))
        if not 0 <= self.capacity <= self.num_experts:
            raise ValueError(f"capacity must be in [0, {self.num_experts}], got {capacity}")
        self.device = first.gate_up_proj.device
        self.dtype = first.gate_up_proj.dtype
        gu_shape, down_shape = tuple(first.gate_up_proj.shape[1:]), tuple(first.down_proj.shape[1:])
        self.expert_bytes = (int(np.prod(gu_shape)) + int(np.prod(down_shape))) * first.gate_up_proj.element_size()
        """Bytes of one expert's weights."""
        pin = self.device.type == "cuda" and torch.device(offload_device).type == "cpu"
        self._master = []
        self._released = []
        for b in self._blocks:
            ex = b.experts
            pair = []
            for p in (ex.gate_up_proj, ex.down_proj):
                m = p.detach().to(offload_device, copy=True)
                pair.append(m.pin_memory() if pin else m)
            self._master.append(tuple(pair))
        new = lambda n, shape: torch.empty((n, *shape), device=self.device, dtype=self.dtype)  # noqa: E731
        self._slots = [(new(self.capacity, gu_shape), new(self.capacity, down_shape)) for _ in self._blocks]
        self._slot_of: list[dict[int, int]] = [{} for _ in self._blocks]
        self._staging = (new(self.num_experts, gu_shape), new(self.num_experts, down_shape))
        self._pf = [(new(self.num_experts, gu_shape), new(self.num_experts, down_shape)) for _ in range(2)] if self.prefetch else []
        self._staged: list[dict[int, int]] = [{} for _ in self._blocks]
        self.stats = [LayerStats() for _ in self._blocks]
        """Counters per MoE layer."""
        self.accesses: list[list[int]] = [[] for _ in self._blocks]
        """Per MoE layer, the experts looked up, in the order the policy was consulted."""
        self._steps: list[tuple[int, list[np.ndarray]]] = []
        self._request = 0
        self._previous_impl = model.config._experts_implementation
        if release:
            for b in self._blocks:
                for p in (b.experts.gate_up_proj, b.experts.down_proj):
                    p.data = torch.empty(0, device=self.device, dtype=self.dtype)
            self._released = [b.experts for b in self._blocks]
        for layer in range(self.num_layers):
            self._sync(layer, {})
        for layer, b in enumerate(self._blocks):
            _ATTACHED[b.experts] = (self, layer)
        if model.config._experts_implementation != IMPLEMENTATION:
            model.set_experts_implementation(IMPLEMENTATION)

    # --- requests and routing ---

    def new_request(self) -> None:
        """Starts a new request: the following forwards' tokens belong to it in the routing trace."""
        if self._steps and self._steps[-1][0] == self._request:
            self._request += 1

    def _record(self, layer: int, ids: np.ndarray) -> None:
        if layer == 0 or not self._steps or self._steps[-1][0] != self._request:
            self._steps.append((self._request, []))
        step = self._steps[-1][1]
        if len(step) != layer:
            raise RuntimeError(f"MoE layer {layer} ran out of order (expected layer {len(step)} of the step)")
        step.append(ids)

    def routing_trace(self, model_name: str | None = None) -> RoutingTrace:
        """The recorded routing as a fleetwise routing trace (one request per :meth:`new_request`)."""
        requests: list[list[np.ndarray]] = []
        last = None
        for req, layers in self._steps:
            if len(layers) != self.num_layers:
                raise RuntimeError(f"a step ran {len(layers)} of {self.num_layers} MoE layers")
            tokens = np.stack(layers, axis=1)  # (tokens, layers, top_k)
            if req != last:
                requests.append([])
                last = req
            requests[-1].append(tokens)
        if not requests:
            raise RuntimeError("no routing recorded yet")
        per_request = [np.concatenate(r, axis=0) for r in requests]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in per_request])]).astype(np.int64)
        experts = np.concatenate(per_request, axis=0).astype(np.uint16)
        return RoutingTrace(self.num_layers, self.top_k, self.num_experts, offsets, experts, model_name)

    def write_routing_trace(self, path: str | Path, model_name: str | None = None) -> RoutingTrace:
        """Writes :meth:`routing_trace` to ``path`` (fleetwise's routing trace format)."""
        trace = self.routing_trace(model_name)
        write_routing_trace(path, trace)
        return trace

    # --- counters ---

    def total(self) -> LayerStats:
        """The counters summed over layers."""
        out = LayerStats()
        for s in self.stats:
            out = out.add(s)
        return out

    def summary(self) -> dict:
        """Totals and rates: ``hit_rate`` counts cache and prefetch hits, as the simulator's does."""
        t = self.total()
        looked = t.lookups
        return {
            **{f.name: getattr(t, f.name) for f in fields(t)},
            "hit_rate": (t.hits + t.prefetch_hits) / looked if looked else None,
            "cache_hit_rate": t.hits / looked if looked else None,
            "prefetch_hit_rate": t.prefetch_hits / looked if looked else None,
            "hits_per_layer": [s.hits for s in self.stats],
        }

    def detach(self) -> None:
        """Restores the model's expert parameters and its previous experts implementation."""
        for b in self._blocks:
            _ATTACHED.pop(b.experts, None)
        if self._released:
            for ex, (gu, down) in zip(self._released, self._master):
                ex.gate_up_proj.data = gu.to(self.device, copy=True)
                ex.down_proj.data = down.to(self.device, copy=True)
        self._released = []
        if self._previous_impl != IMPLEMENTATION:
            self.model.set_experts_implementation(self._previous_impl or "eager")

    # --- the layer ---

    def _fetch(self, layer: int, e: int, dst, slot: int) -> None:
        gu, down = self._master[layer]
        dst[0][slot].copy_(gu[e], non_blocking=True)
        dst[1][slot].copy_(down[e], non_blocking=True)

    def _sync(self, layer: int, fetched: dict[int, tuple]) -> None:
        """Brings the cache slots in line with the policy's resident set; ``fetched`` maps experts
        fetched this step to (area, index) to copy from."""
        resident = set(self.policy.resident(layer))
        if len(resident) > self.capacity:
            raise RuntimeError(f"policy keeps {len(resident)} experts of layer {layer} resident; capacity is {self.capacity}")
        slot_of = self._slot_of[layer]
        for e in [e for e in slot_of if e not in resident]:
            del slot_of[e]
        free = sorted(set(range(self.capacity)) - set(slot_of.values()))
        slots = self._slots[layer]
        for e in sorted(resident - slot_of.keys()):
            s = free.pop(0)
            if e in fetched:
                area, i = fetched[e]
                slots[0][s].copy_(area[0][i])
                slots[1][s].copy_(area[1][i])
            else:
                self._fetch(layer, e, slots, s)
                self.stats[layer].fill_bytes += self.expert_bytes
            slot_of[e] = s

    def _prefetch(self, target: int, hidden_states) -> None:
        out = self._blocks[target].gate(hidden_states)
        idx = out[-1] if isinstance(out, tuple) else out.topk(self.top_k, dim=-1).indices
        named = sorted({int(e) for e in idx.reshape(-1).tolist()})
        resident = self.policy.resident(target)
        area = self._pf[target % 2]
        staged: dict[int, int] = {}
        for e in named:
            if e in resident:
                continue
            staged[e] = len(staged)
            self._fetch(target, e, area, staged[e])
            self.stats[target].prefetch_bytes += self.expert_bytes
        self._staged[target] = staged

    def _forward(self, layer: int, module, hidden_states, top_k_index, top_k_weights):
        import torch

        with torch.no_grad():
            ids = top_k_index.detach().to("cpu").numpy().astype(np.int64)
            self._record(layer, ids.copy())
            needed = sorted({int(e) for e in ids.reshape(-1)})
            pol, st = self.policy, self.stats[layer]
            before = pol.resident(layer)
            hits = [e for e in needed if e in before]
            misses = [e for e in needed if e not in before]
            staged, self._staged[layer] = self._staged[layer], {}
            pf_area = self._pf[layer % 2] if self.prefetch else None
            loc: dict[int, tuple] = {}
            slot_of = self._slot_of[layer]
            for e in hits:
                if not pol.access(layer, e):
                    raise RuntimeError(f"policy: expert {e} of layer {layer} is resident but access() reported a miss")
                loc[e] = (self._slots[layer], slot_of[e])
            for j, e in enumerate(misses):
                if pol.access(layer, e):
                    raise RuntimeError(f"policy: expert {e} of layer {layer} is not resident but access() reported a hit")
                if e in staged:
                    st.prefetch_hits += 1
                    loc[e] = (pf_area, staged[e])
                else:
                    st.misses += 1
                    st.demand_bytes += self.expert_bytes
                    self._fetch(layer, e, self._staging, j)
                    loc[e] = (self._staging, j)
                pol.admit(layer, e)
            st.lookups += len(needed)
            st.hits += len(hits)
            st.wasted_prefetch_bytes += self.expert_bytes * sum(1 for e in staged if e not in loc)
            self.accesses[layer].extend(hits + misses)
            if self.prefetch and layer + 1 < self.num_layers:
                self._prefetch(layer + 1, hidden_states)
        out = _compute(module, hidden_states, top_k_index, top_k_weights, needed, lambda e: (loc[e][0][0][loc[e][1]], loc[e][0][1][loc[e][1]]))
        with torch.no_grad():
            self._sync(layer, {e: loc[e] for e in misses})
        return out
