"""Differential test: the Rust core against the independent SimPy reference model.

Randomized small clusters (1-3 instances, round-robin and least-outstanding-tokens routers, small
``max_num_seqs`` and token budgets, some with a KV cache of only a few hundred blocks) replay
workloads with duplicate timestamps, requests placed exactly at iteration end times, and requests
that must be rejected; every request's instance, status, first-token time, completion time and
preemption count must agree exactly, and so must the time an iteration first included it (the scheduling delay). Each batch scheduler has its own cases: ``vllm``,
``sarathi-serve`` (token budgets 32-512), ``sarathi`` (chunk sizes 32-512) and ``orca`` (both
reservation modes, a few sequences at most).
Disaggregated cases: tests/test_reference_disaggregated.py; the cases themselves: tests/reference_cases.py.
Some vllm and disaggregated cases quantize (FP8 W8A8 with an FP8 KV cache; INT4 weights with an FP8 cache).
"""


from __future__ import annotations

import json

import polars as pl
import pytest

import fleetwise
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from reference import simulate_reference
from reference.schedulers import memory_limits, orca_reserve_tokens
from reference_cases import BATCH_KINDS, BATCH_SEEDS, COLUMNS, SEEDS, TINY_MODEL, assert_agreement, assert_exercised, make_batch_scenario, make_scenario


def test_core_matches_simpy_reference():
    """Every vllm case agrees exactly, and the cases exercise preemption, rejection and ties."""
    totals: dict = {}
    for seed in SEEDS:
        scenario, workload, _ = make_scenario(seed)
        assert_agreement(f"vllm seed {seed}", scenario, workload, totals)
    assert totals["preemptions"] > 0, totals
    assert_exercised(totals, len(SEEDS))


def test_sliding_window_model_matches_simpy_reference():
    """With a 64-token attention window (attention and KV blocks bounded by it) the core and the
    reference still agree exactly, and the window changes the outcome."""
    totals: dict = {}
    changed = 0
    for seed in SEEDS[:4]:
        scenario, workload, _ = make_scenario(seed)
        windowed = {**scenario, "models": {"tiny": {**TINY_MODEL, "sliding_window": 64}}}
        ref, _ = assert_agreement(f"windowed seed {seed}", windowed, workload, totals)
        full = simulate_reference(scenario, workload, details=True)
        changed += int(not ref.select(COLUMNS).equals(full.select(COLUMNS)))
    assert changed > 0


@pytest.mark.parametrize("kind", ["sarathi-serve", "sarathi"])
def test_chunked_schedulers_match_simpy_reference(kind):
    """Every chunked-prefill case agrees exactly; the cases preempt, split prefills into several
    chunks, and run decodes beside prefill chunks."""
    totals: dict = {"split_requests": 0, "mixed_iterations": 0}
    for seed in BATCH_SEEDS:
        scenario, workload, _ = make_batch_scenario(kind, seed)
        ref, iterations = assert_agreement(f"{kind} seed {seed}", scenario, workload, totals)
        totals["split_requests"] += int((ref["split_chunks"] > 0).sum())
        totals["mixed_iterations"] += iterations.filter(
            (pl.col("prefill_tokens") > 0) & (pl.col("decode_seqs") > 0)).height
    assert totals["preemptions"] > 0, totals
    assert totals["split_requests"] > 0, totals
    assert totals["mixed_iterations"] > 0, totals
    assert_exercised(totals, len(BATCH_SEEDS))


@pytest.mark.parametrize("reserve", ["max-len", "oracle"])
def test_orca_matches_simpy_reference(reserve):
    """Every Orca case agrees exactly; requests wait at the queue front for a reservation while
    fewer than max_num_seqs run, whole prompts share iterations with decodes, nothing is preempted."""
    totals: dict = {"reservation_waits": 0, "blocked_iterations": 0, "mixed_iterations": 0}
    for seed in BATCH_SEEDS:
        scenario, workload, _ = make_batch_scenario(f"orca-{reserve}", seed)
        ref, iterations = assert_agreement(f"orca {reserve} seed {seed}", scenario, workload, totals)
        totals["reservation_waits"] += int(ref["reservation_waits"].sum())
        # The core's side of the same fact: requests left waiting below the sequence limit.
        config = core_config(fleetwise.scenario_from_dict(scenario))
        seqs = [p["scheduler"]["max_num_seqs"] for p in config["pools"] for _ in range(p["count"])]
        limit = pl.Series([seqs[i] for i in iterations["instance"].to_list()], dtype=pl.UInt32)
        totals["blocked_iterations"] += iterations.filter(
            (pl.col("waiting") > 0) & (pl.col("running") < limit)).height
        totals["mixed_iterations"] += iterations.filter(
            (pl.col("prefill_tokens") > 0) & (pl.col("decode_seqs") > 0)).height
    assert totals["preemptions"] == 0, totals
    assert totals["reservation_waits"] > 0, totals
    assert totals["blocked_iterations"] > 0, totals
    assert totals["mixed_iterations"] > 0, totals
    assert_exercised(totals, len(BATCH_SEEDS))


def scheduler_cases():
    """Every case of every scheduler, as ``(label, scenario, facts)``."""
    for seed in SEEDS:
        scenario, _, facts = make_scenario(seed)
        yield f"vllm seed {seed}", scenario, facts
    for kind in BATCH_KINDS:
        for seed in BATCH_SEEDS:
            scenario, _, facts = make_batch_scenario(kind, seed)
            yield f"{kind} seed {seed}", scenario, facts


def test_tiny_gpu_has_a_few_hundred_blocks():
    """The tiny-KV cases really have a small cache (so preemption is forced, not lucky), and Orca's
    max-len cases still fit at least one whole-context reservation (or nothing could ever run)."""
    for label, scenario, facts in scheduler_cases():
        if not facts["tiny_kv"]:
            continue
        for pool in core_config(fleetwise.scenario_from_dict(scenario))["pools"]:
            cost = cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], tp=pool["parallelism"]["tp"], quantization=pool["quantization"])
            tokens, seqs = memory_limits(pool["scheduler"], pool["model"]["max_position_embeddings"])
            plan = cost.memory_plan(json.dumps(pool["memory"]), tokens, seqs)
            assert 20 <= plan["num_blocks"] <= 450, (label, plan)
            reserve = orca_reserve_tokens(pool["scheduler"], pool["model"]["max_position_embeddings"]) if pool["scheduler"]["kind"] == "orca" else None
            if reserve is not None:
                blocks = -(-reserve // plan["block_size"])
                assert blocks + int(plan["num_blocks"] * 0.01) <= plan["num_blocks"], (label, plan)


def test_reference_refuses_random_router():
    """The random router draws from the core's RNG, which the reference does not model."""
    scenario, workload, _ = make_scenario(2)
    scenario["cluster"]["router"] = {"kind": "random"}
    with pytest.raises(ValueError, match="random"):
        simulate_reference(scenario, workload)
