"""Splitwise's (ISCA'24) physics on DGX-H100: power caps slow prompts, not tokens (the SM clock a cap
forces, docs/power-and-cost.md), and layer-wise KV transfer leaves only a few milliseconds after
the prompt (the last layer and the transfer's setup, docs/seed-systems.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fleetwise
from fleetwise.catalog import builtin_gpus
from fleetwise.config.load import load_scenario
from fleetwise.cost import cost_model
from fleetwise.workload import Workload

from conftest import REPO, run_cli, small_scenario

# The clock an H100 (TDP 700 W, idle 70 W, memory-bound share 0.3) runs compute-bound kernels at
# under a 490 W cap: 0.3 f + 0.7 f^a = (490 - 70) / 630 = 2/3, with a = 1.6 (default), 3 and 1.
CLOCK_490 = {1.6: 0.74992, 3.0: 0.83987, 1.0: 2 / 3}
COMPUTE_OPS = {"qkv_proj", "o_proj", "mlp_gate_up", "mlp_down", "prefill_attention"}


def _prompt_and_decode(engine="vllm", **kw):
    """Llama-2-70B on 8 H100s (Splitwise's DGX-H100): a 2048-token prompt's breakdown and a
    32-request decode iteration at 1.5K tokens of context."""
    cm = cost_model("llama-2-70b", "h100-sxm", tp=8, engine=engine, **kw)
    return cm.breakdown(prefills=[(2048, 0, True)]), cm.iteration_seconds(decodes=[1500] * 32)


def _seconds(breakdown, ops=None):
    return sum(o["seconds"] for o in breakdown if ops is None or o["op"] in ops)


@pytest.mark.parametrize("engine", ["vllm", "fleetwise-torch"])
def test_a_70_percent_cap_slows_llama2_70b_prompt_compute_by_the_dvfs_clock_and_not_decode(engine):
    (free, free_dec), (capped, capped_dec) = _prompt_and_decode(engine), _prompt_and_decode(engine, power_cap_watts=490)
    assert all(o["compute_bound"] for o in free if o["op"] in COMPUTE_OPS)
    # The prompt's GEMMs and attention: at most 1 / 0.74992 = 1.3335x (Splitwise: prompt phase
    # ~1.3x); the vllm profile's GEMMs blend in their memory time at the ridge, which the cap
    # does not stretch, so they land a little below.
    ratio = _seconds(capped, COMPUTE_OPS) / _seconds(free, COMPUTE_OPS)
    assert 1.25 <= ratio <= 1 / CLOCK_490[1.6] + 1e-4
    if engine == "fleetwise-torch":
        assert ratio == pytest.approx(1 / CLOCK_490[1.6], rel=1e-4)
        # The rest of the prompt (norms, activations, all-reduces) is memory- or link-bound and
        # keeps its time, so the whole prompt slows by 1 + share x 0.3335.
        share = _seconds(free, COMPUTE_OPS) / _seconds(free)
        assert _seconds(capped) / _seconds(free) == pytest.approx(1 + share * (1 / CLOCK_490[1.6] - 1), rel=1e-5)
    assert 1.05 < _seconds(capped) / _seconds(free) < ratio
    # Token phase: decode iterations within 3% (Splitwise: unchanged).
    assert capped_dec / free_dec == pytest.approx(1.0, abs=0.03)


def test_estimate_cli_reports_the_capped_prompt():
    def secs(*args):
        r = run_cli("estimate", "--model", "llama-2-70b", "--gpu", "h100-sxm", "--tp", "8", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["seconds"]

    prompt = secs("--prefill", "2048", "--power-cap", "490") / secs("--prefill", "2048")
    token = secs("--decode-batch", "32", "--context", "1500", "--power-cap", "490") / secs("--decode-batch", "32", "--context", "1500")
    assert 1.05 < prompt < 1.35 and token == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("exponent", [3.0, 1.0])
def test_dvfs_exponent_is_overridable_per_pool(exponent):
    # The textbook V ~ f (exponent 3) gives 1/0.83987 = 1.191x; the voltage floor (1) 1.5x.
    sc = small_scenario()
    gpu = builtin_gpus()["h100-sxm"].model_copy(update={"dvfs_exponent": exponent})
    free = cost_model("llama-3-8b", gpu, gpu_name="h100-sxm", engine="fleetwise-torch")
    capped = cost_model("llama-3-8b", gpu, gpu_name="h100-sxm", engine="fleetwise-torch", power_cap_watts=490)
    op = lambda cm: next(o for o in cm.breakdown(prefills=[(4096, 0, True)]) if o["op"] == "mlp_gate_up")["seconds"]
    assert op(capped) / op(free) == pytest.approx(1 / CLOCK_490[exponent], rel=1e-4)
    # The same through a scenario: cluster.pools.0.dvfs_exponent.
    sc["cluster"]["pools"][0].update(power_cap_watts=490, dvfs_exponent=exponent)
    wl = Workload(arrival_ns=np.array([0], dtype=np.int64), prompt_tokens=np.array([8000], dtype=np.int64), output_tokens=np.array([1], dtype=np.int64))
    capped_ttft = fleetwise.simulate(sc, workload=wl).requests["ttft_s"][0]
    sc["cluster"]["pools"][0].update(power_cap_watts=None)
    free_ttft = fleetwise.simulate(sc, workload=wl).requests["ttft_s"][0]
    # An 8K-token prompt is ~3/4 compute-bound (its norms and activations keep their time).
    assert 1 + 0.6 * (1 / CLOCK_490[exponent] - 1) < capped_ttft / free_ttft < 1 / CLOCK_490[exponent] + 1e-3


def test_dvfs_exponent_out_of_range_is_refused():
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(dvfs_exponent=5)
    with pytest.raises(fleetwise.ConfigError, match="cluster.pools.0.dvfs_exponent"):
        fleetwise.simulate(sc)


def _split(*over):
    return fleetwise.simulate(load_scenario(REPO / "scenarios" / "splitwise.yaml", ["workload.requests=600", *over]))


def test_layerwise_transfer_leaves_the_last_layer_and_setup_after_the_prompt():
    lw = _split("cluster.pools.0.kv_transfer=layerwise")
    ser = _split()
    q, s = lw.requests, ser.requests
    assert (q["status"] == "finished").all() and (s["status"] == "finished").all()
    # Hand computation (Llama-3-8B: 32 layers x 4096 B of KV a token and layer; one H100 per
    # instance, 50 GB/s NIC): after the first token, 5 us NIC + 4 ms setup + the last layer,
    # prompt x 4096 B / 50 GB/s (0.12 ms at 1.5K tokens). Transfers sharing a link take longer.
    tail_ms = q["kv_transfer_ns"].to_numpy() * 1e-6
    hand_ms = 4.005 + q["prompt_tokens"].to_numpy() * 4096 / 50e9 * 1e3
    assert (tail_ms >= hand_ms - 1e-3).all()
    assert np.median(tail_ms / hand_ms) < 1.02
    assert 4.0 < np.median(tail_ms) < 4.5
    assert q["kv_transfer_ns"].mean() * 1e-9 < 0.02 * q["e2e_s"].mean()
    # Serialized moves the whole prompt's KV after it: 4.005 ms + prompt x 131072 B / 50 GB/s
    # (3.9 ms at 1.5K tokens), clearly more than layer-wise.
    ser_ms = s["kv_transfer_ns"].to_numpy() * 1e-6
    assert np.median(ser_ms) > 1.5 * np.median(tail_ms)
    assert np.median(ser_ms / (4.005 + s["prompt_tokens"].to_numpy() * 131072 / 50e9 * 1e3)) == pytest.approx(1.0, abs=0.02)


def test_kv_transfer_latency_is_overridable_and_checked():
    none = _split("cluster.pools.0.kv_transfer=layerwise", "cluster.pools.0.kv_transfer_latency=0").requests
    tail_ms = none["kv_transfer_ns"].to_numpy() * 1e-6
    assert np.median(tail_ms) < 0.3
    with pytest.raises(fleetwise.ConfigError, match="kv_transfer_latency"):
        _split("cluster.pools.0.kv_transfer_latency=-1")


def test_capping_the_splitwise_scenario_slows_prompts_not_tokens():
    # Both pools capped at 70% of TDP: Llama-3-8B's 1.5K-token prompts are ~65% GEMMs and
    # attention (1.3335x) and ~35% norms and activations (unchanged): TTFT ~1.22x (measured 1.229
    # at 5 req/s); decodes stay under the cap's reach (259 W < 490 W): TPOT unchanged.
    over = ["workload.arrivals.rate=5"]
    free = _split(*over)
    capped = _split(*over, "cluster.pools.0.power_cap_watts=490", "cluster.pools.1.power_cap_watts=490")
    ttft = capped.summary["ttft_s"]["p50"] / free.summary["ttft_s"]["p50"]
    assert 1.15 < ttft < 1 / CLOCK_490[1.6]
    assert capped.summary["tpot_s"]["p50"] == pytest.approx(free.summary["tpot_s"]["p50"], rel=0.03)
