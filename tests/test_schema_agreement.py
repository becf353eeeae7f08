"""Python's schema and the core's serde structs agree field for field: the JSON ``core_config``
builds for a scenario equals what the core reads from it and writes back (``_core.resolve_config``),
so no field is dropped, renamed, or defaulted on the Rust side behind Python's back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fleetwise
from fleetwise import _core
from fleetwise.cluster import core_config

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))

_WORKLOAD = {"requests": 10, "arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "lognormal", "prompt_median": 64, "prompt_sigma": 0.5, "prompt_max": 512, "output_median": 8, "output_sigma": 0.5, "output_max": 64}}


def _scenario(*pools: dict, router: dict | None = None) -> dict:
    cluster: dict = {"pools": [{"gpu": "h100-sxm", "model": "llama-3-8b", **p} for p in pools]}
    if router is not None:
        cluster["router"] = router
    return {"cluster": cluster, "workload": _WORKLOAD}


_MOE = {"model": "mixtral-8x7b", "parallelism": {"tp": 2}}

CASES = {
    **{f"scheduler-{s['kind']}": _scenario({"scheduler": s}) for s in (
        {"kind": "vllm"},
        {"kind": "vllm", "max_num_batched_tokens": 4096, "preemption_mode": "swap", "swap_space_gb": 2.5},
        {"kind": "vllm-v1", "max_prefill_chunk": 256, "reserve_full_prompt": False},
        {"kind": "sarathi-serve", "token_budget": 256},
        {"kind": "sarathi", "chunk_size": 128},
        {"kind": "orca"},
        {"kind": "batchllm"},
        {"kind": "policy", "name": "fcfs"},
    )},
    "scheduler-orca-oracle": _scenario({"scheduler": {"kind": "orca", "reserve": "oracle"}}),
    **{f"router-{r}": _scenario({"count": 2}, router={"kind": r}) for r in ("round-robin", "least-outstanding-tokens", "prefix-affinity", "random")},
    "router-policy": _scenario({"count": 2}, router={"kind": "policy", "name": "round-robin"}),
    "roles-layerwise-nvlink": _scenario({"name": "p", "role": "prefill", "kv_transfer": "layerwise", "kv_link": "nvlink"}, {"name": "d", "role": "decode"}),
    "mixed-pool": {**_scenario({"name": "p", "role": "prefill"}, {"name": "d", "role": "decode", "count": 2}),
                   "cluster": {**_scenario({"name": "p", "role": "prefill"}, {"name": "d", "role": "decode", "count": 2})["cluster"],
                               "mixed_pool": {"prompt_overload_tokens": 8192, "token_overload_tokens": 100000}}},
    "parallelism": _scenario({"parallelism": {"tp": 2, "pp": 2, "microbatches": 3, "gpus_per_node": 4}}),
    "parallelism-async-pipeline": _scenario({"parallelism": {"tp": 2, "pp": 2, "pipeline": "async"}}),
    "parallelism-sync-pipeline": _scenario({"parallelism": {"tp": 1, "pp": 2, "pipeline": "sync"}}),
    "memory-calibration-power": _scenario({"memory": {"gpu_memory_utilization": 0.8, "block_size": 32}, "calibration": {"gemm_compute": 0.6, "attention_cta": 0.5, "prefill_pad_tokens": 64}, "power_cap_watts": 500, "dvfs_exponent": 2.5, "kv_transfer_latency": 2e-3}),
    "prefix-caching": _scenario({"prefix_caching": True}),
    "offload-dram": _scenario({"offload": {"tier": "dram", "layer_fraction": 0.5}}),
    "offload-flash": _scenario({"offload": {"tier": "flash", "dram_cache_fraction": 0.2, "capacity_gb": 100, "overlap": False}}),
    "pim": _scenario({"pim": "attacc-hbm3-pim"}),
    "experts-hbm": _scenario({**_MOE, "parallelism": {"tp": 2, "ep": 2}, "experts": {}}),
    "experts-dram": _scenario({**_MOE, "experts": {"placement": "dram", "routing": {"kind": "zipf", "zipf_exponent": 1.2, "locality": 0.3}, "cache": {"policy": "lfu", "experts_per_layer": 4},
                                                   "prefetch": {"accuracy": 0.8, "lead_layers": 2}, "grouping": {"batch": 8}, "staging_experts": 2}}),
    "experts-per-iteration": _scenario({**_MOE, "experts": {"placement": "dram", "routing": {"kind": "zipf", "sampling": "per_iteration"}, "cache": {"experts_per_layer": 2}}}),
    "experts-cache-policy-object": _scenario({**_MOE, "experts": {"placement": "dram", "cache": {"policy": {"name": "lru"}, "experts_per_layer": 2}}}),
    "experts-flash": _scenario({**_MOE, "experts": {"placement": "flash", "capacity_gb": 50, "storage": "nvme-gen4"}}),
    "mla-dense-layers": _scenario({"model": "deepseek-v2-lite", "experts": {}}),
    "quantization-int4-kv-fp8": _scenario({"quantization": {"weights": "int4", "group_size": 64, "kv_cache": "fp8"}}),
    "quantization-w8a8": _scenario({"quantization": {"weights": "fp8", "activations": "fp8"}}),
    "speculative-draft": _scenario({"model": "llama-3-70b", "parallelism": {"tp": 4}, "speculative": {"method": "draft", "draft_model": "llama-3-8b", "num_speculative_tokens": 4, "acceptance_rate": 0.8}}),
    "speculative-eagle-per-position": _scenario({"speculative": {"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": [0.9, 0.7, 0.5]}}),
    "speculative-eagle3-vocab": _scenario({"speculative": {"method": "eagle3", "num_speculative_tokens": 2, "acceptance_rate": 0.7, "draft_vocab_size": 16000}}),
    "speculative-dynamic": _scenario({"speculative": {"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.7, "num_speculative_tokens_per_batch_size": [[1, 16, 3], [17, 64, 1], [65, 4096, 0]]}}),
    "speculative-ngram": _scenario({"speculative": {"method": "ngram", "num_speculative_tokens": 4, "acceptance_rate": 0.6, "proposal_rate": 0.4}}),
}


def _differences(ours, core, path: str = "") -> list[str]:
    """Where ``ours`` (Python's JSON) and ``core`` (serde's round trip) differ, one line each."""
    if isinstance(ours, dict) and isinstance(core, dict):
        out = []
        for k in sorted(set(ours) | set(core)):
            if k not in ours:
                out.append(f"{path}.{k}: filled in by the core ({core[k]!r})")
            elif k not in core:
                out.append(f"{path}.{k}: dropped by the core")
            else:
                out += _differences(ours[k], core[k], f"{path}.{k}")
        return out
    if isinstance(ours, list) and isinstance(core, list) and len(ours) == len(core):
        return [d for i, (a, b) in enumerate(zip(ours, core)) for d in _differences(a, b, f"{path}.{i}")]
    return [] if ours == core else [f"{path}: {ours!r} != {core!r}"]


def _assert_round_trips(config: dict) -> None:
    text = json.dumps(config)
    assert _differences(json.loads(text), json.loads(_core.resolve_config(text))) == []


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenarios_round_trip(path: Path) -> None:
    """Every scenario in scenarios/ resolves to exactly the JSON the core reads."""
    _assert_round_trips(core_config(fleetwise.load_scenario(path)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_representative_scenarios_round_trip(name: str) -> None:
    """Every scheduler, router, role, offload tier, PIM, expert setting and power cap round-trips."""
    _assert_round_trips(core_config(fleetwise.scenario_from_dict(CASES[name]), record_iterations=True, hash_block_tokens=16))


def test_resolve_config_refuses_unknown_fields() -> None:
    """A field the core does not know is an error, not silently dropped."""
    config = core_config(fleetwise.scenario_from_dict(CASES["scheduler-vllm"]))
    config["pools"][0]["not_a_field"] = 1
    with pytest.raises(fleetwise.ConfigError):
        _core.resolve_config(json.dumps(config))


_NOT_ONE_TO_ONE = {
    ("pool", "prefix_cache_policy"): "a Python policy object, handed to the bindings rather than the core's config",
    ("pool", "engine"): "an engine profile (name or file), resolved with the GPU's hardware fractions into the pool's `calibration`",
    ("pool", "dvfs_exponent"): "an override of the GPU's `dvfs_exponent`, sent inside the pool's `gpu`",
    ("pool", "price_per_hour"): "a price, read in Python only (the run's cost, `place` and `designs` budgets); the core prices nothing",
    ("offload", "storage"): "a catalogue name, sent looked up as `flash` (the drive's FlashSpec)",
    ("experts", "storage"): "a catalogue name, sent looked up as `flash` (the drive's FlashSpec)",
    ("policy", "kind"): "a Python policy object: the core runs vLLM v1's loop (kind `vllm-v1`) within its limits",
    ("policy", "name"): "a Python policy object, found by name in Python",
    ("policy", "params"): "a Python policy object's constructor arguments",
}
"""The scenario fields that do not cross into serde under their own name, and why (what is left of
the renaming between the two schemas). Besides these, Python still resolves two defaults against
the model before the JSON leaves: vLLM's ``max_num_batched_tokens`` (``vllm_default_batched_tokens``,
which the emulated engine shares) and a pool's calibration (the GPU's hardware fractions x the engine profile, with the pool's overrides)."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_scenario_fields_cross_under_their_own_names(name: str) -> None:
    """Each pool's, scheduler's, memory's, offload's and experts' fields reach the core under the name
    (and value, for the scenario's own settings) the scenario gives them, but for ``_NOT_ONE_TO_ONE``."""
    scenario = fleetwise.scenario_from_dict(CASES[name])
    config = core_config(scenario)
    for pool, core in zip(scenario.cluster.pools, config["pools"]):
        sections = [("pool", pool, core)] + [(s, getattr(pool, s), core[s]) for s in ("scheduler", "memory", "offload", "experts") if getattr(pool, s) is not None]
        for section, ours, theirs in sections:
            kind = ours.kind if section == "scheduler" else section
            for field, value in ours.model_dump().items():
                if (kind, field) in _NOT_ONE_TO_ONE or (section, field) in _NOT_ONE_TO_ONE:
                    continue
                assert field in theirs, f"{name}: {section}.{field} does not reach the core under its own name"
                if section != "pool" and not isinstance(value, dict) and value is not None:
                    assert theirs[field] == value, f"{name}: {section}.{field} is {value!r} in the scenario but {theirs[field]!r} in the core's config"
