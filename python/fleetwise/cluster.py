"""Resolves a scenario's cluster into the JSON configuration the Rust core reads."""

from __future__ import annotations

from pathlib import Path

from fleetwise.catalog import GpuSpec, ModelSpec, lookup
from fleetwise.catalog.engine import resolve_calibration
from fleetwise.errors import ConfigError
from fleetwise.config.scenario import PoolConfig, Scenario


_POOL_AS_IS = {"name", "count", "parallelism", "power_cap_watts", "prefix_caching", "role", "kv_transfer", "kv_link", "kv_transfer_latency"}
"""The pool fields the core reads exactly as they are written."""


def resolve_pool(scenario: Scenario, index: int, pool: PoolConfig) -> dict:
    """The core's view of pool ``index`` (its ``PoolConfig``): specs looked up, defaults filled in."""
    path = f"cluster.pools.{index}"
    gpu: GpuSpec = lookup("gpu", pool.gpu, scenario.gpus, f"{path}.gpu")
    model: ModelSpec = lookup("model", pool.model, scenario.models, f"{path}.model")
    base_dir = Path(scenario._base_dir) if scenario._base_dir else None
    pool.quantization.check_model(model, pool.model, f"{path}.quantization")
    calibration = resolve_calibration(pool.gpu, gpu, scenario.cluster.engine_of(pool), pool.calibration, base_dir)
    if pool.speculative is not None and pool.speculative.method == "ngram":
        calibration = ngram_synchronous(calibration)
    gpu_json = gpu.core_json(pool.gpu)
    if pool.dvfs_exponent is not None:
        gpu_json["dvfs_exponent"] = pool.dvfs_exponent
    return {
        **pool.model_dump(include=_POOL_AS_IS),
        "gpu": gpu_json,
        "model": model.core_json(pool.model),
        "calibration": calibration.model_dump(),
        "memory": pool.memory.model_dump(),
        "scheduler": pool.scheduler.core_json(model),
        "pim": None if pool.pim is None else lookup("pim", pool.pim, scenario.pims, f"{path}.pim").core_json(pool.pim),
        "offload": None if pool.offload is None else pool.offload.core_json(f"{path}.offload", scenario.storage),
        "quantization": pool.quantization.core_json(),
        "speculative": None if pool.speculative is None else _speculative_json(scenario, path, pool, model, gpu, calibration),
        "experts": None if pool.experts is None else pool.experts.core_json(model, pool.model, f"{path}.experts", scenario.storage),
    }


def ngram_synchronous(calibration):
    """``calibration`` as an engine runs a CPU n-gram proposer: vLLM turns asynchronous scheduling
    off for it (its lookup needs the step's sampled tokens before the next step is scheduled), so
    the CPU step adds to the GPU time instead of overlapping it."""
    return calibration.model_copy(update={"cpu_overlap": None}) if calibration.cpu_overlap else calibration


def _speculative_json(scenario: Scenario, path: str, pool: PoolConfig, model: ModelSpec, gpu: GpuSpec, calibration) -> dict:
    """The core's view of pool ``path``'s ``speculative``: the draft model resolved and checked."""
    from fleetwise.config.speculative import resolve_speculative
    from fleetwise.cost import cost_model

    def weight_bytes(m: ModelSpec, name: str) -> int:
        return cost_model(m, gpu, calibration=calibration, model_name=name, gpu_name=pool.gpu).weight_bytes()

    return resolve_speculative(pool.speculative, f"{path}.speculative", model, pool.model, scenario.models, weight_bytes)


def offload_json(o, path: str, user_storage: dict | None = None) -> dict:
    """The core's view of an ``OffloadConfig`` (``OffloadConfig.core_json``); ``user_storage``
    holds user-defined drives beside the catalogue's."""
    return o.core_json(path, user_storage)


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
    """Price per GPU-hour of each pool's GPUs, by pool name: the pool's ``price_per_hour``, else its GPU's."""
    return {p.name: pool_price(scenario, p) for p in scenario.cluster.pools}


def pool_price(scenario: Scenario, pool: PoolConfig, path: str = "") -> float:
    """Price of one of ``pool``'s GPUs per hour: the pool's own ``price_per_hour``, else the GPU's."""
    if pool.price_per_hour is not None:
        return pool.price_per_hour
    return lookup("gpu", pool.gpu, scenario.gpus, path).price_per_hour


def scheduler_json(sched, model: ModelSpec) -> dict:
    """The core's view of a scheduler config, defaults resolved against ``model`` (its ``core_json``)."""
    return sched.core_json(model)


def core_config(scenario: Scenario, record_iterations: bool = False, hash_block_tokens: int | None = None) -> dict:
    """The whole core configuration for ``scenario``."""
    return {
        "seed": scenario.seed,
        "pools": [resolve_pool(scenario, i, p) for i, p in enumerate(scenario.cluster.pools)],
        # A policy router replaces this one through the bindings; the core still needs a valid config.
        "router": scenario.cluster.router.model_dump() if scenario.cluster.router.kind != "policy" else {"kind": "round-robin"},
        "record_iterations": record_iterations,
        "hash_block_tokens": hash_block_tokens,
        "mixed_pool": None if scenario.cluster.mixed_pool is None else scenario.cluster.mixed_pool.model_dump(),
    }


def uses_prefixes(scenario: Scenario) -> bool:
    """Whether the core needs the workload's prefix hashes (prefix caching or prefix-aware routing)."""
    return any(p.prefix_caching for p in scenario.cluster.pools) or scenario.cluster.router.kind in ("prefix-affinity", "policy")
