"""Power, power caps, energy and cost: accounting identities and Splitwise's cap trend."""

from __future__ import annotations

import numpy as np
import pytest

import fleetwise
from fleetwise.catalog import builtin_gpus
from fleetwise.workload import Workload

from conftest import small_scenario


def _run(cap=None, prompt=2048, output=1, n=40, gap_ms=500, count=1):
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(count=count, power_cap_watts=cap)
    wl = Workload(
        arrival_ns=np.arange(n, dtype=np.int64) * gap_ms * 1_000_000,
        prompt_tokens=np.full(n, prompt, dtype=np.int64),
        output_tokens=np.full(n, output, dtype=np.int64),
    )
    return fleetwise.simulate(sc, workload=wl, record_iterations=True)


def test_power_cap_slows_prefill_not_decode_as_splitwise_measured():
    # Splitwise's power-capped H100 profile: prompt phase 1.3x slower, token phase unchanged.
    # A long prompt is mostly compute-bound; its memory-bound parts (norms, overheads) do not stretch.
    free, capped = _run(prompt=8000), _run(cap=490, prompt=8000)
    ttft_ratio = capped.summary["ttft_s"]["p50"] / free.summary["ttft_s"]["p50"]
    assert 1.2 < ttft_ratio < 1.31
    free_d, capped_d = _run(prompt=16, output=400, n=8, gap_ms=1), _run(cap=490, prompt=16, output=400, n=8, gap_ms=1)
    assert capped_d.summary["tpot_s"]["p50"] == pytest.approx(free_d.summary["tpot_s"]["p50"], rel=0.01)
    # The capped GPU never draws more than its cap; the free one draws well above it on prompts.
    inst = capped.instances.row(0, named=True)
    assert inst["busy_energy_joules"] / (inst["busy_ns"] * 1e-9) <= 490 + 1e-6
    free_inst = free.instances.row(0, named=True)
    assert free_inst["busy_energy_joules"] / (free_inst["busy_ns"] * 1e-9) > 550


def test_energy_is_busy_power_plus_idle_power():
    r = _run(n=4, gap_ms=2000)
    gpu = builtin_gpus()["h100-sxm"]
    inst = r.instances.row(0, named=True)
    end_s = r.requests["completion_ns"].max() * 1e-9
    busy_s = inst["busy_ns"] * 1e-9
    # Idle for most of the run: energy is between idle-only and TDP-only bounds, and equals
    # the busy energy plus idle watts over the idle time.
    assert inst["energy_joules"] == pytest.approx(inst["busy_energy_joules"] + gpu.idle_watts * (end_s - busy_s), rel=1e-9)
    assert gpu.idle_watts * end_s < inst["energy_joules"] < gpu.tdp_watts * end_s
    # Prefills are mostly compute-bound: their busy power is well above a decode's
    # (idle + 0.3 of the dynamic range = 259 W, within the 137-300 W measured for decode on Hopper).
    assert inst["busy_energy_joules"] / busy_s > 0.75 * gpu.tdp_watts


def test_cost_per_token_is_price_times_gpu_hours():
    r = _run(prompt=500, output=100, n=50, gap_ms=100, count=2)
    gpu = builtin_gpus()["h100-sxm"]
    wall = r.requests["completion_ns"].max() * 1e-9
    c = r.summary["cost"]
    assert c["gpu_hours"] == pytest.approx(2 * wall / 3600)
    assert c["dollars"] == pytest.approx(2 * gpu.price_per_hour * wall / 3600)
    assert c["dollars_per_million_output_tokens"] == pytest.approx(c["dollars"] / (50 * 100) * 1e6)
    e = r.summary["energy"]
    assert e["joules_per_output_token"] == pytest.approx(e["joules"] / 5000)


def test_power_cap_on_a_gpu_without_tdp_is_refused():
    sc = small_scenario(gpus={"nopower": {"peak_flops": 1e15, "memory_bytes": 80e9, "memory_bandwidth": 3e12, "link_bandwidth": 1e11, "architecture": "hopper", "memory_type": "hbm"}})
    sc["cluster"]["pools"][0].update(gpu="nopower", power_cap_watts=300)
    with pytest.raises(fleetwise.ConfigError, match="cluster.pools.0.power_cap_watts"):
        fleetwise.simulate(sc)


def test_an_idle_draw_without_tdp_is_refused():
    # Without tdp_watts power is not modelled, yet idle_watts alone charged idle energy while the
    # busy draw came out below idle (100 W idle: 8.8 W for a prefill, exit 0).
    sc = small_scenario(gpus={"idleonly": {"peak_flops": 1e15, "memory_bytes": 80e9, "memory_bandwidth": 3e12, "link_bandwidth": 1e11, "architecture": "hopper", "memory_type": "hbm", "idle_watts": 100}})
    sc["cluster"]["pools"][0].update(gpu="idleonly")
    with pytest.raises(fleetwise.ConfigError, match=r"cluster\.pools\.0\.gpu\.idle_watts: idleonly: needs tdp_watts"):
        fleetwise.simulate(sc)


def test_new_catalogue_gpus_run():
    for gpu, model, tp in (("h100-pcie", "llama-3-8b", 1), ("a100-40gb-sxm", "llama-2-13b", 2), ("mi300x", "llama-3-70b", 1)):
        sc = small_scenario()
        sc["cluster"]["pools"][0].update(gpu=gpu, model=model, parallelism={"tp": tp})
        sc["workload"]["requests"] = 60
        sc["workload"]["lengths"] = {"kind": "constant", "prompt": 500, "output": 50}
        assert fleetwise.simulate(sc).summary["finished"] == 60


def test_estimate_power_of_an_offloaded_iteration_is_the_busy_draw_the_run_charges():
    # Llama-3-8B, a 2000-token prefill with half the layers streamed from DRAM: the kernels are those
    # of the resident iteration, so they draw the same; the 57 ms stall on the host link is idle time
    # (docs/power-and-cost.md), not memory-bound time diluting the compute share (442.6 W before).
    from fleetwise.estimate import estimate_iteration

    off = estimate_iteration("llama-3-8b", "h100-sxm", prefill=2000, offload={"tier": "dram", "layer_fraction": 0.5})
    stall = sum(o["seconds"] for o in off["ops"] if o["op"] == "weight_fetch")
    compute = sum(o["seconds"] for o in off["ops"] if o["compute_bound"])
    assert stall > 0.05
    phi = compute / (off["seconds"] - stall)
    assert off["power_watts_per_gpu"] == pytest.approx(70 + 630 * (0.3 + 0.7 * phi), rel=1e-9)
    assert off["power_watts_per_gpu"] == pytest.approx(estimate_iteration("llama-3-8b", "h100-sxm", prefill=2000)["power_watts_per_gpu"], rel=1e-9)
    assert off["power_watts_per_gpu"] == pytest.approx(646.85, abs=0.01)
    # The same request run alone: its busy energy over its busy time is that draw.
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(count=1, offload={"tier": "dram", "layer_fraction": 0.5}, scheduler={"kind": "vllm", "max_num_batched_tokens": 4096})
    wl = Workload(arrival_ns=np.zeros(1, dtype=np.int64), prompt_tokens=np.full(1, 2000, dtype=np.int64), output_tokens=np.ones(1, dtype=np.int64))
    inst = fleetwise.simulate(sc, workload=wl).instances.row(0, named=True)
    assert inst["busy_energy_joules"] / (inst["busy_ns"] * 1e-9) == pytest.approx(off["power_watts_per_gpu"], rel=1e-6)


def test_a_capped_prompt_draws_the_cap_in_its_compute_bound_kernels_only():
    # DVFS clocks each compute-bound kernel to draw the cap (490 W); the memory-bound ones (norms,
    # embedding, sampling) keep their own 70 + 0.3 x 630 = 259 W. The iteration's draw is their
    # time-weighted mean, below the cap: min(uncapped formula, cap) said 490 W for any prompt.
    from fleetwise.estimate import estimate_iteration

    capped = estimate_iteration("llama-3-8b", "h100-sxm", prefill=2000, power_cap_watts=490)
    phi = sum(o["seconds"] for o in capped["ops"] if o["compute_bound"]) / capped["seconds"]
    assert 0.8 < phi < 0.95
    assert capped["power_watts_per_gpu"] == pytest.approx(phi * 490 + (1 - phi) * 259, rel=1e-9)
    assert capped["power_watts_per_gpu"] == pytest.approx(468.25, abs=0.01)
    # A run charges the same draw for that prompt served alone.
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(count=1, power_cap_watts=490, scheduler={"kind": "vllm", "max_num_batched_tokens": 4096})
    wl = Workload(arrival_ns=np.zeros(1, dtype=np.int64), prompt_tokens=np.full(1, 2000, dtype=np.int64), output_tokens=np.ones(1, dtype=np.int64))
    inst = fleetwise.simulate(sc, workload=wl).instances.row(0, named=True)
    assert inst["busy_energy_joules"] / (inst["busy_ns"] * 1e-9) == pytest.approx(capped["power_watts_per_gpu"], rel=1e-6)


def test_a_late_rejected_arrival_does_not_stretch_energy_and_cost():
    # Two requests finish within a second; a third, too long for Llama-3-8B's 8192-token context,
    # arrives at 100 s and is rejected. Energy and cost count to the last completion, as
    # docs/power-and-cost.md defines them: the idle GPUs were billed 100 s (a 100x error).
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = 1

    def run(n):
        wl = Workload(arrival_ns=np.array([0, 100_000_000, 100_000_000_000][:n]), prompt_tokens=np.array([500, 300, 9000][:n]), output_tokens=np.array([50, 20, 10][:n]))
        return fleetwise.simulate(sc, workload=wl).summary

    late, alone = run(3), run(2)
    assert (late["rejected"], alone["rejected"]) == (1, 0)
    assert late["energy"] == alone["energy"]
    assert late["cost"] == alone["cost"]
