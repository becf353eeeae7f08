"""Mixture-of-experts settings of a pool: expert placement, routing, caches, prefetch, grouping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleetwise.config.base import PolicyRef, StrictModel
from fleetwise.config.limits import MAX_COUNT, MAX_TOKENS


class ExpertRoutingConfig(StrictModel):
    """How tokens choose their experts."""

    kind: Literal["uniform", "zipf", "trace"] = "uniform"
    """``uniform``; ``zipf`` (skewed, with its own ranking of the experts in every layer); ``trace``
    (replay a recorded routing trace, see docs/moe.md)."""
    zipf_exponent: float = Field(default=1.0, ge=0, le=100)
    """Zipf exponent s: the expert of rank r is chosen with weight 1 / r^s."""
    locality: float = Field(default=0.0, ge=0, le=1)
    """Temporal locality: probability that a token reuses, in each layer, the experts its request's
    previous token chose there."""
    trace: str | None = None
    """A recorded routing trace (JSONL, docs/moe.md), for ``kind: trace``; relative paths are
    relative to the scenario file."""
    max_sampled_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    """Tokens of one prefill chunk routed one by one; longer chunks route this many, weighted."""
    sampling: Literal["per_token", "per_iteration"] = "per_token"
    """``per_token``: every token's experts drawn layer by layer; ``per_iteration``: per layer and
    iteration, the activated experts and their expected load drawn at once (much cheaper; uniform
    or zipf routing without locality; see docs/moe.md)."""


class ExpertCacheConfig(StrictModel):
    """The HBM cache of offloaded experts, per MoE layer."""

    policy: Literal["lru", "lfu", "static"] | PolicyRef = "lru"
    """Eviction: least recently used, least frequently used, a static hot set (the most popular
    experts of each layer, never evicted), or ``{name, params}``: a policy object
    (``fleetwise.policy.ExpertCachePolicy``, registered name or ``package.module:attr``), one per
    GPU, built as ``factory(num_layers, num_experts, capacity, **params)`` with the GPU's MoE
    layers, experts per layer and cached experts per layer."""
    experts_per_layer: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Experts of each layer kept in HBM (over the whole instance)."""


class ExpertPrefetchConfig(StrictModel):
    """Prefetching the experts a routing predictor names, some layers ahead."""

    accuracy: float = Field(ge=0, le=1)
    """Fraction of the experts a layer uses that the predictor names in time (its other guesses
    are wrong experts, fetched for nothing)."""
    lead_layers: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Layers ahead the prediction is made: 1 is Pre-gated MoE's next-layer gate."""


class TokenGroupingConfig(StrictModel):
    """ExpertFlow-style token grouping: when more requests decode than one iteration takes, run
    those whose experts overlap."""

    batch: int = Field(ge=1, le=MAX_COUNT)
    """Decoding requests per iteration."""
    affinity: bool = True
    """Choose by expert affinity (else by waiting time alone: round robin)."""


class ExpertsConfig(StrictModel):
    """Where a MoE pool's routed experts live and how they are cached, fetched and routed."""

    placement: Literal["hbm", "dram", "flash"] = "hbm"
    """``hbm``: all experts resident; ``dram`` or ``flash``: experts live there and are fetched over
    the GPU's host link (after the drive for flash) unless cached."""
    routing: ExpertRoutingConfig = ExpertRoutingConfig()
    """The routing model."""
    cache: ExpertCacheConfig = ExpertCacheConfig()
    """The HBM expert cache (offloaded placements)."""
    prefetch: ExpertPrefetchConfig | None = None
    """Prefetching from a routing predictor (offloaded placements)."""
    grouping: TokenGroupingConfig | None = None
    """Token grouping across requests."""
    staging_experts: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    """Expert buffers per GPU for fetched experts in flight, at least 1: a fetched expert lands in one
    before it runs (default: one layer's experts on the GPU, times 1 + lead_layers with prefetch)."""
    storage: str = "nvme-gen5"
    """The flash drive (catalogue name), for ``placement: flash``."""
    queue_depth: int = Field(default=32, ge=1, le=MAX_COUNT)
    """Flash reads in flight."""
    read_chunk_kb: float = Field(default=1024.0, ge=0.5, le=1e9)
    """Size of one flash read, KiB, at least a 512-byte sector (experts are large contiguous tensors)."""
    capacity_gb: float | None = Field(default=None, gt=0, le=1e9)
    """Capacity of the DRAM or flash tier per GPU, GB (default: unlimited)."""

    def core_json(self, model, model_name: str, path: str, user_storage: dict | None = None) -> dict:
        """The core's view (its ``ExpertConfig``): these fields with the flash drive looked up
        (``user_storage``: a scenario's own drives beside the catalogue's);
        ``model`` (a ``ModelSpec`` named ``model_name``) must be a mixture of experts.
        The routing trace file travels separately."""
        from fleetwise.catalog import lookup
        from fleetwise.errors import ConfigError

        if not model.num_experts:
            raise ConfigError(f"{path}: expert settings need a mixture-of-experts model; {model_name} has no experts")
        if self.routing.kind == "trace" and not self.routing.trace:
            raise ConfigError(f"{path}.routing.trace: trace routing needs a routing trace file")
        if isinstance(self.cache.policy, PolicyRef) and self.placement == "hbm":
            raise ConfigError(f"{path}.cache.policy: an expert cache policy object needs offloaded experts (placement dram or flash); with placement hbm nothing is cached")
        if self.placement == "hbm":
            unused = [f for f in _OFFLOADED_ONLY if f in self.model_fields_set]
            if unused:
                raise ConfigError(f"{path}.{unused[0]}: applies to offloaded experts (placement dram or flash); with placement hbm every expert "
                                  f"stays in HBM and {', '.join(unused)} would be ignored: remove it or set placement")
        if self.placement == "dram":
            warn_flash_only(path, "placement: dram", [f for f in _FLASH_ONLY if f in self.model_fields_set])
        drive = None
        if self.placement == "flash" or "storage" in self.model_fields_set:
            # A drive named explicitly is looked up with DRAM placement too: a misspelt name is an error.
            drive = lookup("storage", self.storage, user_storage or {}, f"{path}.storage").core_json(self.storage)
        own = self.model_dump(exclude={"routing", "storage"})
        if isinstance(self.cache.policy, PolicyRef):
            own["cache"]["policy"] = "policy"  # the object is plugged in through the bindings; the core expects one
        return {**own, "routing": self.routing.model_dump(exclude={"trace"}), "flash": drive if self.placement == "flash" else None}


_OFFLOADED_ONLY = ("staging_experts", "capacity_gb", "storage", "queue_depth", "read_chunk_kb")
"""``ExpertsConfig`` fields that only offloaded experts read (refused when set with placement hbm)."""

_FLASH_ONLY = ("storage", "queue_depth", "read_chunk_kb")
"""``ExpertsConfig`` fields that only experts on flash read (a warning with placement dram)."""


def warn_flash_only(path: str, where: str, fields: list[str]) -> None:
    """Warns (one line) that ``fields`` of the settings at ``path`` describe the flash drive and do
    nothing at ``where`` (kept silent, a user would think they shaped the run)."""
    if fields:
        import warnings

        verb = "applies" if len(fields) == 1 else "apply"
        warnings.warn(f"{path}: {', '.join(fields)} {verb} to flash only; with {where} it is ignored", stacklevel=2)
