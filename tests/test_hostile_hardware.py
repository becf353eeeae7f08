"""Hostile hardware, offload, MoE, quantization and speculative settings: each is refused with an
error naming the field (exit 2 from the CLI), never accepted into a run whose numbers are wrong."""

from __future__ import annotations

import json
import re

import pytest

import fleetwise
from fleetwise.cluster import core_config
from fleetwise.errors import ConfigError
from fleetwise.estimate import estimate_iteration

from conftest import run_cli, small_scenario

_MOE_POOL = {"name": "main", "gpu": "gh200", "model": "mixtral-8x7b"}


def _pool(**fields) -> dict:
    """A scenario of one small pool with ``fields`` added to it."""
    sc = small_scenario()
    sc["cluster"]["pools"] = [{"name": "main", "gpu": "h100-sxm", "model": "llama-3-8b", **fields}]
    sc["workload"]["requests"] = 5
    return sc


def _resolve(sc: dict) -> dict:
    """The core configuration of ``sc`` (where pool-level lookups and checks run)."""
    return core_config(fleetwise.scenario_from_dict(sc))


def _cli_error(write_yaml, sc: dict) -> str:
    """Runs ``sc`` through ``fleetwise run``: exit 2, no traceback; returns stderr."""
    p = write_yaml(sc)
    r = run_cli("run", str(p), "-o", str(p.parent / "out"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert str(p) in r.stderr
    return r.stderr


# --- fleetwise estimate --specs reads storage: -------------------------------------------------


def test_specs_file_storage_section_is_read(tmp_path):
    """docs/offload.md: ``estimate --specs FILE`` reads the file's ``storage:`` drives (it used to
    drop them, so a drive defined there was 'unknown')."""
    from fleetwise.config.specs import load_specs

    f = tmp_path / "specs.yaml"
    f.write_text("storage:\n  slow-ssd: {read_bandwidth: 1.0e9, latency: 1.0e-4}\n")
    specs = load_specs(f)
    assert "slow-ssd" in specs.storage
    slow = estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=1, context=100, specs=specs, offload={"tier": "flash", "storage": "slow-ssd"})
    fast = estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=1, context=100, offload={"tier": "flash", "storage": "nvme-gen5"})
    assert slow["seconds"] > 2 * fast["seconds"]


# --- drives and PIM devices: figures a GPU would be refused -----------------------------------


@pytest.mark.parametrize("field,value", [("read_bandwidth", 1e-300), ("latency", 1e308), ("iops", 1e-300)])
def test_absurd_drive_is_refused_by_its_own_field(write_yaml, field, value):
    """A drive figure that makes a read take forever names the drive's field, not the pool's
    calibration (the core's 'absurdly slow' check used to blame the GPU and calibration)."""
    drive = {"read_bandwidth": 6e9, "latency": 8e-5, "iops": 1e5, field: value}
    sc = _pool(offload={"tier": "flash", "storage": "ssd"})
    sc["storage"] = {"ssd": drive}
    err = _cli_error(write_yaml, sc)
    assert f"storage.ssd.{field}" in err
    assert "calibration" not in err


@pytest.mark.parametrize("field,value", [("peak_flops", 1e-300), ("internal_bandwidth", 1e-300), ("efficiency", 1e-300)])
def test_absurd_pim_is_refused(field, value):
    """A PIM too slow to ever win the dispatch was silently the GPU alone: now an error."""
    sc = _pool(pim="p")
    sc["pims"] = {"p": {"peak_flops": 3e13, "internal_bandwidth": 3e13, "efficiency": 0.8, field: value}}
    with pytest.raises(ConfigError, match=rf"pims\.p\.{field}"):
        fleetwise.scenario_from_dict(sc)


# --- figures too large for any hardware ---------------------------------------------------------

_GPU = {"peak_flops": 989e12, "fp8_peak_flops": 1979e12, "memory_bytes": 80e9, "memory_bandwidth": 3.35e12, "link_bandwidth": 450e9,
        "architecture": "hopper", "memory_type": "hbm"}


@pytest.mark.parametrize("field, limit", [("peak_flops", "1e+18 FLOP/s"), ("fp8_peak_flops", "1e+18 FLOP/s"), ("memory_bandwidth", "1e+16 bytes/s"),
                                          ("link_bandwidth", "1e+16 bytes/s"), ("nic_bandwidth", "1e+16 bytes/s"), ("host_link_bandwidth", "1e+16 bytes/s")])
def test_gpu_figure_past_any_hardware_is_refused(field, limit):
    """``peak_flops: 1e308`` ran with next to no compute time, exit 0."""
    sc = _pool(gpu="g")
    sc["gpus"] = {"g": {**_GPU, field: 1e308}}
    with pytest.raises(ConfigError, match=rf"gpus\.g\.{field}: must be at most {re.escape(limit)}, got 1e\+308: no hardware is that fast"):
        fleetwise.scenario_from_dict(sc)
    sc["gpus"] = {"g": {**_GPU, field: float(limit.split()[0])}}  # the bound itself is accepted
    fleetwise.scenario_from_dict(sc)


@pytest.mark.parametrize("section, entry, field, limit", [("pims", {"peak_flops": 3e13, "internal_bandwidth": 3e13}, "peak_flops", "1e+18 FLOP/s"),
                                                          ("pims", {"peak_flops": 3e13, "internal_bandwidth": 3e13}, "internal_bandwidth", "1e+16 bytes/s"),
                                                          ("storage", {"read_bandwidth": 6e9}, "read_bandwidth", "1e+13 bytes/s")])
def test_pim_and_drive_figures_past_any_hardware_are_refused(section, entry, field, limit):
    sc = _pool()
    sc[section] = {"x": {**entry, field: 1e308}}
    with pytest.raises(ConfigError, match=rf"{section}\.x\.{field}: must be at most {re.escape(limit)}, got 1e\+308"):
        fleetwise.scenario_from_dict(sc)


def test_specs_file_gpu_past_any_hardware_is_refused(tmp_path):
    """The same bound for a GPU in ``estimate --specs``: exit 2 naming the file and field."""
    f = tmp_path / "specs.yaml"
    f.write_text("gpus:\n  g: {peak_flops: 1.0e308, memory_bytes: 80.0e9, memory_bandwidth: 3.0e12, link_bandwidth: 4.0e11, "
                 "architecture: hopper, memory_type: hbm}\n")
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "g", "--specs", str(f), "--decode-batch", "1", "--context", "100")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{f}: gpus.g.peak_flops: must be at most 1e+18 FLOP/s, got 1e+308" in r.stderr, r.stderr


def test_catalogue_is_within_the_bounds():
    from fleetwise.catalog import builtin_gpus, builtin_pims, builtin_storage

    assert builtin_gpus() and builtin_pims() and builtin_storage()  # each validated on load


# --- MoE ---------------------------------------------------------------------------------------


def test_moe_model_without_moe_layers_is_refused():
    """``moe_layer_interval`` past the layers left no MoE layer: the expert settings were silently
    unused ('all in HBM' with placement dram)."""
    model = {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "num_kv_heads": 8, "head_dim": 64, "intermediate_size": 1024, "vocab_size": 1000,
             "max_position_embeddings": 4096, "num_experts": 8, "experts_per_token": 2, "moe_intermediate_size": 256, "moe_layer_interval": 100}
    sc = _pool(model="m", experts={"placement": "dram"})
    sc["models"] = {"m": model}
    with pytest.raises(ConfigError, match=r"models\.m: a MoE model .* needs at least one layer with experts"):
        fleetwise.scenario_from_dict(sc)


def test_hf_config_sparse_step_past_the_layers_is_refused(tmp_path):
    """The same through a Qwen2-MoE ``config.json`` whose ``decoder_sparse_step`` exceeds its layers."""
    cfg = {"model_type": "qwen2_moe", "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 8,
           "intermediate_size": 2816, "moe_intermediate_size": 512, "num_experts": 16, "num_experts_per_tok": 2, "vocab_size": 32000,
           "max_position_embeddings": 4096, "decoder_sparse_step": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sc = _pool(model="q")
    sc["models"] = {"q": {"hf_config": "config.json"}}
    with pytest.raises(ConfigError, match="needs at least one layer with experts"):
        fleetwise.scenario_from_dict(sc, base_dir=tmp_path)


def test_zero_staging_buffers_are_refused():
    """No staging buffer left no room for a fetched expert, yet the run reported all of the experts'
    HBM as saved."""
    sc = small_scenario()
    sc["cluster"]["pools"] = [{**_MOE_POOL, "experts": {"placement": "dram", "staging_experts": 0}}]
    with pytest.raises(ConfigError, match=r"experts\.staging_experts.*greater than or equal to 1"):
        fleetwise.scenario_from_dict(sc)


@pytest.mark.parametrize("field,value", [("staging_experts", 4), ("capacity_gb", 10), ("storage", "nvme-gen5"), ("read_chunk_kb", 64)])
def test_offload_only_expert_settings_with_hbm_placement_are_refused(field, value):
    """With every expert in HBM these settings were ignored without a word."""
    sc = small_scenario()
    sc["cluster"]["pools"] = [{**_MOE_POOL, "experts": {"placement": "hbm", field: value}}]
    with pytest.raises(ConfigError, match=rf"cluster\.pools\.0\.experts\.{field}: applies to offloaded experts"):
        _resolve(sc)


def test_unknown_expert_drive_is_refused_with_dram_placement():
    """A misspelt drive name was accepted until the placement was switched to flash."""
    sc = small_scenario()
    sc["cluster"]["pools"] = [{**_MOE_POOL, "experts": {"placement": "dram", "storage": "nvme-gen9"}}]
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.experts\.storage: unknown storage 'nvme-gen9'"):
        _resolve(sc)


def test_unknown_offload_drive_is_refused_with_dram_tier():
    """The same for weight offload, in a scenario and in ``estimate``."""
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.offload\.storage: unknown storage 'nvme-gen9'"):
        _resolve(_pool(offload={"tier": "dram", "storage": "nvme-gen9"}))
    with pytest.raises(ConfigError, match=r"--offload\.storage: unknown storage 'nvme-gen9'"):
        estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=1, context=100, offload={"tier": "dram", "storage": "nvme-gen9"})


# --- speculative decoding and quantization ------------------------------------------------------


def test_boolean_in_a_per_position_acceptance_list_is_refused():
    """``[true, 0.5, 0.5]`` was read as ``[1.0, 0.5, 0.5]``."""
    sc = _pool(speculative={"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": [True, 0.5, 0.5]})
    with pytest.raises(ConfigError, match=r"acceptance_rate\.list\[float\]\.0: .*true, a boolean"):
        fleetwise.scenario_from_dict(sc)


def test_int4_group_size_must_divide_the_hidden_size():
    """A group of 100 inputs (or one wider than the row) is no AWQ/GPTQ layout; it was priced anyway."""
    with pytest.raises(ConfigError, match=r"cluster\.pools\.0\.quantization\.group_size: 100 does not divide llama-3-8b's hidden_size 4096"):
        _resolve(_pool(quantization={"weights": "int4", "group_size": 100}))
    with pytest.raises(ConfigError, match=r"--quantization\.group_size: 8192 does not divide"):
        estimate_iteration("llama-3-8b", "h100-sxm", decode_batch=1, context=100, quantization={"weights": "int4", "group_size": 8192})
    _resolve(_pool(quantization={"weights": "int4", "group_size": 64}))


# --- engine profiles ----------------------------------------------------------------------------


def test_redefined_catalogue_gpu_does_not_take_the_profiles_exact_factors():
    """A scenario GPU named like a catalogue one but with its own ``hardware:`` block got the
    profile's ``per_gpu`` factors measured on the catalogue's part, its own figures silently
    ignored; a redefinition that changes only the price keeps them."""
    from fleetwise.catalog import builtin_gpus
    from fleetwise.catalog.engine import resolve_calibration

    h100 = builtin_gpus()["h100-sxm"]
    measured = resolve_calibration("h100-sxm", h100, "fleetwise-torch")
    slower = h100.model_copy(update={"hardware": h100.hardware.model_copy(update={"memory": 0.1}) if h100.hardware else None,
                                     "memory_bandwidth": h100.memory_bandwidth / 2})
    assert resolve_calibration("h100-sxm", slower, "fleetwise-torch") == resolve_calibration("my-h100", slower, "fleetwise-torch")
    assert resolve_calibration("h100-sxm", slower, "fleetwise-torch") != measured
    repriced = h100.model_copy(update={"price_per_hour": 9.0})
    assert resolve_calibration("h100-sxm", repriced, "fleetwise-torch") == measured


def test_a_users_profile_keeps_its_per_gpu_factors_on_its_own_gpu_definition(tmp_path):
    """A profile of the user's own (as ``calibrate --requests`` writes it) was fitted on the
    scenario's GPU, whatever its figures: its ``per_gpu`` entry applies even where that GPU
    redefines a catalogue name (the built-in profiles' entries do not)."""
    from fleetwise.catalog import builtin_gpus
    from fleetwise.catalog.engine import resolve_calibration

    (tmp_path / "mine.yaml").write_text("based_on: vllm\nper_gpu:\n  h100-sxm: {gemm_compute: 0.1234}\n")
    h100 = builtin_gpus()["h100-sxm"]
    other_link = h100.model_copy(update={"link_bandwidth": 4e11})
    assert resolve_calibration("h100-sxm", other_link, str(tmp_path / "mine.yaml")).gemm_compute == 0.1234
    assert resolve_calibration("h100-sxm", h100, str(tmp_path / "mine.yaml")).gemm_compute == 0.1234


def test_the_schemas_hardware_bounds_are_the_cores():
    """The scenario schema refuses a figure with the core's own bounds (same numbers, so a figure
    is never accepted by one and refused by the other): each Python constant equals the Rust one."""
    import re

    import fleetwise.catalog as catalog
    from conftest import REPO

    rust = {}
    for source in ("hardware.rs", "offload.rs"):
        for name, value in re.findall(r"pub const ([A-Z_]+): f64 = ([0-9.e_]+);", (REPO / "rust" / "core" / "src" / source).read_text()):
            rust[name] = float(value.replace("_", ""))
    for name in ("MIN_PEAK_FLOPS", "MIN_BANDWIDTH", "MAX_LATENCY", "MAX_PEAK_FLOPS", "MAX_BANDWIDTH", "MAX_DRIVE_BANDWIDTH"):
        assert getattr(catalog, name) == rust[name], name


@pytest.mark.parametrize("dtype_bytes", [3, 5, 7])
def test_a_model_dtype_of_no_number_format_is_refused(write_yaml, dtype_bytes):
    """``dtype_bytes`` 1 to 8 were accepted; 3, 5, 6 and 7 bytes are no number format (a 3-byte
    dtype ran with 1.5x the 16-bit weights and KV)."""
    sc = _pool(model="mine")
    sc["models"] = {"mine": {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "num_kv_heads": 8, "head_dim": 64, "intermediate_size": 1024,
                             "vocab_size": 1000, "max_position_embeddings": 4096, "dtype_bytes": dtype_bytes}}
    err = _cli_error(write_yaml, sc)
    assert "models.mine.dtype_bytes" in err and "1, 2, 4 or 8" in err, err
    sc["models"]["mine"]["dtype_bytes"] = 4  # a 32-bit model still runs
    assert fleetwise.scenario_from_dict(sc).cluster.pools[0].model == "mine"
