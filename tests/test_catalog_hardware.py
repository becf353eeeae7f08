"""GPU architecture, memory type and hardware fractions: the catalogue and scenario layer.

A GPU defined from its datasheet alone (architecture and memory type, no calibration) validates and
gets its family's prior; an explicit ``hardware:`` block wins over the prior; bad values are errors
naming the field path and the allowed values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import small_scenario
from fleetwise.catalog import GpuSpec, builtin_gpus
from fleetwise.catalog.hardware import (
    ARCHITECTURES,
    MEMORY_TYPES,
    PRIORS_FILE,
    HardwareFractions,
    architecture_priors,
    hardware_fractions,
    prior_for,
)
from fleetwise.config.load import scenario_from_dict
from fleetwise.errors import ConfigError

NEW_GPUS = ("l4", "a10g", "rtx-4090", "rtx-pro-6000-blackwell", "h100-nvl", "gb200", "mi325x")
"""GPUs added from their datasheets alone, with no calibration block."""


def _datasheet_gpu(**over) -> dict:
    """An RTX 6000 Ada as a user would define it from its datasheet: no calibration, no hardware block."""
    gpu = {"description": "NVIDIA RTX 6000 Ada 48GB", "architecture": "ada", "memory_type": "gddr",
           "peak_flops": 364.2e12, "memory_bytes": 48e9, "memory_bandwidth": 0.96e12, "sm_count": 142,
           "link": "pcie4", "link_bandwidth": 32e9, "host_link_bandwidth": 32e9, "tdp_watts": 300}
    gpu.update(over)
    return gpu


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data, "sc.yaml")
    return str(info.value)


def test_every_catalogue_gpu_names_a_known_architecture_and_memory_type_with_a_prior():
    gpus = builtin_gpus()
    assert len(gpus) >= 16
    for name, gpu in gpus.items():
        assert gpu.architecture in ARCHITECTURES, name
        assert gpu.memory_type in MEMORY_TYPES, name
        assert gpu.hardware is not None or prior_for(gpu.architecture, gpu.memory_type) is not None, name
    kinds = {n: (g.architecture, g.memory_type) for n, g in gpus.items()}
    assert kinds["h200"] == ("hopper", "hbm") and kinds["l40s"] == ("ada", "gddr") and kinds["mi325x"] == ("cdna3", "hbm")
    assert kinds["rtx-pro-6000-blackwell"] == ("blackwell", "gddr") and kinds["a10g"] == ("ampere", "gddr")


def test_no_catalogue_gpu_carries_engine_factors():
    """Engine factors live in engine profiles: no catalogue GPU has a calibration block; only the
    measured GPUs have a hardware block, the new ones neither."""
    gpus = builtin_gpus()
    assert all(g.calibration is None for g in gpus.values())
    assert gpus["h100-sxm"].hardware is not None and gpus["h200"].hardware is not None
    for name in NEW_GPUS:
        assert gpus[name].hardware is None, name


def test_new_gpus_carry_their_datasheet_numbers():
    gpus = builtin_gpus()
    # Dense 16-bit tensor peaks (sparse / 2), memory, per-direction links.
    assert gpus["l4"].peak_flops == pytest.approx(121e12) and gpus["l4"].memory_bandwidth == pytest.approx(300e9)
    assert gpus["h100-nvl"].peak_flops == pytest.approx(835.5e12) and gpus["h100-nvl"].memory_bytes == pytest.approx(94e9)
    assert gpus["gb200"].peak_flops == pytest.approx(2500e12) and gpus["gb200"].link_bandwidth == pytest.approx(900e9)
    assert gpus["mi325x"].memory_bytes == pytest.approx(256e9) and gpus["mi325x"].memory_bandwidth == pytest.approx(6e12)
    for name in ("l4", "a10g", "rtx-4090"):
        assert gpus[name].link == "pcie4" and gpus[name].link_bandwidth == pytest.approx(32e9)
    assert gpus["rtx-pro-6000-blackwell"].link == "pcie5" and gpus["rtx-pro-6000-blackwell"].link_bandwidth == pytest.approx(64e9)


def test_measured_gpus_use_their_hardware_block_and_others_their_prior():
    gpus = builtin_gpus()
    h200 = hardware_fractions(gpus["h200"])
    assert (h200.gemm_compute, h200.memory, h200.collective) == (0.705, 0.61, 0.5425)
    # The hardware block repeats the operator fit's hardware factors (calibration/h200/fitted.yaml).
    fitted = yaml.safe_load((Path(__file__).parents[1] / "calibration" / "h200" / "fitted.yaml").read_text())
    assert (h200.gemm_compute, h200.memory) == (fitted["gemm_compute"], fitted["memory"])
    assert hardware_fractions(gpus["h100-nvl"]) == HardwareFractions(gemm_compute=0.70, memory=0.65, collective=0.54, fp8_gemm_compute=0.59)
    # A measured block without an FP8 fraction takes its family's; a family without one has none.
    assert h200.fp8_gemm_compute == prior_for("hopper", "hbm").fp8_gemm_compute.value == 0.59
    assert hardware_fractions(gpus["b200"]).fp8_gemm_compute is None
    assert hardware_fractions(gpus["mi325x"]) == prior_for("cdna3", "hbm").fractions()
    assert hardware_fractions(gpus["mi325x"]).gemm_compute == pytest.approx(0.50)


def test_priors_file_covers_the_families_and_states_basis_and_error():
    priors = architecture_priors()
    assert set(priors) == {"hopper/hbm", "ampere/hbm", "ampere/gddr", "ada/gddr", "blackwell/hbm", "blackwell/gddr", "cdna3/hbm"}
    for key, prior in priors.items():
        for factor in (prior.gemm_compute, prior.memory, prior.collective):
            assert 0.01 <= factor.value <= 1 and 0 < factor.expected_error < 0.5, key
            assert factor.basis in ("measured", "public", "guess") and len(factor.source) > 40, key
    hopper = priors["hopper/hbm"]
    assert hopper.gemm_compute.basis == hopper.memory.basis == hopper.collective.basis == "measured"
    # The Hopper prior is the mean of the two measured GPUs, within its stated error of each.
    gpus = builtin_gpus()
    for name in ("h100-sxm", "h200"):
        hw = gpus[name].hardware
        assert abs(hw.gemm_compute - hopper.gemm_compute.value) <= hopper.gemm_compute.expected_error
        assert abs(hw.memory - hopper.memory.value) <= hopper.memory.expected_error


def test_user_gpu_from_datasheet_only_validates_and_gets_the_prior():
    sc = scenario_from_dict(small_scenario(gpus={"rtx6000ada": _datasheet_gpu()}), "sc.yaml")
    gpu = sc.gpus["rtx6000ada"]
    assert gpu.calibration is None and gpu.hardware is None
    hw = hardware_fractions(gpu, "gpus.rtx6000ada")
    assert hw == HardwareFractions(gemm_compute=0.70, memory=0.62, collective=0.60)


def test_explicit_hardware_block_wins_over_the_prior():
    sc = scenario_from_dict(small_scenario(gpus={"g": _datasheet_gpu(hardware={"gemm_compute": 0.81, "memory": 0.77, "collective": 0.66})}), "sc.yaml")
    hw = hardware_fractions(sc.gpus["g"])
    assert (hw.gemm_compute, hw.memory, hw.collective) == (0.81, 0.77, 0.66)
    assert hw != prior_for("ada", "gddr").fractions()


def test_legacy_gpu_with_only_a_calibration_still_validates_and_reads_its_hardware_factors():
    cal = {"gemm_compute": 0.7025, "attention_compute": 0.43, "memory": 0.6975, "collective": 0.5425, "iteration_overhead": 0.0}
    sc = scenario_from_dict(small_scenario(gpus={"old": {"peak_flops": 1e15, "memory_bytes": 80e9, "memory_bandwidth": 3e12, "link_bandwidth": 4e11, "calibration": cal}}), "sc.yaml")
    hw = hardware_fractions(sc.gpus["old"])
    assert (hw.gemm_compute, hw.memory, hw.collective) == (0.7025, 0.6975, 0.5425)


def test_bad_architecture_names_the_field_path_and_the_allowed_values():
    msg = _error(small_scenario(gpus={"g": _datasheet_gpu(architecture="volta")}))
    assert "sc.yaml: gpus.g.architecture:" in msg
    for allowed in ARCHITECTURES:
        assert f"'{allowed}'" in msg
    assert "'volta'" in msg


def test_bad_memory_type_names_the_field_path_and_the_allowed_values():
    msg = _error(small_scenario(gpus={"g": _datasheet_gpu(memory_type="lpddr")}))
    assert "gpus.g.memory_type:" in msg and "'hbm'" in msg and "'gddr'" in msg


def test_gpu_without_any_efficiency_source_is_an_error_naming_what_to_give():
    gpu = _datasheet_gpu()
    del gpu["architecture"], gpu["memory_type"]
    msg = _error(small_scenario(gpus={"g": gpu}))
    assert "gpus.g:" in msg and "architecture" in msg and "hardware" in msg and "calibration" in msg
    assert "ampere, ada, hopper, blackwell, cdna3" in msg


def test_architecture_without_memory_type_is_an_error():
    gpu = _datasheet_gpu()
    del gpu["memory_type"]
    msg = _error(small_scenario(gpus={"g": gpu}))
    assert "gpus.g:" in msg and "architecture and memory_type go together" in msg


def test_family_without_a_prior_needs_a_hardware_block():
    msg = _error(small_scenario(gpus={"g": _datasheet_gpu(architecture="hopper", memory_type="gddr")}))
    assert "gpus.g:" in msg and "no architecture prior for hopper/gddr" in msg and "hardware" in msg
    ok = scenario_from_dict(small_scenario(gpus={"g": _datasheet_gpu(architecture="hopper", memory_type="gddr", hardware={"gemm_compute": 0.6, "memory": 0.6, "collective": 0.5})}), "sc.yaml")
    assert hardware_fractions(ok.gpus["g"]).gemm_compute == 0.6


@pytest.mark.parametrize("field, value", [("gemm_compute", 0.001), ("memory", 1.5), ("collective", 0.0)])
def test_hardware_fractions_outside_their_range_name_the_field(field, value):
    hw = {"gemm_compute": 0.7, "memory": 0.7, "collective": 0.5, field: value}
    msg = _error(small_scenario(gpus={"g": _datasheet_gpu(hardware=hw)}))
    assert f"gpus.g.hardware.{field}:" in msg


def test_catalogue_entry_without_architecture_is_rejected(tmp_path, monkeypatch):
    import fleetwise.catalog as catalog

    raw = yaml.safe_load((catalog._HERE / "gpus.yaml").read_text())
    entry = dict(raw["l40s"])
    entry.pop("calibration", None)
    del entry["architecture"], entry["memory_type"]
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump({"l40s": entry}))
    monkeypatch.setattr(catalog, "_HERE", tmp_path)
    catalog.builtin_gpus.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"gpus\.yaml: l40s: .*needs architecture"):
            catalog.builtin_gpus()
    finally:
        monkeypatch.undo()
        catalog.builtin_gpus.cache_clear()
    assert "l40s" in catalog.builtin_gpus()


def test_malformed_priors_file_names_the_file_and_field(tmp_path, monkeypatch):
    import fleetwise.catalog.hardware as hardware

    raw = yaml.safe_load(PRIORS_FILE.read_text())
    raw["priors"]["ada/gddr"]["memory"]["value"] = 2.0
    bad = tmp_path / "architectures.yaml"
    bad.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(hardware, "PRIORS_FILE", bad)
    hardware.architecture_priors.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"priors\.ada/gddr: memory\.value"):
            hardware.architecture_priors()
    finally:
        monkeypatch.undo()
        hardware.architecture_priors.cache_clear()
    assert "ada/gddr" in hardware.architecture_priors()


def test_gpu_spec_validates_without_a_scenario():
    gpu = GpuSpec.model_validate(_datasheet_gpu(architecture="blackwell", memory_type="hbm"))
    assert hardware_fractions(gpu) == prior_for("blackwell", "hbm").fractions()


def test_docs_datasheet_example_validates_and_gets_the_ada_prior():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "catalog.md").read_text()
    section = text[text.index("## Defining a GPU from its datasheet"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    gpus = yaml.safe_load(block[: block.index("```")])["gpus"]
    sc = scenario_from_dict(small_scenario(gpus=gpus), "docs/catalog.md")
    (name, gpu), = sc.gpus.items()
    assert gpu.calibration is None and gpu.architecture == "ada"
    assert hardware_fractions(gpu, f"gpus.{name}") == prior_for("ada", "gddr").fractions()
