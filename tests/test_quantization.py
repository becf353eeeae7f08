"""A pool's ``quantization`` (docs/quantization.md): weights, FP8 activations and an FP8 KV cache
change the memory plan and the iteration time as hand-computed, reach the core from a scenario and
``fleetwise estimate``, and bad settings are configuration errors naming the field (exit 2)."""

from __future__ import annotations

import json

import pytest

import fleetwise
from conftest import docs_table_row, run_cli, small_scenario
from fleetwise.estimate import estimate_iteration
from fleetwise.catalog import builtin_gpus
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError

# Llama-3-8B: 6,979,584,000 decoder-layer parameters; embedding, LM head and final norm 1,050,677,248.
LAYERS, OTHER = 6_979_584_000, 2 * 128256 * 4096 + 4096
MEMORY = json.dumps({"gpu_memory_utilization": 0.9, "block_size": 16})


def _cm(gpu: str = "h100-sxm", **q):
    return cost_model("llama-3-8b", gpu, engine="vllm", quantization=q or None)


def test_weight_bytes_follow_the_format_and_the_embedding_stays_16_bit():
    assert _cm().weight_bytes_per_gpu() == 2 * (LAYERS + OTHER)
    assert _cm(weights="fp8").weight_bytes_per_gpu() == LAYERS + 2 * OTHER == 9_080_938_496
    assert _cm(weights="int8").weight_bytes_per_gpu() == 9_080_938_496
    # INT4 in groups of 128: 0.5 + 4/128 bytes per parameter; groups of 32: 0.5 + 4/32.
    assert _cm(weights="int4").weight_bytes_per_gpu() == LAYERS * 17 // 32 + 2 * OTHER
    assert _cm(weights="int4", group_size=32).weight_bytes_per_gpu() == LAYERS * 5 // 8 + 2 * OTHER
    assert _cm(weights="int4").weight_bytes() == _cm(weights="int4").weight_bytes_per_gpu()


def test_fp8_kv_cache_doubles_the_blocks_and_fp8_weights_add_theirs():
    plan = lambda **q: _cm(**q).memory_plan(MEMORY, 8192, 256)  # noqa: E731
    base, kv8, both = plan(), plan(kv_cache="fp8"), plan(weights="fp8", kv_cache="fp8")
    assert (base["kv_bytes_per_token"], kv8["kv_bytes_per_token"]) == (131_072, 65_536)
    assert abs(kv8["num_blocks"] - 2 * base["num_blocks"]) <= 1
    assert both["num_blocks"] == (base["kv_bytes"] + LAYERS) // (16 * 65_536)


def test_decode_and_prefill_speed_ups_under_the_vllm_profile():
    # With the vllm profile's CPU step (overlapped) and efficiencies, batch-1 decode still gains
    # from reading fewer weight bytes, W8A8 prefill from the FP8 peak; weight-only prefill does not.
    decode = lambda **q: _cm(**q).iteration_seconds([], [1001])  # noqa: E731
    prefill = lambda **q: _cm(**q).iteration_seconds([(4096, 0, True)], [])  # noqa: E731
    assert 1.3 < decode() / decode(weights="fp8") < 2.0
    assert decode(weights="fp8") / decode(weights="int4") > 1.2
    assert 1.3 < prefill() / prefill(weights="fp8", activations="fp8") < 2.0
    assert prefill() / prefill(weights="int4") == pytest.approx(1.0, abs=0.02)


def test_a_quantized_pool_runs_with_more_kv_blocks_and_faster_decodes():
    sc = small_scenario()
    sc["workload"]["requests"] = 200
    plain = fleetwise.simulate(sc)
    sc["cluster"]["pools"][0]["quantization"] = {"weights": "fp8", "kv_cache": "fp8"}
    assert core_config(fleetwise.scenario_from_dict(sc))["pools"][0]["quantization"] == {"weights": "fp8", "activations": "bf16", "kv_cache": "fp8", "group_size": 128}
    quant = fleetwise.simulate(sc)
    assert quant.instances["num_blocks"][0] > 2 * plain.instances["num_blocks"][0]
    assert quant.summary["finished"] == plain.summary["finished"] == 200
    assert quant.summary["tpot_s"]["p50"] < 0.8 * plain.summary["tpot_s"]["p50"]


def test_fp8_activations_on_an_a100_are_a_config_error_naming_the_field(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(gpu="a100-80gb-sxm", quantization={"weights": "fp8", "activations": "fp8"})
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0.*quantization\.activations.*a100-80gb-sxm"):
        fleetwise.simulate(sc)
    r = run_cli("run", str(write_yaml(sc)))
    assert r.returncode == 2 and "quantization.activations" in r.stderr and "Traceback" not in r.stderr
    # Weight-only FP8 runs on Ampere (vLLM's Marlin kernels).
    assert _cm("a100-80gb-sxm", weights="fp8").weight_bytes_per_gpu() == 9_080_938_496


@pytest.mark.parametrize("quantization, field", [
    ({"weights": "int4", "activations": "fp8"}, "need weights: fp8"),
    ({"weights": "fp8", "group_size": 64}, "group_size applies to weights: int4 only"),
    ({"weights": "nf4"}, "quantization.weights"),
    ({"weights": "int4", "group_size": 4}, "quantization.group_size"),
    ({"kv_cache": "fp16"}, "quantization.kv_cache"),
])
def test_bad_quantization_settings_name_the_file_and_field(write_yaml, quantization, field):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["quantization"] = quantization
    path = write_yaml(sc)
    with pytest.raises(ConfigError, match="cluster.pools.0.quantization") as err:
        fleetwise.load_scenario(path)
    assert field in str(err.value) and str(path) in str(err.value)


def test_estimate_cli_takes_quantization():
    def run(*q):
        r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "1000", *q, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    plain, fp8 = run(), run("--quantization", "weights=fp8,kv_cache=fp8")
    assert fp8["quantization"] == {"weights": "fp8", "activations": "bf16", "kv_cache": "fp8", "group_size": None}
    assert fp8["memory"]["weights"] == 9_080_938_496 and fp8["memory"]["kv_cache"] == 1001 * 65_536
    assert fp8["seconds"] < 0.8 * plain["seconds"]
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "a100-80gb-sxm", "--prefill", "512", "--quantization", "weights=fp8,activations=fp8")
    assert r.returncode == 2 and "quantization.activations" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--prefill", "512", "--quantization", "weights")
    assert r.returncode == 2 and "--quantization" in r.stderr and "Traceback" not in r.stderr


def test_catalogue_fp8_peaks_are_twice_the_16_bit_peaks_where_present():
    gpus = builtin_gpus()
    assert {k for k, g in gpus.items() if not g.fp8_peak_flops} == {"a100-80gb-sxm", "a100-40gb-sxm", "a10g"}
    assert gpus["h100-sxm"].fp8_peak_flops == 1979e12 and gpus["b200"].fp8_peak_flops == 4500e12
    # Datasheets round separately: the L40S prints 362.05 BF16 and 733 FP8 dense (2.02x).
    for name, g in gpus.items():
        if g.fp8_peak_flops:
            assert g.fp8_peak_flops / g.peak_flops == pytest.approx(2.0, rel=0.02), name


@pytest.mark.parametrize(("label", "quantization"), [
    ("none", None),
    ("`kv_cache: fp8`", {"kv_cache": "fp8"}),
    ("`weights: fp8, kv_cache: fp8`", {"weights": "fp8", "kv_cache": "fp8"}),
    ("`weights: int4, kv_cache: fp8`", {"weights": "int4", "kv_cache": "fp8"}),
    ("`weights: fp8, activations: fp8`", {"weights": "fp8", "activations": "fp8"}),
])
def test_docs_numbers_table_is_what_estimate_prints(label, quantization):
    # The page's table must be what its command prints under the shipped `vllm` profile.
    cells = docs_table_row("quantization.md", label, lambda c: c[1].endswith(" GB"))
    one = estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=1, context=1000, quantization=quantization)
    batch = estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=64, context=2000, quantization=quantization)
    prefill = estimate_iteration("llama-3-8b", "h100-sxm", prefill=4096, quantization=quantization)
    assert cells[1] == f"{one['memory']['weights'] / 1e9:.2f} GB"
    assert cells[3] == f"{one['seconds'] * 1e3:.2f} ms"
    assert cells[4] == f"{batch['seconds'] * 1e3:.2f} ms"
    assert cells[5] == f"{prefill['seconds'] * 1e3:.1f} ms"


def test_fp8_gemms_run_at_the_fraction_of_their_peak_measured_on_an_h100():
    # calibration/h100/fp8_gemm.csv (tools/fidelity/fp8_gemm.py, H100 SXM, torch._scaled_mm with
    # row-wise scales): projection GEMMs of >= 2048 tokens run a median 1.66x faster in FP8 than in
    # bf16, not the peaks' 2x. The model (the Hopper prior's fp8_gemm_compute 0.59 against the
    # H100's gemm_compute 0.7025) predicts Llama-3-8B's four projections within 5% of that, and the
    # layer's FP8 GEMM time at 4096 tokens within 5% of the measured one.
    from pathlib import Path

    import polars as pl

    rows = pl.read_csv(Path(__file__).resolve().parents[1] / "calibration" / "h100" / "fp8_gemm.csv")
    big = rows.filter(pl.col("tokens") >= 2048)
    measured = (big["bf16_seconds"] / big["fp8_seconds"]).median()
    assert 1.55 < measured < 1.75

    def linear_seconds(quantization):
        cm = cost_model("llama-3-8b", "h100-sxm", engine="vllm", quantization=quantization)
        ops = {o["op"]: o for o in cm.breakdown([(4096, 0, True)], [])}
        assert all(ops[k]["compute_bound"] for k in ("qkv_proj", "o_proj", "mlp_gate_up", "mlp_down"))
        return sum(ops[k]["seconds"] for k in ("qkv_proj", "o_proj", "mlp_gate_up", "mlp_down")) / 32

    bf16, fp8 = linear_seconds(None), linear_seconds({"weights": "fp8", "activations": "fp8"})
    assert bf16 / fp8 == pytest.approx(measured, rel=0.05)
    assert bf16 / fp8 < 1.8, "not the datasheet's 2x"
    layer = rows.filter((pl.col("model") == "llama-3-8b") & (pl.col("tp") == 1) & (pl.col("tokens") == 4096))
    assert len(layer) == 4
    assert fp8 == pytest.approx(layer["fp8_seconds"].sum(), rel=0.05)
    assert bf16 == pytest.approx(layer["bf16_seconds"].sum(), rel=0.05)
