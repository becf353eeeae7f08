""""LLM in a flash" on a GPU (scenarios/llm-in-a-flash.yaml): the paper's 20-25x per-token speed-up
over naive loading, and what each of its techniques contributes."""

from __future__ import annotations

from pathlib import Path

import pytest

import fleetwise
from fleetwise.config.load import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "llm-in-a-flash.yaml"
NAIVE = "cluster.pools.0.offload={tier: flash, storage: paper-ssd, read_chunk_kb: 1024}"


def _tpot_s(*overrides: str) -> float:
    result = fleetwise.simulate(load_scenario(SCENARIO, overrides))
    tpots = result.requests["tpot_s"].to_list()
    assert len(tpots) == 4 and max(tpots) == pytest.approx(min(tpots), rel=1e-3), "one request at a time: every token alike"
    return tpots[0]


def test_flash_aware_loading_is_20_to_25x_faster_per_token_than_naive_loading_on_a_gpu():
    ours, naive = _tpot_s(), _tpot_s(NAIVE)
    # Naive: 12.9 GB of decoder weights per token at the drive's 6.1 GB/s (2.11 s). Ours: 0.2 GB of
    # FFN neurons from flash at 2.25 GB/s (bundled 32 KiB reads) plus the resident attention's reads.
    assert naive == pytest.approx(12.9e9 / 6.1e9, rel=0.03)
    assert 0.08 < ours < 0.1
    # The paper: 20-25x on GPU (abstract); its tolerance band, about 10%, around that range.
    assert 0.9 * 20 <= naive / ours <= 1.1 * 25


def test_each_technique_contributes_as_the_paper_reports():
    ours = _tpot_s()
    # Without windowing all 0.9 GB of predicted neurons come from flash: 4.5x the bytes.
    no_window = _tpot_s("cluster.pools.0.offload.dram_cache_fraction=0")
    assert no_window / ours == pytest.approx(0.9 / 0.2, rel=0.1)
    # Without bundling the rows are read apart (8 KiB): the drive's IOPS cap them at 0.56 GB/s.
    unbundled = _tpot_s("cluster.pools.0.offload.read_chunk_kb=8")
    assert unbundled / ours == pytest.approx(2.25e9 / (68665 * 8192), rel=0.1)
    # Streaming attention too (it is a third of each layer) costs more than keeping it resident.
    streamed_attention = _tpot_s("cluster.pools.0.offload.resident_attention=false")
    assert streamed_attention > 1.5 * ours


def test_waiting_for_streamed_weights_draws_idle_power_once():
    # The stall was charged at busy power inside the iteration and again at idle power (3,089 J
    # for this run against at most 1,431 J): the GPUs' energy above their idle floor is bounded by
    # the dynamic power (TDP - idle) over the time their kernels ran (busy_ns leaves the stall out).
    from fleetwise.catalog import lookup

    sc = load_scenario(SCENARIO, [])
    r = fleetwise.simulate(sc)
    inst = r.instances.row(0, named=True)
    g = lookup("gpu", sc.cluster.pools[0].gpu, {}, "gpu")
    end = r.requests["completion_ns"].max() * 1e-9  # energy runs from 0 to the last completion
    floor = g.idle_watts * inst["gpus"] * end
    assert inst["weight_stall_ns"] > 10 * inst["busy_ns"] > 0  # mostly waiting for flash
    assert floor < inst["energy_joules"] <= floor + (g.tdp_watts - g.idle_watts) * inst["gpus"] * inst["busy_ns"] * 1e-9
