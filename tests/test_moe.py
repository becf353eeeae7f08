"""Mixture-of-experts models: expert costs, expert parallelism, PIM co-processing of experts."""

from __future__ import annotations

import json

import pytest

import fleetwise

from conftest import run_cli, small_scenario


def _est(model, *args):
    r = run_cli("estimate", "--model", model, "--gpu", "h100-sxm", "--engine", "fleetwise-torch", *args, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    return d, {o["op"]: o for o in d["ops"]}


def test_decode_cost_follows_active_not_total_parameters():
    # Mixtral-8x7B has 46.7 B parameters, 12.9 B active per token: one decode reads about the
    # active weights, so it costs about as much as a 13 B dense model, not a 47 B one.
    mix, ops = _est("mixtral-8x7b", "--tp", "2", "--decode-batch", "1", "--context", "100")
    l13, _ = _est("llama-2-13b", "--tp", "2", "--decode-batch", "1", "--context", "100")
    assert mix["seconds"] == pytest.approx(l13["seconds"], rel=0.25)
    # 64 decodes touch all 8 experts: the expert bytes grow ~4x while the tokens grow 64x.
    _, ops64 = _est("mixtral-8x7b", "--tp", "2", "--decode-batch", "64", "--context", "100")
    ratio = ops64["moe_experts"]["bytes"] / ops["moe_experts"]["bytes"]
    assert 3.9 < ratio < 4.2


def test_expert_parallelism_replaces_the_ffn_all_reduce_with_all_to_alls():
    tp, tops = _est("mixtral-8x7b", "--tp", "2", "--decode-batch", "64", "--context", "500")
    ep, eops = _est("mixtral-8x7b", "--tp", "2", "--ep", "2", "--decode-batch", "64", "--context", "500")
    assert "all_to_all" in eops and "all_to_all" not in tops
    assert eops["all_reduce"]["seconds"] == pytest.approx(tops["all_reduce"]["seconds"] / 2)
    assert ep["memory"]["weights"] == pytest.approx(tp["memory"]["weights"], rel=0.01)


def test_experts_of_small_batches_move_to_a_logic_pim():
    # Duplex: with few tokens per expert, expert GEMMs have low Op/B and run better in memory.
    _, ops = _est("mixtral-8x7b", "--tp", "2", "--decode-batch", "4", "--context", "500", "--pim", "logic-pim")
    assert ops["moe_experts"]["on_pim"]
    _, big = _est("mixtral-8x7b", "--tp", "2", "--prefill", "4096", "--pim", "logic-pim")
    assert not big["moe_experts"]["on_pim"]


def test_moe_models_simulate_with_tp_and_ep():
    for par in ({"tp": 2}, {"tp": 2, "ep": 2}):
        sc = small_scenario()
        sc["cluster"]["pools"][0].update(model="mixtral-8x7b", parallelism=par, count=1)
        sc["workload"].update(requests=100, lengths={"kind": "constant", "prompt": 400, "output": 50})
        r = fleetwise.simulate(sc)
        assert r.summary["finished"] == 100


def test_bad_ep_is_a_config_error():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["parallelism"] = {"tp": 1, "ep": 2}
    with pytest.raises(fleetwise.ConfigError, match=r"cluster.pools.0.parallelism.ep.*dense"):
        fleetwise.simulate(sc)
