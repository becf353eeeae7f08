"""Tensor and pipeline parallelism from the scenario and the CLI."""

from __future__ import annotations

import json

import pytest

import fleetwise

from conftest import run_cli, small_scenario


def _estimate(*args):
    r = run_cli("estimate", "--model", "llama-2-70b", "--gpu", "a100-80gb-sxm", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_pipeline_splits_weights_and_kv_per_gpu():
    tp4 = _estimate("--tp", "4", "--decode-batch", "8", "--context", "100")
    pp = _estimate("--tp", "2", "--pp", "2", "--decode-batch", "8", "--context", "100")
    # Same GPU count: weights per GPU are about equal (a stage also holds an embedding table).
    assert pp["memory"]["weights"] == pytest.approx(tp4["memory"]["weights"], rel=0.02)
    assert pp["memory"]["kv_cache"] == tp4["memory"]["kv_cache"]


def test_more_microbatches_shrink_the_bubble_for_compute_bound_batches():
    # A long prefill is compute-bound: splitting it in more micro-batches costs no extra weight
    # reads that matter and shortens the bubble (p - 1) / (m + p - 1).
    m4 = _estimate("--pp", "4", "--microbatches", "4", "--prefill", "4096", "--tp", "1")
    m16 = _estimate("--pp", "4", "--microbatches", "16", "--prefill", "4096", "--tp", "1")
    assert m16["seconds"] < m4["seconds"]
    # For decodes (memory-bound) micro-batching only adds bubble slots and weight reads.
    d1 = _estimate("--pp", "4", "--microbatches", "1", "--decode-batch", "2", "--context", "100", "--tp", "1")
    d4 = _estimate("--pp", "4", "--microbatches", "4", "--decode-batch", "2", "--context", "100", "--tp", "1")
    assert d4["seconds"] > d1["seconds"]
    # A batch has at most one micro-batch per token: one decode under 4 or 4,096 micro-batches is one
    # decode through the 4 stages, as with 1 (it was charged as 4,096 fractions: 1,900x slower).
    one = [_estimate("--pp", "4", "--microbatches", str(m), "--decode-batch", "1", "--context", "100", "--tp", "1")["seconds"] for m in (1, 4, 4096)]
    assert one[0] == one[1] == one[2]
    two = [_estimate("--pp", "4", "--microbatches", str(m), "--decode-batch", "2", "--context", "100", "--tp", "1")["seconds"] for m in (2, 4096)]
    assert two[0] == two[1] == d4["seconds"]


def test_pipeline_instance_simulates_and_counts_its_gpus():
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(model="llama-2-70b", gpu="a100-80gb-sxm", parallelism={"tp": 2, "pp": 2}, count=1)
    sc["workload"].update(requests=80, lengths={"kind": "constant", "prompt": 500, "output": 40})
    sc["workload"]["arrivals"]["rate"] = 2.0
    r = fleetwise.simulate(sc)
    assert r.summary["finished"] == 80
    assert r.instances["gpus"].to_list() == [4]
    assert r.summary["cost"]["gpu_hours"] == pytest.approx(4 * r.requests["completion_ns"].max() * 1e-9 / 3600)


def test_bad_pp_is_a_config_error_with_path():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["parallelism"] = {"pp": 64}
    with pytest.raises(fleetwise.ConfigError, match=r"cluster.pools.0.parallelism.pp"):
        fleetwise.simulate(sc)


def test_instance_spanning_two_nodes_pays_for_the_nic():
    def run(tp, per_node):
        sc = small_scenario()
        sc["cluster"]["pools"][0].update(model="llama-3-70b", gpu="h100-sxm", count=1, parallelism={"tp": tp, "gpus_per_node": per_node})
        sc["workload"].update(requests=60, lengths={"kind": "constant", "prompt": 300, "output": 60})
        return fleetwise.simulate(sc)

    one_node = run(8, 8)
    two_nodes = run(8, 4)
    assert one_node.instances["nodes"].to_list() == [1] and two_nodes.instances["nodes"].to_list() == [2]
    # Same GPUs and batches; only the all-reduce ring now crosses 50 GB/s NICs instead of NVLink.
    assert two_nodes.summary["tpot_s"]["p50"] > 1.2 * one_node.summary["tpot_s"]["p50"]
