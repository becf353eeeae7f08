"""The four long-context deployment effects of Fu (2024), "Challenges in Deploying Long-Context
Transformers", reproduced on its running example: a 34B model (Yi-34B-200K) with 50K-token
contexts on A100-80GB NVLink GPUs (scenarios/long-context.yaml, docs/long-context.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fleetwise
from fleetwise.cost import cost_model

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "long-context.yaml"
MODEL, GPU, LONG, SHORT = "yi-34b-200k", "a100-80gb-sxm", 50_000, 4_000


def _tokens_of_kv(tp: int, batched_tokens: int = 65_536) -> int:
    plan = cost_model(MODEL, GPU, tp=tp).memory_plan(json.dumps({"gpu_memory_utilization": 0.9, "block_size": 16}), batched_tokens, 64)
    return plan["num_blocks"] * plan["block_size"]


def test_prefilling_long_inputs_costs_superlinear_time_and_linear_memory():
    cm = cost_model(MODEL, GPU, tp=4)
    long, short = cm.iteration_seconds([(LONG, 0, True)], []), cm.iteration_seconds([(SHORT, 0, True)], [])
    assert long / short > LONG / SHORT * 1.5, "attention makes a 12.5x longer prompt cost far more than 12.5x"
    assert long > 10.0, "a 50K prompt takes seconds of four A100s"
    assert cm.activation_bytes(LONG, 1) / cm.activation_bytes(SHORT, 1) == pytest.approx(LONG / SHORT, rel=0.01)


def test_kv_cache_caps_concurrent_users():
    # 60 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 245,760 bytes per token: 12.3 GB per user.
    assert cost_model(MODEL, GPU, tp=1).kv_bytes_per_token() == 60 * 8 * 128 * 2 * 2
    assert _tokens_of_kv(tp=1, batched_tokens=8192) < LONG, "one A100 cannot hold a single 50K user beside the 69 GB of weights"
    users = _tokens_of_kv(tp=4) // LONG
    assert 14 <= users <= 18
    assert _tokens_of_kv(tp=4) // SHORT >= 12 * users


def test_decoding_is_bound_by_reading_the_kv_cache():
    cm = cost_model(MODEL, GPU, tp=4)
    kv_bytes = 16 * LONG * cm.kv_bytes_per_token()
    assert kv_bytes > 2.5 * cm.weight_bytes_per_gpu(), "16 users' KV is far more than the weights each step reads"
    long, short = cm.iteration_seconds([], [LONG] * 16), cm.iteration_seconds([], [SHORT] * 16)
    # The bytes a step reads grow 3.1x from 4K to 50K contexts; the step's fixed costs (launches,
    # the CPU step) dilute that, but most of a 50K step is reading the KV cache.
    assert long / short > 2.0
    assert (long - cm.iteration_seconds([], [1] * 16)) / long > 0.6
    # Each step streams the KV at about HBM speed: at least bytes / peak bandwidth (the A100's
    # split-key attention rate reaches the datasheet's peak under the vllm profile; the 1-token
    # baseline's own cache read makes the difference fall short of it by a hair).
    assert long - cm.iteration_seconds([], [1] * 16) >= 0.999 * (16 * (LONG - 1) * cm.kv_bytes_per_token()) / 2.039e12


def test_swapping_kv_to_dram_is_a_context_switch_over_the_host_link():
    r = fleetwise.simulate(SCENARIO)
    inst = r.instances.row(0, named=True)
    assert r.summary["finished"] == r.summary["requests"] == 24
    assert inst["peak_kv_blocks"] <= inst["num_blocks"]
    assert inst["preemptions"] >= 1 and inst["swap_out_blocks"] == inst["swap_in_blocks"] > 0
    per_block = 16 * inst["kv_bytes_per_token"]
    assert inst["swap_bytes"] == (inst["swap_out_blocks"] + inst["swap_in_blocks"]) * per_block
    # Waiting on the swaps: every byte over the 32 GB/s host link (plus its microseconds of latency).
    assert inst["swap_wait_ns"] * 1e-9 == pytest.approx(inst["swap_bytes"] / 32e9, rel=0.01)
    # A 50K user's KV on one GPU (3.1 GB) takes ~0.1 s each way.
    assert 0.09 < LONG * inst["kv_bytes_per_token"] / 32e9 < 0.11
