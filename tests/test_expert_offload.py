"""Expert offloading, expert caches, prefetching, routing traces, token grouping and the MoE scenarios."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

import fleetwise
from fleetwise.errors import CapacityError, ConfigError, TraceError
from fleetwise.moe import RoutingTrace, cache_hits, load_routing_trace, write_routing_trace

from conftest import REPO, run_cli

ZIPF = {"kind": "zipf", "zipf_exponent": 0.8, "locality": 0.3}


def _scenario(name: str) -> dict:
    return yaml.safe_load((REPO / "scenarios" / f"{name}.yaml").read_text())


def _with_experts(sc: dict, experts: dict | None = None, **pool) -> dict:
    sc = copy.deepcopy(sc)
    if experts is not None:
        sc["cluster"]["pools"][0]["experts"] = experts
    sc["cluster"]["pools"][0].update(pool)
    return sc


# Hit-rate arithmetic on hand-made sequences, through the same Rust policies the simulator runs.

def test_lru_lfu_static_hits_by_hand():
    # LRU, 2 slots: 0 m, 1 m, 0 h, 2 m (evicts 1), 1 m (evicts 0), 2 h, 0 m.
    assert cache_hits("lru", 4, 2, [0, 1, 0, 2, 1, 2, 0]) == 2
    # Frequency beats recency: LFU keeps the thrice-used 0 through the scan of 1 and 2.
    assert cache_hits("lfu", 4, 2, [0, 0, 0, 1, 2, 0]) == 3
    assert cache_hits("lru", 4, 2, [0, 0, 0, 1, 2, 0]) == 2
    # Static: the two most popular experts (1 and 2) hit every time, nothing else ever does.
    assert cache_hits("static", 4, 2, [0, 1, 2, 3, 1, 0, 2, 2], popularity=[0.1, 0.5, 0.3, 0.1]) == 5
    assert cache_hits("lru", 8, 0, [1, 1, 1]) == 0
    with pytest.raises(ConfigError, match=r"accesses\[1\] = 9"):
        cache_hits("lru", 8, 2, [1, 9])
    with pytest.raises(ConfigError, match="policy"):
        cache_hits("fifo", 8, 2, [1])


# Routing traces: format, errors, replay.

def _trace(tokens_per_request: list[int], layers: int, k: int, experts_of) -> RoutingTrace:
    rows = [[experts_of(r, t, layer) for layer in range(layers)] for r, n in enumerate(tokens_per_request) for t in range(n)]
    offsets = np.concatenate([[0], np.cumsum(tokens_per_request)])
    return RoutingTrace(layers, k, 8, offsets, np.asarray(rows, dtype=np.uint16).reshape(-1, layers, k), "mixtral-8x7b")


def test_routing_trace_round_trip_and_line_numbered_errors(tmp_path):
    t = _trace([3, 2], 32, 2, lambda r, tok, layer: [(r + layer) % 8, (r + layer + 1) % 8])
    p = tmp_path / "routing.jsonl"
    write_routing_trace(p, t)
    back = load_routing_trace(p)
    assert back.num_requests == 2 and back.model == "mixtral-8x7b"
    assert np.array_equal(back.experts, t.experts) and list(back.offsets) == [0, 3, 5]
    lines = p.read_text().splitlines()
    bad = json.loads(lines[4])
    bad["experts"][3] = [1, 1]
    lines[4] = json.dumps(bad)
    p.write_text("\n".join(lines))
    with pytest.raises(TraceError, match=r"routing.jsonl:5: layer 3: needs 2 distinct expert ids"):
        load_routing_trace(p)
    p.write_text('{"fleetwise_routing": 1, "num_layers": 2, "top_k": 1, "num_experts": 4}\n{"request": 0, "token": 1, "experts": [[0], [1]]}\n')
    with pytest.raises(TraceError, match=r":2: request 0: expected token 0, got 1"):
        load_routing_trace(p)


def _replay_scenario(tmp_path, trace: RoutingTrace, cache: int, prefetch: dict | None = None) -> dict:
    p = tmp_path / "routing.jsonl"
    write_routing_trace(p, trace)
    return {
        "name": "replay", "seed": 1,
        "cluster": {"pools": [{"gpu": "h200", "model": "mixtral-8x7b", "scheduler": {"kind": "vllm", "max_num_seqs": 1},
                               "experts": {"placement": "dram", "routing": {"kind": "trace", "trace": str(p)}, "cache": {"policy": "lru", "experts_per_layer": cache}, "prefetch": prefetch}}]},
        "workload": {"arrivals": {"kind": "poisson", "rate": 0.01}, "lengths": {"kind": "constant", "prompt": 4, "output": 6}, "requests": 3},
    }


def test_trace_replay_hit_rate_is_exact(tmp_path):
    # Every token of every request uses experts 0 and 1 in every layer: with 2 cached experts per
    # layer only the first iteration misses (32 layers x 2), every later lookup hits.
    t = _trace([10], 32, 2, lambda r, tok, layer: [0, 1])
    r = fleetwise.simulate(_replay_scenario(tmp_path, t, cache=2))
    inst = r.instances.row(0, named=True)
    iterations = 3 * 6  # one prefill and 5 decodes per request, one request at a time
    assert inst["expert_iterations"] == iterations
    assert inst["expert_lookups"] == iterations * 32 * 2
    assert inst["expert_misses"] == 64
    assert inst["expert_hit_rate"] == pytest.approx(1 - 64 / (iterations * 64))
    # Alternating pairs {0,1}, {2,3} per token with a 2-expert LRU: every decode misses both.
    alt = _trace([10], 32, 2, lambda r, tok, layer: [0, 1] if tok % 2 == 0 else [2, 3])
    r = fleetwise.simulate(_replay_scenario(tmp_path, alt, cache=2))
    inst = r.instances.row(0, named=True)
    # Per layer: the first prompt (tokens 0-3 use both pairs) misses 4; each of the 5 decodes
    # switches pairs and misses 2; the later prompts find the last decode's pair {0, 1} cached
    # and miss only {2, 3}.
    assert inst["expert_misses"] == 32 * ((4 + 5 * 2) + 2 * (2 + 5 * 2))


def test_stall_accounting_matches_the_fetch_arithmetic(tmp_path):
    # One decode at a time, a new expert pair every token and no cache: each decode layer fetches two
    # experts on demand (2 x 352 MB over the H200's 64 GB/s host link) before its experts can run.
    alt = _trace([10], 32, 2, lambda r, tok, layer: [0, 1] if tok % 2 == 0 else [2, 3])
    r = fleetwise.simulate(_replay_scenario(tmp_path, alt, cache=0))
    inst = r.instances.row(0, named=True)
    expert = 3 * 4096 * 14336 * 2
    fetch = 5e-6 + expert / 64e9
    decodes = 3 * 5
    # Prefills fetch 4 experts per layer (tokens use both pairs); link FIFO: 4 fetches back to back.
    expected_stall = 3 * 32 * 4 * fetch + decodes * 32 * 2 * fetch
    assert inst["expert_stall_ns"] * 1e-9 == pytest.approx(expected_stall, rel=1e-6)
    assert inst["expert_demand_bytes"] == pytest.approx(3 * 32 * 4 * expert + decodes * 32 * 2 * expert, rel=1e-9)
    # TPOT: every decode pays its 64 fetches on top of its compute.
    tpot = r.requests["tpot_s"].median()
    assert tpot > 64 * fetch and tpot < 64 * fetch * 1.05


def test_trace_routing_needs_a_matching_trace(tmp_path):
    t = _trace([4], 16, 2, lambda r, tok, layer: [0, 1])  # 16 layers; Mixtral has 32
    with pytest.raises(ConfigError, match=r"cluster.pools.0.experts.routing.trace: the trace has 16 layers"):
        fleetwise.simulate(_replay_scenario(tmp_path, t, cache=2))


# The scenarios' trends.

def test_pregated_prefetch_beats_on_demand_and_approaches_all_in_hbm():
    sc = _scenario("moe-offload")
    pregated = fleetwise.simulate(sc).summary
    lru = fleetwise.simulate(_with_experts(sc, {**sc["cluster"]["pools"][0]["experts"], "prefetch": None})).summary
    hbm = fleetwise.simulate(_with_experts(sc, {"placement": "hbm", "routing": ZIPF})).summary
    # Latency well below on-demand fetching and within 40% of all experts in HBM...
    assert pregated["e2e_s"]["p50"] < 0.6 * lru["e2e_s"]["p50"]
    assert pregated["ttft_s"]["p50"] < 0.7 * lru["ttft_s"]["p50"]
    assert pregated["e2e_s"]["p50"] < 1.4 * hbm["e2e_s"]["p50"]
    # ... with a third of the expert HBM.
    assert pregated["experts"]["hbm_expert_gib_per_gpu"] < 0.35 * hbm["experts"]["hbm_expert_gib_per_gpu"]
    assert pregated["experts"]["hit_rate"] > 0.85 > lru["experts"]["hit_rate"]
    assert hbm["experts"]["hit_rate"] is None and hbm["experts"]["stall_ms_per_iteration"] == 0


def test_flash_experts_are_slower_than_dram_by_the_bandwidth_ratio():
    sc = _scenario("moe-flash")
    flash = fleetwise.simulate(sc).summary
    dram = fleetwise.simulate(_with_experts(sc, {**sc["cluster"]["pools"][0]["experts"], "placement": "dram"})).summary
    ratio = 64e9 / 13e9  # PCIe Gen5 host link over the NVMe Gen5 drive
    assert flash["tpot_s"]["p50"] / dram["tpot_s"]["p50"] == pytest.approx(ratio, rel=0.05)
    assert flash["experts"]["hit_rate"] == pytest.approx(dram["experts"]["hit_rate"], abs=0.05)


def test_duplex_logic_pim_raises_mixtral_throughput():
    sc = _scenario("duplex")
    pim = fleetwise.simulate(sc).summary
    gpu = fleetwise.simulate(_with_experts(sc, pim=None)).summary
    assert pim["throughput"]["output_tokens_per_s"] > 1.2 * gpu["throughput"]["output_tokens_per_s"]
    assert pim["tpot_s"]["p50"] < 0.85 * gpu["tpot_s"]["p50"]


def test_token_grouping_by_affinity_fetches_less_than_round_robin():
    sc = {"name": "grouping", "seed": 2,
          "cluster": {"pools": [{"gpu": "h100-sxm", "model": "qwen3-30b-a3b", "scheduler": {"kind": "vllm", "max_num_seqs": 64},
                                 "experts": {"placement": "dram", "routing": {"kind": "zipf", "zipf_exponent": 0.6, "locality": 0.8}, "cache": {"policy": "lru", "experts_per_layer": 32}}}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 4.0}, "lengths": {"kind": "constant", "prompt": 200, "output": 100}, "requests": 120}}
    runs = {}
    for affinity in (True, False):
        x = copy.deepcopy(sc)
        x["cluster"]["pools"][0]["experts"]["grouping"] = {"batch": 16, "affinity": affinity}
        runs[affinity] = fleetwise.simulate(x).summary
    grouped, rr = runs[True], runs[False]
    assert grouped["experts"]["hit_rate"] > rr["experts"]["hit_rate"] + 0.05
    assert grouped["experts"]["fetched_bytes_per_token"] < 0.9 * rr["experts"]["fetched_bytes_per_token"]
    assert grouped["throughput"]["output_tokens_per_s"] > 1.1 * rr["throughput"]["output_tokens_per_s"]
    assert grouped["finished"] == rr["finished"] == 120


def test_expert_parallel_routing_reports_load_imbalance():
    sc = {"name": "ep", "seed": 3,
          "cluster": {"pools": [{"gpu": "h100-sxm", "model": "mixtral-8x7b", "parallelism": {"tp": 2, "ep": 2}, "scheduler": {"kind": "vllm"},
                                 "experts": {"routing": {"kind": "zipf", "zipf_exponent": 1.5}}}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 5.0}, "lengths": {"kind": "constant", "prompt": 4000, "output": 2}, "requests": 40}}
    skewed = fleetwise.simulate(sc).summary
    sc["cluster"]["pools"][0]["experts"]["routing"] = {"kind": "uniform"}
    uniform = fleetwise.simulate(sc).summary
    # Zipf-skewed routing loads one GPU's experts more: the busiest GPU sets each layer's pace, which
    # shows in compute-bound prefills.
    assert skewed["experts"]["load_imbalance"] > uniform["experts"]["load_imbalance"] > 1.0
    assert skewed["ttft_s"]["p50"] > 1.1 * uniform["ttft_s"]["p50"]


def test_runs_are_deterministic():
    sc = _with_experts(_scenario("moe-offload"), None)
    sc["workload"]["requests"] = 60
    a, b = fleetwise.simulate(sc), fleetwise.simulate(sc)
    assert a.requests.equals(b.requests) and a.instances.equals(b.instances)


# Bad input.

def test_expert_settings_errors_name_the_field(write_yaml):
    sc = _scenario("moe-offload")
    p = write_yaml(_with_experts(sc, model="llama-3-8b"))
    r = run_cli("run", str(p))
    assert r.returncode == 2 and "cluster.pools.0.experts" in r.stderr and "llama-3-8b" in r.stderr and "Traceback" not in r.stderr
    p = write_yaml(_with_experts(sc, {"placement": "hbm", "cache": {"experts_per_layer": 2}}))
    r = run_cli("run", str(p))
    assert r.returncode == 2 and "experts.placement" in r.stderr
    p = write_yaml(_with_experts(sc, {"placement": "dram", "cache": {"policy": "mru"}}))
    r = run_cli("run", str(p))
    assert r.returncode == 2 and "cluster.pools.0.experts.cache.policy" in r.stderr and "lru" in r.stderr
    with pytest.raises(CapacityError, match="experts offloaded to Dram per GPU"):
        fleetwise.simulate(_with_experts(sc, {"placement": "dram", "capacity_gb": 10}))


def test_deepseek_v2_lite_kv_cache_is_the_mla_latent():
    sc = {"name": "ds", "cluster": {"pools": [{"gpu": "h100-sxm", "model": "deepseek-v2-lite", "experts": {"routing": ZIPF}}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 5.0}, "lengths": {"kind": "constant", "prompt": 500, "output": 20}, "requests": 20}}
    r = fleetwise.simulate(sc)
    inst = r.instances.row(0, named=True)
    assert inst["kv_bytes_per_token"] == 27 * (512 + 64) * 2
    assert r.summary["finished"] == 20
    # 64 experts, top-6: a 20-token decode batch activates far fewer than all 64 per layer.
    assert 0 < r.summary["experts"]["experts_activated_per_iteration"] < 26 * 64


def test_gpus_waiting_for_offloaded_experts_draw_at_least_their_idle_power():
    # Mixtral with experts in DRAM and a 2-expert cache stalls ~1 s per iteration: that time is busy
    # (not idle), so it used to get no energy at all and the average fell to 20 W per H100.
    from fleetwise.catalog import builtin_gpus

    sc = {"name": "stalls", "seed": 1,
          "cluster": {"pools": [{"name": "main", "count": 1, "gpu": "h100-sxm", "model": "mixtral-8x7b",
                                 "experts": {"placement": "dram", "routing": {"kind": "zipf", "zipf_exponent": 0.8, "locality": 0.3},
                                             "cache": {"policy": "lru", "experts_per_layer": 2}, "prefetch": {"accuracy": 0.9, "lead_layers": 1}}}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 2.0}, "lengths": {"kind": "constant", "prompt": 500, "output": 30}, "requests": 20}}
    res = fleetwise.simulate(sc)
    inst = res.instances.row(0, named=True)
    idle = builtin_gpus()["h100-sxm"].idle_watts
    assert inst["expert_stall_ns"] > 0.5 * inst["busy_ns"]  # mostly waiting
    assert res.summary["energy"]["average_watts_per_gpu"] >= idle
    # The stalls are charged at least the idle power on top of the computing energy.
    assert inst["busy_energy_joules"] >= idle * inst["expert_stall_ns"] * 1e-9 * inst["gpus"]
