"""Differential test of asynchronous pipeline parallelism: the Rust core against the SimPy
reference (tests/reference/pipeline.py) on randomized small clusters whose instances have 2-4
pipeline stages, with every batch scheduler the reference pipelines (vllm, sarathi-serve,
sarathi) and with a pipelined decode pool behind a prefill pool (DistServe's TP x PP decode
instances). Every request's instance, status, scheduling, first-token and completion times and
preemptions must agree exactly, and the cases must keep several batches in flight and leave
bubbles too."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fleetwise
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from reference.schedulers import memory_limits
from reference_cases import assert_agreement, make_batch_scenario, make_disagg_scenario, make_scenario

SEEDS = range(10)


def _blocks(pool: dict, memory_bytes: float, pp: int) -> int:
    """KV blocks of one GPU of ``pool`` (a ``core_config`` pool) with ``memory_bytes`` of memory
    and ``pp`` stages (0 if the model does not fit)."""
    cost = cost_model(pool["model"], {**pool["gpu"], "memory_bytes": int(memory_bytes)}, calibration=pool["calibration"], tp=1, pp=pp,
                      quantization=pool.get("quantization"))
    tokens, seqs = memory_limits(pool["scheduler"], pool["model"]["max_position_embeddings"])
    try:
        return int(cost.memory_plan(json.dumps(pool["memory"]), tokens, seqs)["num_blocks"])
    except Exception:
        return 0


def keep_blocks(scenario: dict, pp: int) -> None:
    """Shrinks each GPU of the scenario's own catalogue so that, with ``pp`` stages (less weight
    and KV per token on each GPU), the first pool on it keeps the few KV blocks it had without
    pipelining: the tiny caches still preempt."""
    pools = core_config(fleetwise.scenario_from_dict(scenario))["pools"]
    for name, gpu in scenario.get("gpus", {}).items():
        pool = next((p for p, q in zip(pools, scenario["cluster"]["pools"]) if q["gpu"] == name), None)
        if pool is None:
            continue
        want = _blocks(pool, gpu["memory_bytes"], 1)
        lo, hi = 1.0, float(gpu["memory_bytes"])
        while hi - lo > 1.0:  # the least memory holding `want` blocks with pp stages
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if _blocks(pool, mid, pp) >= want else (mid, hi)
        gpu["memory_bytes"] = float(int(hi) + 1)


def pipelined(scenario: dict, seed: int, pools=None) -> dict:
    """``scenario`` with 2-4 asynchronous pipeline stages on the chosen pools (default all), the
    GPUs of its own catalogue shrunk to keep their KV blocks (``keep_blocks``).

    The CPU step per batch (stage 1) is cut to 0-20 us, so that the stages' times are of the same
    order (the tiny model's layers take microseconds, its LM head on the last stage ~10 us) and
    batches wait for a later stage still busy with the one before: the recurrence's ``max`` binds.
    """
    pp = 2 + seed % 3
    if pools is None:
        keep_blocks(scenario, pp)
    for i, pool in enumerate(scenario["cluster"]["pools"]):
        if pools is None or i in pools:
            pool["parallelism"] = {"tp": 1, "pp": pp}
            pool["calibration"] = {"iteration_overhead": (0.0, 5e-6, 2e-5)[seed % 3]}
    return scenario


def overlap_counts(iterations) -> tuple[int, int]:
    """(batches that started before the previous batch of their instance ended, batches that
    started after it ended: a pipeline with nothing else in flight)."""
    overlapped = idle = 0
    for _, group in iterations.group_by("instance", maintain_order=True):
        start = group["start_ns"].to_numpy().astype(np.int64)
        end = group["end_ns"].to_numpy().astype(np.int64)
        overlapped += int(np.sum(start[1:] < end[:-1]))
        idle += int(np.sum(start[1:] >= np.maximum.accumulate(end)[:-1]))
    return overlapped, idle


def test_pipelined_vllm_matches_simpy_reference():
    """vllm cases (tiny KV caches that preempt, rejections, ties, arrivals at batch ends) on 2-4
    stages agree exactly; batches overlap in flight and some start on an empty pipeline."""
    totals: dict = {"overlapped": 0, "idle": 0}
    for seed in SEEDS:
        scenario, workload, _ = make_scenario(seed)
        _, iterations = assert_agreement(f"pipelined vllm seed {seed}", pipelined(scenario, seed), workload, totals)
        o, i = overlap_counts(iterations)
        totals["overlapped"] += o
        totals["idle"] += i
    assert totals["overlapped"] > 100 and totals["idle"] > 0 and totals["preemptions"] > 0, totals


@pytest.mark.parametrize("kind", ["sarathi-serve", "sarathi"])
def test_pipelined_chunked_schedulers_match_simpy_reference(kind):
    totals: dict = {}
    for seed in range(6):
        scenario, workload, _ = make_batch_scenario(kind, seed)
        assert_agreement(f"pipelined {kind} seed {seed}", pipelined(scenario, seed), workload, totals)
    assert totals["rejected"] > 0, totals


def test_pipelined_decode_pool_matches_simpy_reference():
    """DistServe's placement in miniature: a prefill instance hands off to pipelined decode
    instances (serialized KV transfer; layer-wise for odd seeds, the prefill pool pipelined too)."""
    totals: dict = {}
    for seed in range(6):
        scenario, workload = make_disagg_scenario(seed)
        if seed % 2:
            scenario["cluster"]["pools"][0]["kv_transfer"] = "layerwise"
        assert_agreement(f"pipelined disaggregated seed {seed}", pipelined(scenario, seed, pools=None if seed % 2 else [1]), workload, totals)
    assert totals["rejected"] > 0, totals
