"""Resolves a scenario's cluster into the JSON configuration the Rust core reads."""

from __future__ import annotations

from pathlib import Path

from fleetwise.catalog import GpuSpec, ModelSpec, lookup
from fleetwise.errors import ConfigError
from fleetwise.config.scenario import PoolConfig, Scenario, VllmV1Scheduler


def resolve_pool(scenario: Scenario, index: int, pool: PoolConfig) -> dict:
    """The core's view of pool ``index``: specs looked up, defaults filled in."""
    path = f"cluster.pools.{index}"
    gpu: GpuSpec = lookup("gpu", pool.gpu, scenario.gpus, f"{path}.gpu")
    model: ModelSpec = lookup("model", pool.model, scenario.models, f"{path}.model")
    calibration = gpu.calibration if pool.calibration is None else pool.calibration.apply(gpu.calibration)
    sched = pool.scheduler
    return {
        "name": pool.name,
        "count": pool.count,
        "gpu": gpu.core_json(pool.gpu),
        "model": model.core_json(pool.model),
        "tp": pool.parallelism.tp,
        "pp": pool.parallelism.pp,
        "microbatches": pool.parallelism.microbatches,
        "gpus_per_node": pool.parallelism.gpus_per_node,
        "ep": pool.parallelism.ep,
        "calibration": calibration.model_dump(),
        "memory": pool.memory.model_dump(),
        "scheduler": scheduler_json(sched, model),
        "power_cap_watts": pool.power_cap_watts,
        "pim": None if pool.pim is None else lookup("pim", pool.pim, scenario.pims, f"{path}.pim").core_json(pool.pim),
        "offload": None if pool.offload is None else offload_json(pool.offload, f"{path}.offload"),
        "experts": None if pool.experts is None else experts_json(pool.experts, model, pool.model, f"{path}.experts"),
        "prefix_caching": pool.prefix_caching,
        "role": pool.role,
        "kv_transfer": pool.kv_transfer,
        "kv_link": pool.kv_link,
    }


def offload_json(o, path: str) -> dict:
    """The core's view of an ``OffloadConfig``."""
    default_gb = 256.0 if o.tier == "dram" else 3840.0
    flash = lookup("storage", o.storage, {}, f"{path}.storage").core_json(o.storage) if o.tier == "flash" else None
    return {
        "tier": o.tier,
        "layer_fraction": o.layer_fraction,
        "ffn_load_fraction": o.ffn_load_fraction,
        "dram_cache_fraction": o.dram_cache_fraction,
        "overlap": o.overlap,
        "flash": flash,
        "queue_depth": o.queue_depth,
        "read_chunk_bytes": int(o.read_chunk_kb * 1024),
        "capacity_bytes": int((o.capacity_gb or default_gb) * 1e9),
    }


def experts_json(x, model: ModelSpec, name: str, path: str) -> dict:
    """The core's view of an ``ExpertsConfig`` (the routing trace file travels separately)."""
    if not model.num_experts:
        raise ConfigError(f"{path}: expert settings need a mixture-of-experts model; {name} has no experts")
    if x.routing.kind == "trace" and not x.routing.trace:
        raise ConfigError(f"{path}.routing.trace: trace routing needs a routing trace file")
    return {
        "placement": x.placement,
        "routing": {"kind": x.routing.kind, "zipf_exponent": x.routing.zipf_exponent, "locality": x.routing.locality, "max_sampled_tokens": x.routing.max_sampled_tokens},
        "cache": x.cache.model_dump(),
        "prefetch": None if x.prefetch is None else x.prefetch.model_dump(),
        "grouping": None if x.grouping is None else x.grouping.model_dump(),
        "staging_experts": x.staging_experts,
        "flash": lookup("storage", x.storage, {}, f"{path}.storage").core_json(x.storage) if x.placement == "flash" else None,
        "queue_depth": x.queue_depth,
        "read_chunk_bytes": int(x.read_chunk_kb * 1024),
        "capacity_bytes": int(x.capacity_gb * 1e9) if x.capacity_gb is not None else 2**64 - 1,
    }


def routing_trace_path(scenario: Scenario, base_dir: Path | None) -> Path | None:
    """The one routing trace the scenario's pools replay, if any (resolved against ``base_dir``)."""
    paths = {p.experts.routing.trace for p in scenario.cluster.pools if p.experts is not None and p.experts.routing.kind == "trace"}
    if not paths:
        return None
    if len(paths) > 1:
        raise ConfigError(f"cluster.pools: pools replay different routing traces ({', '.join(sorted(paths))}); a run replays one")
    path = Path(paths.pop())
    return path if path.is_absolute() or base_dir is None else base_dir / path


def pool_prices(scenario: Scenario) -> dict[str, float]:
    """Price per GPU-hour of each pool's GPU, by pool name."""
    return {p.name: lookup("gpu", p.gpu, scenario.gpus, "").price_per_hour for p in scenario.cluster.pools}


def scheduler_json(sched, model: ModelSpec) -> dict:
    """The core's view of a scheduler config, defaults resolved against ``model``."""
    if sched.kind == "vllm":
        return {
            "kind": "vllm",
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.batched_tokens(model.max_position_embeddings),
            "preemption_mode": sched.preemption_mode,
            "swap_space_bytes": int(sched.swap_space_gb * (1 << 30)),
        }
    if sched.kind == "policy":
        # The core runs vLLM v1's loop; the plan comes from the policy object, within these limits.
        return VllmV1Scheduler(max_num_seqs=sched.max_num_seqs, max_num_batched_tokens=sched.max_num_batched_tokens, reserve_full_prompt=True).model_dump()
    if sched.kind == "orca":
        reserve = model.max_position_embeddings if sched.reserve == "max-len" else None
        return {"kind": "orca", "max_num_seqs": sched.max_num_seqs, "reserve_tokens": reserve}
    return sched.model_dump()


def core_config(scenario: Scenario, record_iterations: bool = False, hash_block_tokens: int | None = None) -> dict:
    """The whole core configuration for ``scenario``."""
    return {
        "seed": scenario.seed,
        "pools": [resolve_pool(scenario, i, p) for i, p in enumerate(scenario.cluster.pools)],
        # A policy router replaces this one through the bindings; the core still needs a valid config.
        "router": scenario.cluster.router.model_dump() if scenario.cluster.router.kind != "policy" else {"kind": "round-robin"},
        "record_iterations": record_iterations,
        "hash_block_tokens": hash_block_tokens,
    }


def uses_prefixes(scenario: Scenario) -> bool:
    """Whether the core needs the workload's prefix hashes (prefix caching or prefix-aware routing)."""
    return any(p.prefix_caching for p in scenario.cluster.pools) or scenario.cluster.router.kind in ("prefix-affinity", "policy")
