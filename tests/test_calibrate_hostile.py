"""``fleetwise calibrate`` on hostile input: measurements of another GPU or model, outputs that would
overwrite inputs, unwritable outputs, --measure without CUDA, and --param that cannot matter. Each
must be a clear error (exit 2, no traceback) rather than a wrong number with exit 0."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from fleetwise.calibrate.fit import Measurements, check_device, check_model, fit_calibration
from fleetwise.catalog import builtin_gpus, builtin_models
from fleetwise.errors import ConfigError

from conftest import REPO, run_cli

H100 = REPO / "calibration" / "h100"
CPU_SCENARIO = REPO / "tests" / "data" / "vllm_cpu_tiny.yaml"
HEAD = "arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n"


@pytest.fixture
def data(tmp_path) -> Path:
    """A copy of the recorded H100 measurements without their fit (calibrate writes it)."""
    d = tmp_path / "d"
    shutil.copytree(H100, d, ignore=shutil.ignore_patterns("*.yaml", "*.md", "serving"))
    return d


def _clean(r, out: Path | None = None) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    if out is not None:
        assert not out.exists()


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


# 1. Measurements of one GPU fitted against another's datasheet.

@pytest.mark.parametrize("gpu", ["a100-80gb-sxm", "l4"])
def test_measurements_faster_than_the_gpu_roofline_are_refused(data, tmp_path, gpu):
    # Every factor used to be written as 1.0 (the grid's ceiling), exit 0.
    out = tmp_path / "fitted.yaml"
    r = run_cli("calibrate", "--data", str(data), "--gpu", gpu, "-o", str(out))
    _clean(r, out)
    assert "ceiling" in r.stderr and "memory" in r.stderr, r.stderr
    assert "NVIDIA H100 80GB HBM3" in r.stderr and f"--gpu {gpu}" in r.stderr and "may differ" in r.stderr, r.stderr
    assert not (data / "fitted.yaml").exists()


def test_ceiling_is_refused_without_a_device_name(data):
    # The roofline check alone (device.json names no GPU, so no name comparison can help).
    (data / "device.json").write_text(json.dumps({"torch": "-"}))
    m = Measurements.load(data)
    with pytest.raises(ConfigError, match=r"fitted at its ceiling.*--gpu a100-80gb-sxm may differ"):
        fit_calibration(m, builtin_gpus()["a100-80gb-sxm"], builtin_models()["llama-3-8b"], gpu_name="a100-80gb-sxm")


def test_measurements_far_below_the_roofline_are_refused(data):
    # 200x slower GEMMs: the factors would sit at the grid's floor 0.02, not the truth.
    rows = list(csv.DictReader((data / "gemm.csv").open()))
    with (data / "gemm.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "seconds": float(r["seconds"]) * 200} for r in rows)
    with pytest.raises(ConfigError, match="fitted at its floor"):
        fit_calibration(Measurements.load(data), builtin_gpus()["h100-sxm"], builtin_models()["llama-3-8b"], gpu_name="h100-sxm")


def test_device_name_of_another_catalogue_gpu_is_refused(data, tmp_path):
    # H100 data against H200 peaks fitted plausible but wrong factors (memory 0.49), exit 0.
    out = tmp_path / "fitted.yaml"
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h200", "-o", str(out))
    _clean(r, out)
    assert "NVIDIA H100 80GB HBM3" in r.stderr and "--gpu h200" in r.stderr and "h100-sxm" in r.stderr, r.stderr


def test_device_name_check_accepts_matches_and_unknown_chips(data):
    gpus = builtin_gpus()
    m = Measurements.load(data)
    assert check_device(m, gpus["h100-sxm"], "h100-sxm", gpus) is None
    (data / "device.json").write_text(json.dumps({"name": "NVIDIA A100-SXM4-80GB"}))
    assert check_device(Measurements.load(data), gpus["a100-80gb-sxm"], "a100-80gb-sxm", gpus) is None
    (data / "device.json").write_text(json.dumps({"name": "NVIDIA H800"}))
    warning = check_device(Measurements.load(data), gpus["h100-sxm"], "h100-sxm", gpus)
    assert warning is not None and "NVIDIA H800" in warning


def test_matching_gpu_still_fits(data):
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm")
    assert r.returncode == 0, r.stderr
    fitted = yaml.safe_load((data / "fitted.yaml").read_text())
    assert fitted["gemm_compute"] == pytest.approx(0.7025, abs=0.005)


# 2. A --model other than the one whose forward passes were measured.

def test_model_other_than_the_measured_one_is_refused(data, tmp_path):
    # mixtral-8x7b wrote a fit with a median error of 127%, exit 0.
    out = tmp_path / "fitted.yaml"
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "--model", "mixtral-8x7b", "-o", str(out))
    _clean(r, out)
    assert "--model mixtral-8x7b" in r.stderr and "llama-3-8b" in r.stderr and "num_experts" in r.stderr, r.stderr
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "--model", "llama-2-7b", "-o", str(out))
    _clean(r, out)
    assert "--model llama-2-7b" in r.stderr and "llama-3-8b" in r.stderr, r.stderr


def test_model_recorded_in_device_json_wins(data):
    models = builtin_models()
    shape = {k: v for k, v in models["llama-2-7b"].model_dump().items() if k in ("num_layers", "hidden_size", "vocab_size", "num_experts")}
    (data / "device.json").write_text(json.dumps({"name": "x", "model": {"name": "llama-2-7b", **shape}}))
    m = Measurements.load(data)
    check_model(m, models["llama-2-7b"], "llama-2-7b")
    with pytest.raises(ConfigError, match="--model llama-3-8b: .* measured on llama-2-7b"):
        check_model(m, models["llama-3-8b"], "llama-3-8b")


# 3. Outputs overwriting inputs.

def test_output_inside_the_data_directory_is_refused(data):
    before = _snapshot(data)
    for name in ("gemm.csv", "device.json"):
        r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "-o", str(data / name))
        _clean(r)
        assert "--data directory" in r.stderr and name in r.stderr, r.stderr
    assert _snapshot(data) == before
    # The default output (DATA/fitted.yaml) may be replaced, also when named.
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "-o", str(data / "fitted.yaml"))
    assert r.returncode == 0, r.stderr


def _log(tmp_path: Path, n: int = 8) -> Path:
    log = tmp_path / "log.csv"
    log.write_text(HEAD + "".join(f"{i},{i + 0.05},{i + 0.3},100,8\n" for i in range(n)))
    return log


def test_output_equal_to_the_request_log_or_scenario_is_refused(tmp_path):
    log = _log(tmp_path)
    scenario = tmp_path / "scenario.yaml"
    shutil.copy(CPU_SCENARIO, scenario)
    for target, option in ((log, "--requests"), (scenario, "--scenario"), (tmp_path / "." / "log.csv", "--requests")):
        before = target.read_bytes()
        r = run_cli("calibrate", "--requests", str(log), "--scenario", str(scenario), "--param", "iteration_overhead",
                    "--metric", "ttft", "-o", str(target))
        _clean(r)
        assert option in r.stderr and "overwrite" in r.stderr, r.stderr
        assert target.read_bytes() == before


# 4. Unwritable outputs.

def test_output_that_is_a_directory_is_refused(data, tmp_path):
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "-o", str(tmp_path))
    _clean(r)
    assert "is a directory" in r.stderr and str(tmp_path) in r.stderr, r.stderr


def test_output_in_a_new_directory_is_written(data, tmp_path):
    # FileNotFoundError (exit 1) after the fit; now the directory is made, as --requests does.
    out = tmp_path / "new" / "sub" / "fitted.yaml"
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "-o", str(out))
    assert r.returncode == 0 and out.exists(), r.stderr


def test_output_under_a_file_is_refused(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("calibrate", "--data", str(data), "--gpu", "h100-sxm", "-o", str(blocker / "x.yaml"))
    _clean(r)
    assert str(blocker) in r.stderr, r.stderr


# 5. --measure without CUDA.

def test_measure_without_cuda_is_a_clear_error(tmp_path, monkeypatch):
    # The child's torch traceback, then the parent's CalledProcessError, exit 1.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "")
    out = tmp_path / "fitted.yaml"
    r = run_cli("calibrate", "--data", str(tmp_path / "m"), "--gpu", "h100-sxm", "--measure", "-o", str(out))
    _clean(r, out)
    assert "measuring needs a CUDA GPU and PyTorch" in r.stderr and "measure_gpu.py failed" in r.stderr, r.stderr
    assert "CalledProcessError" not in r.stderr


# 6. --param that cannot affect the model.

@pytest.mark.parametrize("param", ["moe_layer_overhead", "moe_dispatch_memory"])
def test_moe_parameter_on_a_dense_model_is_refused(tmp_path, param):
    # 43 replays and "2 parameter(s) fitted" with nothing changed, exit 0.
    out = tmp_path / "p.yaml"
    r = run_cli("calibrate", "--requests", str(_log(tmp_path)), "--scenario", str(CPU_SCENARIO), "--param", "iteration_overhead",
                "--param", param, "--metric", "ttft", "-o", str(out))
    _clean(r, out)
    assert f"--param {param}" in r.stderr and "tiny-llama" in r.stderr and "no expert" in r.stderr, r.stderr
