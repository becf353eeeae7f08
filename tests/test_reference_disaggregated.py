"""Differential test of disaggregated vllm clusters: one prefill and one or two decode instances,
serialized or layer-wise KV transfer over slow, shared links, against the SimPy reference — every
request's instance, times and preemptions, and the handoffs, agree exactly."""

from __future__ import annotations

import json

import polars as pl
import pytest

import fleetwise

from reference import simulate_reference
from reference_cases import DISAGG_SEEDS, assert_agreement, assert_exercised, make_disagg_scenario


def test_disaggregated_vllm_matches_simpy_reference():
    """Every disaggregated case (1 prefill + 1-2 decode instances, serialized KV transfer) agrees
    exactly with the reference, which re-implements the handoffs and the max-min fair network.

    The reference replays the core's versioned network wake-ups as SimPy timeouts created in the
    core's push order, so overlapping flows, flows sharing a link with different start times and
    simultaneous events are all allowed here (nothing is restricted). The cases hit handoffs that
    wait for decode room, KV flows that overlap in time (on the shared ``kv_out`` link), requests of
    one output token that finish on the prefill instance, rejections (context, and no decode cache
    able to hold the request), and the core's own KV-transfer times agree with the reference's.
    """
    totals: dict = {"handoff_waits": 0, "overlapping_transfers": 0, "prefill_finished": 0, "handed_off": 0}
    for seed in DISAGG_SEEDS:
        scenario, workload = make_disagg_scenario(seed)
        ref, _ = assert_agreement(f"disaggregated seed {seed}", scenario, workload, totals)
        res = fleetwise.simulate(scenario, workload=workload)
        moved = ref.filter(pl.col("transfer_start_ns").is_not_null())
        core_moved = res.requests.filter(pl.col("status") == "finished").join(moved, on="request_id")
        # The core's kv_transfer_ns: from the first token to the KV's arrival.
        assert (core_moved["kv_transfer_ns"] == core_moved["transfer_end_ns"] - core_moved["first_token_ns"]).all()
        totals["handoff_waits"] += int(ref["handoff_waits"].sum())
        totals["handed_off"] += moved.height
        totals["prefill_finished"] += int(((ref["status"] == "finished") & (ref["instance"] == 0)).sum())
        spans = sorted(zip(moved["transfer_start_ns"].to_list(), moved["transfer_end_ns"].to_list()))
        latest_end = -1
        for start, end in spans:
            totals["overlapping_transfers"] += int(start < latest_end)
            latest_end = max(latest_end, end)
    for key in ("handoff_waits", "overlapping_transfers", "prefill_finished", "handed_off"):
        assert totals[key] > 0, totals
    assert_exercised(totals, len(DISAGG_SEEDS))


def test_layerwise_disaggregation_matches_reference():
    """Layer-wise KV transfer on the same random cases: all layers but the last flow during the
    prefill that completes the prompt, the last layer once the prefill and that flow are done;
    setup latencies of 0, 0.1 ms and 4 ms. The cases hit transfers started during the prefill,
    ones that waited for decode room (sent whole after it) and slow links whose overlapped flow
    outlasts the prefill."""
    totals: dict = {"early": 0, "after_prefill": 0, "uncovered": 0}
    for seed in DISAGG_SEEDS:
        scenario, workload = make_disagg_scenario(seed)
        latency = (0.0, 1e-4, 4e-3)[seed % 3]
        scenario["cluster"]["pools"][0].update(kv_transfer="layerwise", kv_transfer_latency=latency)
        ref, _ = assert_agreement(f"layer-wise seed {seed}", scenario, workload, totals)
        moved = ref.filter(pl.col("transfer_start_ns").is_not_null())
        early = moved.filter(pl.col("transfer_start_ns") < pl.col("first_token_ns"))
        totals["early"] += early.height
        totals["after_prefill"] += moved.height - early.height
        # Much more than the setup latency and one layer left after the prompt: the link was slower.
        totals["uncovered"] += early.filter(pl.col("transfer_end_ns") - pl.col("first_token_ns") > int(2 * latency * 1e9) + 1_000_000).height
    assert all(totals[k] > 0 for k in ("early", "after_prefill", "uncovered")), totals


def test_reference_refuses_other_disaggregated_modes():
    """Non-vllm schedulers in disaggregated pools are not modelled."""
    scenario, workload = make_disagg_scenario(0)
    chunked = json.loads(json.dumps(scenario))
    for pool in chunked["cluster"]["pools"]:
        pool["scheduler"] = {"kind": "sarathi-serve", "max_num_seqs": 8, "token_budget": 256}
    with pytest.raises(ValueError, match="vllm"):
        simulate_reference(chunked, workload)


@pytest.mark.parametrize("kv_transfer", ["serialized", "layerwise"])
def test_speculating_split_clusters_match_reference(kv_transfer):
    """Both pools speculate with a draft (acceptance 1 then 0: one accepted token a step): the
    prefill instance runs each prompt through the draft and sends the draft's KV with the target's
    (layer-wise: with the last layer's); the decode instances speculate from it. Every request's
    times and the transfers agree exactly with the reference."""
    totals: dict = {}
    moved = 0
    for seed in DISAGG_SEEDS[:6]:
        scenario, workload = make_disagg_scenario(seed)
        scenario["models"]["draft"] = {**scenario["models"]["tiny"], "num_layers": 1}
        for gpu in scenario["gpus"].values():  # room for the draft's weights and KV beside the caches sized for the target
            gpu["memory_bytes"] *= 2.5
        for pool in scenario["cluster"]["pools"]:
            pool["speculative"] = {"method": "draft", "draft_model": "draft", "num_speculative_tokens": 2, "acceptance_rate": [1.0, 0.0]}
        scenario["cluster"]["pools"][0]["kv_transfer"] = kv_transfer
        ref, _ = assert_agreement(f"speculating split seed {seed} ({kv_transfer})", scenario, workload, totals)
        moved += ref.filter(pl.col("transfer_start_ns").is_not_null()).height
    assert moved > 0
