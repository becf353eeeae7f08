"""Engine profiles: hardware fractions x engine factors, per-GPU fits, files, errors, and the
default profile's fidelity to the efficient engine measured on an H200."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from fleetwise.catalog import CalibrationOverride, builtin_gpus, lookup
from fleetwise.catalog.engine import load_engine, resolve_calibration
from fleetwise.catalog.hardware import hardware_fractions
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError

from conftest import REPO, run_cli


def test_vllm_factors_multiply_the_hardware_fractions():
    """On a GPU the profile was not fitted on, each factor is hardware fraction x relative factor."""
    gpu = builtin_gpus()["a100-80gb-sxm"]
    hw, f = hardware_fractions(gpu), load_engine("vllm").factors
    cal = resolve_calibration("a100-80gb-sxm", gpu, "vllm")
    assert cal.attention_compute == pytest.approx(min(1.0, hw.gemm_compute * f.attention_compute), abs=1e-6)
    assert cal.elementwise_memory == pytest.approx(min(1.0, hw.memory * f.elementwise_memory), abs=1e-6)
    assert cal.memory == pytest.approx(min(1.0, hw.memory * f.memory), abs=1e-6)
    assert cal.layer_overhead == f.layer_overhead and cal.mixed_query_tile == f.mixed_query_tile
    cpu = load_engine("vllm").cpu_step
    assert (cal.iteration_overhead, cal.seq_overhead or 0.0, cal.token_overhead or 0.0) == (cpu.base, cpu.per_seq, cpu.per_token)


def test_per_gpu_fit_then_pool_override_win():
    gpu = builtin_gpus()["h100-sxm"]
    torch_cal = resolve_calibration("h100-sxm", gpu, "fleetwise-torch")
    assert torch_cal.elementwise_memory == 0.1925 and torch_cal.layer_overhead == 7.39e-05
    over = resolve_calibration("h100-sxm", gpu, "fleetwise-torch", CalibrationOverride(layer_overhead=1e-5))
    assert over.layer_overhead == 1e-5 and over.elementwise_memory == 0.1925


def test_a_gpu_from_its_datasheet_alone_runs_under_both_engines(tmp_path):
    """A user GPU with no calibration: hardware from the architecture prior, engine from the profile;
    the unfused engine is slower than vllm on the same decode."""
    gpu = {"peak_flops": 362e12, "memory_bytes": 48e9, "memory_bandwidth": 864e9, "link_bandwidth": 32e9,
           "architecture": "ada", "memory_type": "gddr", "sm_count": 142}
    from fleetwise.catalog import GpuSpec

    spec = GpuSpec.model_validate(gpu)
    fast = cost_model("llama-3-8b", spec, gpu_name="my-l40s", engine="vllm")
    slow = cost_model("llama-3-8b", spec, gpu_name="my-l40s", engine="fleetwise-torch")
    assert slow.iteration_seconds([], [1000] * 8) > 1.1 * fast.iteration_seconds([], [1000] * 8) > 0


def test_cpu_step_overlaps_the_gpu_as_vllm_async_scheduling_does():
    """vllm's CPU step (base + per sequence + per token) runs beside the GPU's work: an iteration
    lasts max(GPU time, CPU time); without overlap the two add up."""
    gpu = builtin_gpus()["h200"]
    cpu = load_engine("vllm").cpu_step
    assert cpu.overlap and cpu.per_seq > 0
    cal = resolve_calibration("h200", gpu, "vllm")
    gpu_only = cost_model("qwen3-30b-a3b", gpu, calibration=cal.model_copy(update={"iteration_overhead": 0.0, "seq_overhead": None, "token_overhead": None}))
    overlapped = cost_model("qwen3-30b-a3b", gpu, engine="vllm")
    serial = cost_model("qwen3-30b-a3b", gpu, calibration=cal.model_copy(update={"cpu_overlap": None}))
    for decodes in (1, 64, 512):
        g, c = gpu_only.iteration_seconds([], [600] * decodes), cpu.base + decodes * (cpu.per_seq + cpu.per_token)
        assert overlapped.iteration_seconds([], [600] * decodes) == pytest.approx(max(g, c), rel=1e-9)
        assert serial.iteration_seconds([], [600] * decodes) == pytest.approx(g + c, rel=1e-9)


def test_profile_file_based_on_a_builtin_relative_to_the_scenario(tmp_path):
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "mine.yaml").write_text("based_on: vllm\ncpu_step: {base: 0.004, per_seq: 0.0, per_token: 0.0}\n")
    sc = (REPO / "scenarios" / "quickstart.yaml").read_text()
    (tmp_path / "s.yaml").write_text(sc)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert run_cli("run", str(tmp_path / "s.yaml"), "-o", str(out_a), "--set", "workload.requests=200").returncode == 0
    r = run_cli("run", str(tmp_path / "s.yaml"), "-o", str(out_b), "--set", "workload.requests=200", "--set", "cluster.pools.0.engine=engines/mine.yaml")
    assert r.returncode == 0, r.stderr
    a = json.loads((out_a / "summary.json").read_text())
    b = json.loads((out_b / "summary.json").read_text())
    assert b["tpot_s"]["p50"] > a["tpot_s"]["p50"] + 0.002


def test_bad_engines_are_refused_with_the_field(tmp_path):
    r = run_cli("run", str(REPO / "scenarios" / "quickstart.yaml"), "-o", str(tmp_path / "o"), "--set", "cluster.pools.0.engine=vlm")
    assert r.returncode == 2 and "unknown engine 'vlm'" in r.stderr and "fleetwise-torch" in r.stderr and "vllm" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("based_on: vllm\nfactors: {attention_compute: -1, attention_memory: 1, elementwise_memory: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: factors.attention_compute"):
        load_engine(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"based_on: {loop}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_engine(str(loop))
    with pytest.raises(ConfigError, match="cannot read"):
        load_engine(str(tmp_path / "missing.yaml"))


def test_a_legacy_gpu_calibration_pins_every_factor():
    from fleetwise.catalog import Calibration, GpuSpec

    cal = Calibration(gemm_compute=0.5, attention_compute=0.4, memory=0.6, collective=0.7, iteration_overhead=1e-3)
    spec = GpuSpec(peak_flops=1e15, memory_bytes=80e9, memory_bandwidth=3e12, link_bandwidth=1e11, calibration=cal)
    assert resolve_calibration("old", spec, "vllm") == cal == resolve_calibration("old", spec, "fleetwise-torch")


def test_default_profile_predicts_the_measured_efficient_engine():
    """The shipped vllm profile against the efficient engine's 156 iterations measured on the H200
    it was fitted on (tools/fidelity/fused_grid.py): median and worst error as the profile records."""
    data = pl.read_csv(REPO / "calibration" / "h200-vllm-like" / "iterations.csv")
    gpu = lookup("gpu", "h200", {}, "gpu")
    cal = resolve_calibration("h200", gpu, "vllm").model_copy(update={"iteration_overhead": 0.0, "seq_overhead": None, "token_overhead": None})
    errs = []
    for (name, layers), g in data.group_by(["model", "layers_run"], maintain_order=True):
        cm = cost_model(lookup("model", name, {}, "m").model_copy(update={"num_layers": layers}), gpu, calibration=cal, model_name=name)
        for r in g.iter_rows(named=True):
            p = cm.iteration_seconds([(q, c, True) for q, c in json.loads(r["prefills"])], json.loads(r["decode_kv"]))
            errs.append(p / r["gpu_seconds"] - 1)
    errs = np.abs(np.array(errs))
    rec = load_engine("vllm").residuals["iteration_seconds"]
    assert len(errs) == rec["points"] == 156
    assert np.median(errs) == pytest.approx(rec["median_abs"], abs=1e-3) and np.median(errs) < 0.05
    assert errs.max() == pytest.approx(rec["max_abs"], abs=1e-3) and errs.max() < 0.25


def GpuSpecFrom(specs_path):
    """The first GPU of a specs file."""
    from fleetwise.config.specs import load_specs

    return next(iter(load_specs(specs_path).gpus.values()))


def test_estimate_takes_user_models_gpus_and_engines(tmp_path):
    specs = tmp_path / "specs.yaml"
    specs.write_text(
        "gpus:\n  my-gpu: {peak_flops: 362e12, memory_bytes: 48e9, memory_bandwidth: 864e9, link_bandwidth: 32e9, architecture: ada, memory_type: gddr}\n"
        "models:\n  tiny: {num_layers: 8, hidden_size: 2048, num_heads: 16, num_kv_heads: 4, head_dim: 128, intermediate_size: 5632, vocab_size: 32000, max_position_embeddings: 4096}\n")
    args = ["estimate", "--model", "tiny", "--gpu", "my-gpu", "--specs", str(specs), "--decode-batch", "8", "--context", "1000", "--json"]
    fast, slow = run_cli(*args), run_cli(*args, "--engine", "fleetwise-torch")
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr + slow.stderr
    a, b = json.loads(fast.stdout), json.loads(slow.stdout)
    assert a["engine"] == "vllm" and b["engine"] == "fleetwise-torch" and b["seconds"] != a["seconds"]
    # The unfused engine's GPU work is slower; vllm adds its CPU step (the overhead operator).
    gpu_time = lambda r: sum(o["seconds"] for o in r["ops"] if o["op"] != "overhead")  # noqa: E731
    assert gpu_time(b) > 1.1 * gpu_time(a) > 0
    cpu = load_engine("vllm").cpu_step
    overhead = next(o["seconds"] for o in a["ops"] if o["op"] == "overhead")
    layer = resolve_calibration("my-gpu", GpuSpecFrom(specs), "vllm").layer_overhead * 8
    c = cpu.base + 8 * (cpu.per_seq + cpu.per_token)
    assert overhead == pytest.approx(max(0.0, c - gpu_time(a) - layer) + layer, rel=1e-9)
    # The same GPU through the Python API gives the same number.
    from fleetwise.catalog import GpuSpec, ModelSpec

    gpu = GpuSpec(peak_flops=362e12, memory_bytes=48e9, memory_bandwidth=864e9, link_bandwidth=32e9, architecture="ada", memory_type="gddr")
    model = ModelSpec(num_layers=8, hidden_size=2048, num_heads=16, num_kv_heads=4, head_dim=128, intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096)
    assert cost_model(model, gpu, gpu_name="my-gpu").iteration_seconds([], [1001] * 8) == pytest.approx(a["seconds"], rel=1e-9)
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus:\n  g: {peak_flops: 1e15, architecture: volta}\n")
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "g", "--specs", str(bad), "--decode-batch", "1", "--context", "10")
    assert r.returncode == 2 and "bad.yaml: gpus.g.architecture" in r.stderr and "hopper" in r.stderr


def test_expert_curve_fits_the_grouped_gemm_sweep_and_transfers_between_expert_shapes():
    """The shipped profile's expert curve against the grouped-GEMM sweep measured on the H200
    (tools/fidelity/grouped_gemm.py), as the profile records it; and fitted on Qwen3-30B-A3B's
    small experts alone it predicts Mixtral's large ones (where a single expert factor fitted on
    Qwen3's iterations was 90% off): within 10% (median 6%) from 512 tokens per expert up."""
    from tools.fidelity.engine_fit import fit_kernels, kernel_points, predict_kernels

    points = kernel_points(pl.read_csv(REPO / "calibration" / "h200-vllm-like" / "grouped_gemm.csv"))
    shipped = {k: v for k, v in load_engine("vllm").factors.model_dump().items() if k.startswith("expert_") and v is not None}
    errs = np.abs(predict_kernels(points, "h200", shipped) / points["seconds"].to_numpy() - 1)
    rec = load_engine("vllm").residuals["expert_gemm_seconds"]
    assert len(errs) == rec["points"] == 44
    assert np.median(errs) == pytest.approx(rec["median_abs"], abs=1e-3) and np.median(errs) < 0.05
    assert errs.max() == pytest.approx(rec["max_abs"], abs=1e-3)
    qwen, _ = fit_kernels(points.filter(pl.col("model") == "qwen3-30b-a3b"), "h200")
    big = points.filter(pl.col("model") == "mixtral-8x7b", pl.col("tokens_per_expert") >= 512)
    transfer = np.abs(predict_kernels(big, "h200", qwen) / big["seconds"].to_numpy() - 1)
    assert len(transfer) == 7 and transfer.max() < 0.10 and np.median(transfer) < 0.06, transfer


def test_a_based_on_profile_s_factors_replace_only_the_ones_it_names(tmp_path):
    # `factors: {memory: 1.2}` on top of vllm keeps every other vllm factor (it used to demand
    # the required ones, and with them given, silently reset the rest to their defaults).
    (tmp_path / "part.yaml").write_text("based_on: vllm\nfactors: {memory: 1.2}\n")
    vllm, part = load_engine("vllm").factors, load_engine(str(tmp_path / "part.yaml")).factors
    assert part.memory == 1.2 and vllm.memory != 1.2
    assert part.model_dump(exclude={"memory"}) == vllm.model_dump(exclude={"memory"})
    (tmp_path / "typo.yaml").write_text("based_on: vllm\nfactors: {memori: 1.2}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: factors.memori: Extra inputs are not permitted"):
        load_engine(str(tmp_path / "typo.yaml"))
    (tmp_path / "range.yaml").write_text("based_on: vllm\nfactors: {memory: -1}\n")
    with pytest.raises(ConfigError, match=r"range.yaml: factors.memory: Input should be greater than"):
        load_engine(str(tmp_path / "range.yaml"))


def test_an_engine_profile_that_is_not_utf8_is_an_error_naming_the_line(tmp_path):
    bad = tmp_path / "bad8.yaml"
    bad.write_bytes(b"based_on: vllm\ndescription: caf\xe9\n")
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "8", "--context", "500", "--engine", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}: line 2: not UTF-8 text" in r.stderr


def test_an_unknown_based_on_names_the_profile_file(tmp_path):
    (tmp_path / "none.yaml").write_text("based_on: nonexist\n")
    with pytest.raises(ConfigError, match=r"none.yaml: based_on: unknown engine 'nonexist'"):
        load_engine(str(tmp_path / "none.yaml"))


@pytest.mark.parametrize(("args", "message"), [
    (["--quantization", "kv_cache=fp8,kv_cache=bf16", "--decode-batch", "2", "--context", "10"], "--quantization: kv_cache given twice"),
    (["--speculative", "method=eagle,method=mtp", "--decode-batch", "2", "--context", "10"], "--speculative: method given twice"),
    (["--prompt", "100", "--output", "10", "--decode-batch", "5", "--tp", "2"], "not with --decode-batch, --tp"),
])
def test_estimate_refuses_options_it_would_ignore(args, message):
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_the_shipped_profile_predicts_the_h100_it_was_not_fitted_on():
    # calibration/h100-vllm-like/iterations.csv: 156 iterations of the efficient engine on a lent
    # H100 (four models; the profile was fitted on an H200). `engine_fit --check` reports the same.
    import yaml

    from tools.fidelity.engine_fit import errors, ordered, predict

    data = ordered(pl.read_csv(REPO / "calibration" / "h100-vllm-like" / "iterations.csv"))
    factors = yaml.safe_load((REPO / "python" / "fleetwise" / "catalog" / "engines" / "vllm.yaml").read_text())["factors"]
    table = errors(data, predict(data, "h100-sxm", factors))
    assert set(table["model"]) == {"llama-3-8b", "llama-3-70b", "mixtral-8x7b", "qwen3-30b-a3b"} and table.height == 156
    err = np.abs(table["error"].to_numpy())
    assert np.median(err) < 0.09 and np.quantile(err, 0.9) < 0.2
    for model, g in table.group_by("model"):
        assert np.median(np.abs(g["error"].to_numpy())) < 0.12, model


def test_built_in_profiles_read_by_libyaml_are_what_the_bounded_loader_reads():
    """Shipped profiles are parsed by the fast loader; a user's file by the bounded one: both
    read every shipped profile the same."""
    import yaml

    from fleetwise.catalog.engine import ENGINES_DIR
    from fleetwise.config.yaml_input import FAST_SAFE_LOADER, parse_yaml

    profiles = sorted(ENGINES_DIR.glob("*.yaml"))
    assert len(profiles) >= 2
    for path in profiles:
        text = path.read_text()
        assert yaml.load(text, Loader=FAST_SAFE_LOADER) == parse_yaml(text, str(path)), path.name
