"""The randomized cases the differential tests replay on the Rust core and the SimPy reference
(tests/reference/), and how a case's results are compared: small vllm, chunked (sarathi-serve,
sarathi), Orca and disaggregated clusters with tied arrivals, arrivals at iteration ends, tiny KV
caches and rejections. Used by tests/test_reference*.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import fleetwise
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from reference import simulate_reference
from reference.schedulers import memory_limits
from fleetwise.workload import Workload, build_workload


COLUMNS = ["request_id", "instance", "status", "first_scheduled_ns", "first_token_ns", "completion_ns", "preemptions"]
SEEDS = range(16)
BATCH_SEEDS = range(24)  # cases per chunked scheduler (sarathi-serve, sarathi) and Orca mode

# A small Llama-shaped model: cheap iterations whose cost still varies with the batch.
TINY_MODEL = {
    "num_layers": 4,
    "hidden_size": 512,
    "num_heads": 8,
    "num_kv_heads": 8,
    "head_dim": 64,
    "intermediate_size": 1408,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
H100_LIKE = {
    "peak_flops": 989.4e12,
    "fp8_peak_flops": 1979e12,
    "memory_bandwidth": 3.35e12,
    "link_bandwidth": 450.0e9,
    "calibration": {
        "gemm_compute": 0.78,
        "attention_compute": 0.55,
        "memory": 0.80,
        "collective": 0.75,
        "iteration_overhead": 1.5e-3,
    },
}


QUANTIZED = {
    2: {"quantization": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"}},
    3: {"quantization": {"weights": "int4", "group_size": 64, "kv_cache": "fp8"}},
}
"""Pool settings of the quantized cases, by case kind (vllm cases: seed % 4)."""


def gpu_memory_for_blocks(model: dict, pool: dict, blocks: int) -> int:
    """GPU memory (at utilisation 1.0) that leaves exactly ``blocks`` KV blocks for ``pool``."""
    cost = cost_model({**model, "name": "m"}, {**pool["gpu"], "memory_bytes": 10**12}, calibration=pool["calibration"], tp=pool["parallelism"]["tp"],
                      quantization=pool.get("quantization"))
    tokens, seqs = memory_limits(pool["scheduler"], pool["model"]["max_position_embeddings"])
    weights = -(-cost.weight_bytes() // pool["parallelism"]["tp"])
    block_bytes = cost.kv_bytes_per_token() * pool["memory"]["block_size"]
    return weights + cost.activation_bytes(tokens, min(seqs, tokens)) + blocks * block_bytes + block_bytes // 2


def make_scenario(seed: int) -> tuple[dict, Workload, dict]:
    """A random small scenario, its workload, and facts about the case for the assertions."""
    rng = np.random.default_rng(1000 + seed)
    tiny_kv = seed % 3 != 2
    instances = int(rng.integers(1, 4))
    two_pools = instances >= 2 and seed % 4 == 1
    max_tokens = int(rng.choice([256, 512, 1024, 2048]))
    block_size = int(rng.choice([8, 16, 32]))
    pools = []
    counts = [1, instances - 1] if two_pools else [instances]
    for p, count in enumerate(counts):
        pools.append({
            "name": f"pool{p}",
            "count": count,
            "gpu": "small-gpu" if tiny_kv else "h100-sxm",
            "model": "tiny",
            "scheduler": {"kind": "vllm", "max_num_seqs": int(rng.integers(2, 17)),
                          "max_num_batched_tokens": max_tokens if p == 0 else max_tokens * 2},
            "memory": {"gpu_memory_utilization": 1.0 if tiny_kv else 0.9, "block_size": block_size},
            **QUANTIZED.get(seed % 4, {}),
        })
    scenario = {
        "name": f"reference-{seed}",
        "seed": seed,
        "models": {"tiny": TINY_MODEL},
        "gpus": {"small-gpu": {**H100_LIKE, "memory_bytes": 80e9}},
        "cluster": {"pools": pools,
                    "router": {"kind": "round-robin" if seed % 2 == 0 else "least-outstanding-tokens"}},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": float(rng.choice([50.0, 200.0, 800.0]))},
            "lengths": {"kind": "uniform", "prompt_min": 8, "prompt_max": min(400, max_tokens),
                        "output_min": 1, "output_max": 300},
            "requests": int(rng.integers(80, 200)),
        },
    }
    # Tiny caches hold 800-3000 tokens: a few hundred blocks, far less than max_num_seqs requests
    # of a few hundred tokens each need, so running requests get preempted.
    target_blocks = int(rng.integers(800, 3000)) // block_size
    if tiny_kv:
        # Size the GPU so that the first pool's KV cache holds about `target_blocks` blocks.
        config = core_config(fleetwise.scenario_from_dict(scenario))
        memory = gpu_memory_for_blocks(TINY_MODEL, config["pools"][0], target_blocks)
        scenario["gpus"]["small-gpu"]["memory_bytes"] = float(memory)

    sc = fleetwise.scenario_from_dict(scenario)
    base = build_workload(sc.workload, sc.seed)
    arrival = base.arrival_ns.copy()
    prompt = base.prompt_tokens.copy()
    output = base.output_tokens.copy()
    if seed % 2 == 1:
        # Coarse timestamps: many requests share an arrival instant.
        arrival = (arrival // 20_000_000) * 20_000_000
    # A burst at time 0 and another later one.
    arrival[:4] = 0
    burst = len(arrival) // 2
    arrival[burst:burst + 5] = arrival[burst]
    # Requests that every instance must reject: context, token budget, and (tiny KV) cache size.
    prompt[5], output[5] = 100, TINY_MODEL["max_position_embeddings"]
    prompt[7], output[7] = max_tokens + 1, 10
    if tiny_kv:
        prompt[9], output[9] = 50, min(block_size * (target_blocks + 10), 4000)
    workload = Workload(arrival_ns=arrival, prompt_tokens=prompt, output_tokens=output)
    workload = pin_to_iteration_ends(sc, workload, rng, count=3)
    return scenario, workload, {"tiny_kv": tiny_kv}


# Orca's max-len mode reserves the model's whole context per request: a 1024-token context keeps
# a few reservations inside a small cache.
SHORT_CONTEXT_MODEL = {**TINY_MODEL, "max_position_embeddings": 1024}
BATCH_KINDS = ["sarathi-serve", "sarathi", "orca-max-len", "orca-oracle"]


def make_batch_scenario(kind: str, seed: int) -> tuple[dict, Workload, dict]:
    """A random small scenario for one of ``BATCH_KINDS`` (Orca with its reservation mode), its
    workload, and facts about the case for the assertions."""
    rng = np.random.default_rng(2000 + 1000 * BATCH_KINDS.index(kind) + seed)
    orca = kind.startswith("orca")
    model = SHORT_CONTEXT_MODEL if kind == "orca-max-len" else TINY_MODEL
    tiny_kv = seed % 5 != 4
    instances = int(rng.integers(1, 4))
    two_pools = instances >= 2 and seed % 4 == 1
    block_size = int(rng.choice([8, 16, 32]))
    pools, sizes = [], []
    counts = [1, instances - 1] if two_pools else [instances]
    for p, count in enumerate(counts):
        seqs = int(rng.integers(2, 7)) if orca else int(rng.integers(2, 17))
        size = int(rng.choice([32, 64, 128, 256, 512]))
        sizes.append(size)
        if kind == "sarathi-serve":
            sched = {"kind": kind, "max_num_seqs": seqs, "token_budget": size}
        elif kind == "sarathi":
            sched = {"kind": kind, "max_num_seqs": seqs, "chunk_size": size}
        else:
            sched = {"kind": "orca", "max_num_seqs": seqs, "reserve": kind.removeprefix("orca-")}
        pools.append({
            "name": f"pool{p}",
            "count": count,
            "gpu": "small-gpu" if tiny_kv else "h100-sxm",
            "model": "tiny",
            "scheduler": sched,
            "memory": {"gpu_memory_utilization": 1.0 if tiny_kv else 0.9, "block_size": block_size},
        })
    scenario = {
        "name": f"reference-{kind}-{seed}",
        "seed": seed,
        "models": {"tiny": model},
        "gpus": {"small-gpu": {**H100_LIKE, "memory_bytes": 80e9}},
        "cluster": {"pools": pools,
                    "router": {"kind": "round-robin" if seed % 2 == 0 else "least-outstanding-tokens"}},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": float(rng.choice([50.0, 200.0, 800.0]))},
            "lengths": {"kind": "uniform", "prompt_min": 8, "prompt_max": 400, "output_min": 1, "output_max": 300},
            "requests": int(rng.integers(80, 200)),
        },
    }
    # Tiny caches hold 800-3000 tokens (Orca max-len: 1100-3200, one to three 1024-token
    # reservations), so running requests get preempted and Orca admissions wait for reservations.
    target_tokens = int(rng.integers(1100, 3200)) if kind == "orca-max-len" else int(rng.integers(800, 3000))
    target_blocks = target_tokens // block_size
    if tiny_kv:
        config = core_config(fleetwise.scenario_from_dict(scenario))
        memory = max(gpu_memory_for_blocks(model, pool, target_blocks) for pool in config["pools"])
        scenario["gpus"]["small-gpu"]["memory_bytes"] = float(memory)

    sc = fleetwise.scenario_from_dict(scenario)
    base = build_workload(sc.workload, sc.seed)
    arrival = base.arrival_ns.copy()
    prompt = base.prompt_tokens.copy()
    output = base.output_tokens.copy()
    if seed % 2 == 1:
        arrival = (arrival // 20_000_000) * 20_000_000  # many requests share an arrival instant
    arrival[:4] = 0
    burst = len(arrival) // 2
    arrival[burst:burst + 5] = arrival[burst]
    # Rejected everywhere: over the context, and (tiny KV) more blocks than the cache holds.
    prompt[5], output[5] = 100, model["max_position_embeddings"]
    if tiny_kv:
        prompt[9], output[9] = 50, min(block_size * (target_blocks + 10), 4000)
    if not orca:
        # A prompt several chunks long, which still fits the cache.
        prompt[7], output[7] = min(3 * max(sizes) + 5, target_tokens // 2), 10
    workload = Workload(arrival_ns=arrival, prompt_tokens=prompt, output_tokens=output)
    workload = pin_to_iteration_ends(sc, workload, rng, count=3)
    return scenario, workload, {"tiny_kv": tiny_kv}


def pin_to_iteration_ends(sc, workload: Workload, rng, count: int) -> Workload:
    """Adds ``count`` requests, each arriving exactly when an iteration of the core ends.

    They are added in time order, each after the previous one: a request at time T changes nothing
    before T, so every iteration end chosen earlier stays an iteration end.
    """
    arrival, prompt, output = (np.asarray(a).copy() for a in
                               (workload.arrival_ns, workload.prompt_tokens, workload.output_tokens))
    after = 0
    for _ in range(count):
        ends = fleetwise.simulate(sc, workload=Workload(arrival, prompt, output), record_iterations=True)
        ends = np.unique(ends.iterations["end_ns"].to_numpy().astype(np.int64))
        ends = ends[ends > after]
        if len(ends) == 0:
            break
        t = int(ends[int(rng.integers(0, min(len(ends), 200)))])
        at = int(np.searchsorted(arrival, t, side="right"))
        arrival = np.insert(arrival, at, t)
        prompt = np.insert(prompt, at, int(rng.integers(8, 64)))
        output = np.insert(output, at, int(rng.integers(1, 50)))
        after = t
    return Workload(arrival_ns=arrival, prompt_tokens=prompt, output_tokens=output)


def core_frame(scenario: dict, workload: Workload) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The core's per-request columns (preemptions null for rejected, as the reference has them)
    and its iteration log."""
    res = fleetwise.simulate(scenario, workload=workload, record_iterations=True)
    req = res.requests.select(COLUMNS)
    rejected = req.filter(pl.col("status") == "rejected")
    assert rejected["preemptions"].fill_null(0).eq(0).all()
    req = req.with_columns(
        pl.when(pl.col("status") == "finished").then(pl.col("preemptions")).otherwise(None).alias("preemptions")
    )
    return req, res.iterations


def assert_agreement(label: str, scenario: dict, workload: Workload, totals: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Runs the core and the reference on one case, fails on any difference, and adds the case's
    preemptions, rejections, tied arrivals and arrivals at iteration ends to ``totals``. Returns
    the reference's frame (with its details) and the core's iteration log."""
    core, iterations = core_frame(scenario, workload)
    ref = simulate_reference(scenario, workload, details=True)
    assert ref.columns[:len(COLUMNS)] == COLUMNS
    if not ref.select(COLUMNS).equals(core):
        diff = ref.select(COLUMNS).join(core, on="request_id", suffix="_core").filter(
            pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_core")) for c in COLUMNS[1:])
        )
        pytest.fail(f"{label}: core and reference differ on {diff.height} requests:\n{diff.head(5)}")
    ends = iterations["end_ns"].to_numpy().astype(np.int64)
    arrivals = workload.arrival_ns
    for key, count in (
        ("preemptions", int(ref["preemptions"].sum() or 0)),
        ("rejected", int((ref["status"] == "rejected").sum())),
        ("tied_arrivals", int(np.sum(np.diff(arrivals) == 0))),
        ("arrivals_at_iteration_end", int(np.isin(arrivals, ends).sum())),
    ):
        totals[key] = totals.get(key, 0) + count
    return ref, iterations


def assert_exercised(totals: dict, cases: int) -> None:
    """The cases hit rejection, tied arrivals and arrivals at iteration ends."""
    assert totals["rejected"] > 0, totals
    assert totals["tied_arrivals"] > 0, totals
    assert totals["arrivals_at_iteration_end"] >= cases, totals




DISAGG_SEEDS = range(12)


def make_disagg_scenario(seed: int) -> tuple[dict, Workload]:
    """A random small disaggregated vllm case: one prefill instance and one or two decode
    instances whose small KV caches make handoffs wait, with slow NICs (0.3-5 GB/s per GPU, or
    NVLink) so that KV flows of a few MB take about an iteration and overlap one another."""
    rng = np.random.default_rng(5000 + seed)
    decoders = int(rng.integers(1, 3))
    block_size = int(rng.choice([8, 16, 32]))
    max_tokens = int(rng.choice([512, 1024, 2048]))
    nic = lambda: float(rng.choice([0.3e9, 1e9, 5e9]))  # noqa: E731
    gpus = {
        "pgpu": {**H100_LIKE, "memory_bytes": 80e9, "nic_bandwidth": nic(), "nic_latency": float(rng.choice([0.0, 2e-6, 1e-4]))},
        "dgpu": {**H100_LIKE, "memory_bytes": 80e9, "nic_bandwidth": nic(), "nic_latency": 5e-6},
    }
    if seed % 4 == 3:
        del gpus["pgpu"]["nic_bandwidth"]  # no NIC: max(host link, NVLink) with the host-link latency
    pools = []
    for name, role, count in (("prefill", "prefill", 1), ("decode", "decode", decoders)):
        pools.append({
            "name": name, "count": count, "gpu": "pgpu" if role == "prefill" else "dgpu", "model": "tiny",
            "role": role,
            **({"kv_transfer": "serialized", "kv_link": "nvlink" if seed % 6 == 5 else "nic"} if role == "prefill" else {}),
            "scheduler": {"kind": "vllm", "max_num_seqs": int(rng.integers(2, 17)), "max_num_batched_tokens": max_tokens},
            "memory": {"gpu_memory_utilization": 1.0, "block_size": block_size},
            **QUANTIZED.get(3 if seed % 3 == 1 else -1, {}),
        })
    scenario = {
        "name": f"reference-disagg-{seed}",
        "seed": seed,
        "models": {"tiny": TINY_MODEL},
        "gpus": gpus,
        "cluster": {"pools": pools,
                    "router": {"kind": "round-robin" if seed % 2 == 0 else "least-outstanding-tokens"}},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": float(rng.choice([100.0, 400.0, 1500.0]))},
            "lengths": {"kind": "uniform", "prompt_min": 8, "prompt_max": 400, "output_min": 1, "output_max": 120},
            "requests": int(rng.integers(80, 160)),
        },
    }
    # Decode caches of 600-2500 tokens (a few requests each): handoffs wait for room.
    config = core_config(fleetwise.scenario_from_dict(scenario))
    d_blocks = int(rng.integers(600, 2500)) // block_size
    p_blocks = int(rng.integers(1500, 4000)) // block_size
    gpus["dgpu"]["memory_bytes"] = float(gpu_memory_for_blocks(TINY_MODEL, config["pools"][1], d_blocks))
    gpus["pgpu"]["memory_bytes"] = float(gpu_memory_for_blocks(TINY_MODEL, config["pools"][0], p_blocks))

    sc = fleetwise.scenario_from_dict(scenario)
    base = build_workload(sc.workload, sc.seed)
    arrival, prompt, output = base.arrival_ns.copy(), base.prompt_tokens.copy(), base.output_tokens.copy()
    if seed % 2 == 1:
        arrival = (arrival // 5_000_000) * 5_000_000  # many requests share an arrival instant
    arrival[:4] = 0
    output[2::7] = 1  # finished on the prefill instance, never handed off
    prompt[5], output[5] = 100, TINY_MODEL["max_position_embeddings"]  # over the context
    prompt[9], output[9] = 50, min(block_size * (d_blocks + 10), 4000)  # no decode cache holds it
    workload = Workload(arrival_ns=arrival, prompt_tokens=prompt, output_tokens=output)
    return scenario, pin_to_iteration_ends(sc, workload, rng, count=2)


