"""Weight offloading to host DRAM and flash ("LLM in a flash")."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fleetwise
from fleetwise.workload import Workload

from conftest import run_cli, small_scenario


def _decode(*offload):
    args = ["estimate", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "100", "--json"]
    if offload:
        args += ["--offload", offload[0], *[x for kv in offload[1:] for x in ("--offload-set", kv)]]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    return d, {o["op"]: o for o in d["ops"]}


def test_flash_is_slower_than_dram_by_their_bandwidth_ratio_when_fetch_bound():
    dram, dops = _decode("dram")
    flash, fops = _decode("flash")
    ratio = fops["weight_fetch"]["seconds"] / dops["weight_fetch"]["seconds"]
    # 64 GB/s PCIe against a 6.9 GB/s NVMe drive (plus per-layer latencies).
    assert ratio == pytest.approx(64 / 6.9, rel=0.05)
    assert flash["seconds"] / dram["seconds"] == pytest.approx(64 / 6.9, rel=0.15)
    # Offloading frees HBM: only two staging layers of weights stay resident.
    base, _ = _decode()
    assert dram["memory"]["weights"] < 0.15 * base["memory"]["weights"]


def test_llm_in_a_flash_sparsity_cache_and_chunking():
    full, f = _decode("flash")
    sparse, s = _decode("flash", "ffn_load_fraction=0.1")
    # Attention (4 x 4096^2) + 10% of the FFN (3 x 4096 x 11008) of 32 layers, in bf16.
    per_layer = (4 * 4096 * 4096 + 0.1 * 3 * 4096 * 11008) * 2
    assert s["weight_fetch"]["bytes"] == pytest.approx(32 * per_layer)
    assert sparse["seconds"] < 0.5 * full["seconds"]
    cached, c = _decode("flash", "ffn_load_fraction=0.1", "dram_cache_fraction=0.5")
    assert c["weight_fetch"]["seconds"] == pytest.approx(0.5 * s["weight_fetch"]["seconds"], rel=0.05)
    small, sm = _decode("flash", "ffn_load_fraction=0.1", "read_chunk_kb=4")
    # 32 reads of 4 KiB per 80 us = 1.64 GB/s instead of the drive's 6.9 GB/s.
    assert sm["weight_fetch"]["seconds"] / s["weight_fetch"]["seconds"] == pytest.approx(6.9e9 / (32 * 4096 / 80e-6), rel=0.05)


def test_offloading_trades_decode_speed_for_kv_capacity_in_simulation():
    n = 32
    wl = Workload(arrival_ns=np.zeros(n, dtype=np.int64), prompt_tokens=np.full(n, 500, dtype=np.int64), output_tokens=np.full(n, 30, dtype=np.int64))

    def run(offload):
        sc = small_scenario()
        sc["cluster"]["pools"][0].update(count=1, offload=offload)
        return fleetwise.simulate(sc, workload=wl)

    hbm = run(None)
    half = run({"tier": "dram", "layer_fraction": 0.5})
    assert int(half.instances["num_blocks"][0]) > int(hbm.instances["num_blocks"][0])
    assert half.summary["tpot_s"]["p50"] > hbm.summary["tpot_s"]["p50"]
    assert half.summary["finished"] == n


def test_a_scenario_defines_its_own_drive():
    n = 8
    wl = Workload(arrival_ns=np.zeros(n, dtype=np.int64), prompt_tokens=np.full(n, 200, dtype=np.int64), output_tokens=np.full(n, 20, dtype=np.int64))

    def run(storage, drives):
        sc = small_scenario(storage=drives)
        sc["cluster"]["pools"][0].update(count=1, model="llama-2-7b", offload={"tier": "flash", "storage": storage, "overlap": False})
        return fleetwise.simulate(sc, workload=wl)

    # A drive at a tenth of the catalogue's Gen4 NVMe bandwidth streams the weights ten times slower.
    gen4 = run("nvme-gen4", {})
    slow = run("usb-ssd", {"usb-ssd": {"description": "a USB SSD", "read_bandwidth": 0.69e9, "latency": 80e-6}})
    g, s = (float(r.instances["weight_stall_ns"][0]) for r in (gen4, slow))
    assert s / g == pytest.approx(10.0, rel=0.05)
    with pytest.raises(fleetwise.ConfigError, match=r"storage.*usb-ssd"):
        run("floppy", {"usb-ssd": {"read_bandwidth": 0.69e9}})


def test_sparse_ffn_decode_batches_load_the_union_of_their_neurons():
    one, o = _decode("flash", "ffn_load_fraction=0.05")
    args = ["estimate", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--decode-batch", "8", "--context", "100", "--json",
            "--offload", "flash", "--offload-set", "ffn_load_fraction=0.05"]
    r = run_cli(*args)
    eight = {x["op"]: x for x in json.loads(r.stdout)["ops"]}
    attn, ffn = 4 * 4096 * 4096 * 2, 3 * 4096 * 11008 * 2
    assert o["weight_fetch"]["bytes"] == pytest.approx(32 * (attn + 0.05 * ffn))
    assert eight["weight_fetch"]["bytes"] == pytest.approx(32 * (attn + (1 - 0.95**8) * ffn))
    assert eight["mlp_gate_up"]["flops"] == pytest.approx(8 * o["mlp_gate_up"]["flops"] * (1 - 0.95**8) / 0.05)


def test_offload_errors_are_config_or_capacity_errors():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["offload"] = {"tier": "flash", "storage": "floppy"}
    with pytest.raises(fleetwise.ConfigError, match=r"cluster.pools.0.offload.storage.*nvme-gen4"):
        fleetwise.simulate(sc)
    sc["cluster"]["pools"][0]["offload"] = {"tier": "dram", "capacity_gb": 1}
    with pytest.raises(fleetwise.CapacityError, match="offloaded to Dram"):
        fleetwise.simulate(sc)


@pytest.mark.parametrize("tier,overlap", [("dram", True), ("dram", False), ("flash", True), ("flash", False)])
def test_simulated_streams_match_the_estimate_without_contention(tier, overlap):
    # One request decoding alone: every iteration is one decode, whose time the simulator gets
    # from flows on the host link (and flash drive) and estimate from the same formula.
    wl = Workload(arrival_ns=np.zeros(1, dtype=np.int64), prompt_tokens=np.array([100]), output_tokens=np.array([21]))
    sc = small_scenario()
    off = {"tier": tier, "overlap": overlap, "ffn_load_fraction": 0.2, "layer_fraction": 0.5}
    sc["cluster"]["pools"][0].update(count=1, model="llama-2-7b", offload=off)
    r = fleetwise.simulate(sc, workload=wl, record_iterations=True)
    it = r.iterations.with_columns(d=(r.iterations["end_ns"] - r.iterations["start_ns"]) * 1e-9)
    decode_times = it.filter(it["decode_seqs"] == 1)["d"].to_numpy()
    args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in off.items() if k != "tier"]
    est, _ = _decode(tier, *args)
    # The estimate's context is 100 for all; contexts grow to 120 here: attention is a tiny share.
    assert np.median(decode_times) == pytest.approx(est["seconds"], rel=0.02)
    inst = r.instances.row(0, named=True)
    assert inst["host_link_bytes"] == inst["weight_stream_bytes"] > 0


def test_weight_streams_and_kv_swaps_share_the_host_link():
    from test_swap import _pressure

    sc = _pressure("swap")
    sc["cluster"]["pools"][0]["offload"] = {"tier": "dram", "layer_fraction": 0.25}
    r = fleetwise.simulate(sc)
    inst = r.instances
    assert (inst["swap_bytes"] > 0).all() and (inst["weight_stream_bytes"] > 0).all()
    assert (inst["host_link_bytes"] == inst["swap_bytes"] + inst["weight_stream_bytes"]).all()
    assert r.summary["finished"] == r.summary["requests"]


@pytest.mark.parametrize("tier", ["dram", "flash"])
def test_a_speculating_decode_streams_its_verify_tokens_neurons_then_proposes(tier):
    # EAGLE, 2 draft tokens, nothing accepted: every step verifies 3 tokens, which activate
    # 1 - 0.8^3 of the offloaded FFN neurons (0.2 for one token), and then the head proposes once
    # the stream has arrived. The simulated step equals estimate's step (verify + proposer); it
    # used to stream one token's neurons and hide the proposer, so speculation cost nothing.
    wl = Workload(arrival_ns=np.zeros(1, dtype=np.int64), prompt_tokens=np.array([100]), output_tokens=np.array([21]))
    sc = small_scenario()
    off = {"tier": tier, "ffn_load_fraction": 0.2, "layer_fraction": 0.5}
    spec = {"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.0}
    sc["cluster"]["pools"][0].update(count=1, model="llama-2-7b", offload=off, speculative=spec)
    r = fleetwise.simulate(sc, workload=wl, record_iterations=True)
    it = r.iterations.with_columns(d=(r.iterations["end_ns"] - r.iterations["start_ns"]) * 1e-9)
    step = float(np.median(it.filter(it["decode_seqs"] == 1)["d"].to_numpy()))
    est, _ = _decode(tier, *[f"{k}={v}" for k, v in off.items() if k != "tier"])
    args = ["estimate", "--model", "llama-2-7b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "100", "--json", "--offload", tier,
            *[x for k, v in off.items() if k != "tier" for x in ("--offload-set", f"{k}={v}")], "--speculative", "method=eagle,num_speculative_tokens=2,acceptance_rate=0.0"]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    spec_est = json.loads(res.stdout)["speculative"]
    assert step == pytest.approx(spec_est["step_seconds"], rel=0.02)
    assert step > 1.2 * est["seconds"]  # verifying 3 tokens streams 2.4x the neurons of one
    # The same 20 decode steps without speculation stream one token's neurons each: fewer bytes.
    del sc["cluster"]["pools"][0]["speculative"]
    plain = fleetwise.simulate(sc, workload=wl).instances.row(0, named=True)["weight_stream_bytes"]
    assert r.instances.row(0, named=True)["weight_stream_bytes"] > 1.3 * plain


def test_whole_layer_offload_of_a_moe_model_is_refused():
    # Mixtral's layers are routed experts: streaming "the FFN" streamed one expert's bytes per layer.
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(model="mixtral-8x7b", gpu="gh200", offload={"tier": "dram"})
    with pytest.raises(fleetwise.ConfigError, match=r"cluster.pools.0.offload: mixtral-8x7b has MoE layers.*experts: \{placement: dram\}"):
        fleetwise.simulate(sc)
    r = run_cli("estimate", "--model", "qwen3-30b-a3b", "--gpu", "h100-sxm", "--offload", "dram", "--prefill", "4096")
    assert r.returncode == 2 and "has MoE layers" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_flash_settings_at_dram_are_named_in_a_warning():
    # queue_depth and read_chunk_kb describe the drive: at tier dram they change nothing, silently.
    sc = small_scenario()
    sc["workload"]["requests"] = 20
    sc["cluster"]["pools"][0].update(model="llama-2-7b", offload={"tier": "dram", "queue_depth": 4, "read_chunk_kb": 8})
    with pytest.warns(UserWarning, match=r"cluster.pools.0.offload: queue_depth, read_chunk_kb apply to flash only; with tier: dram it is ignored"):
        fleetwise.simulate(sc)
