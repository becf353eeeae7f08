"""``fleetwise estimate``'s option checks: ``--offload-set`` values read as the project's YAML,
settings that would be ignored refused, and the CLI's warnings as one clean line (exit 2 and a
message naming the option for bad input, never a traceback or a silently ignored setting)."""

from __future__ import annotations

import inspect

import pytest

from fleetwise.cli.hardware import estimate, offload_settings
from fleetwise.errors import ConfigError
from fleetwise.estimate import estimate_iteration

from conftest import run_cli

_ESTIMATE = ["estimate", "--model", "mixtral-8x7b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "100"]


def _exit_2(r, *says: str) -> None:
    """``r`` ended with exit code 2, no traceback, and a stderr holding each of ``says``."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]
    for s in says:
        assert s in r.stderr, r.stderr[-2000:]


# --- C1: --offload-set values that are not YAML --------------------------------------------------


@pytest.mark.parametrize("setting, says", [
    ("storage=[1", "--offload-set storage, line 1: invalid YAML"),
    ("overlap=!!python/name:os.system", "--offload-set overlap, line 1: invalid YAML: could not determine a constructor"),
])
def test_offload_set_value_that_is_not_yaml_names_the_option_and_key(setting, says):
    """An unguarded ``yaml.safe_load`` raised a traceback (exit 1) for these."""
    _exit_2(run_cli(*_ESTIMATE, "--offload", "dram", "--offload-set", setting), says)


def test_offload_set_values_are_read_as_yaml():
    assert offload_settings("flash", ["layer_fraction=0.5", "overlap=false", "storage=nvme-gen5", "queue_depth=8"]) == {
        "tier": "flash", "layer_fraction": 0.5, "overlap": False, "storage": "nvme-gen5", "queue_depth": 8}
    assert offload_settings(None, []) is None


@pytest.mark.parametrize("item", ["layer_fraction", "=0.5", "layer_fraction=", " =1"])
def test_offload_set_item_that_is_not_key_value_is_refused(item):
    with pytest.raises(ConfigError, match=r"--offload-set .*expected KEY=VALUE; keys: layer_fraction, .*read_chunk_kb"):
        offload_settings("dram", [item])


# --- C2: settings that only apply with their main option ------------------------------------------


def test_offload_set_without_offload_is_refused():
    """It was silently ignored: the same result as no offload, exit 0."""
    _exit_2(run_cli(*_ESTIMATE, "--offload-set", "layer_fraction=0.5"), "--offload-set 'layer_fraction=0.5': needs --offload dram or --offload flash")
    with pytest.raises(ConfigError, match="needs --offload"):
        offload_settings(None, ["layer_fraction=0.5"])


def test_offload_set_with_prompt_output_is_refused():
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "100", "--output", "10",
                "--offload", "dram", "--offload-set", "layer_fraction=0.5")
    _exit_2(r, "--offload, --offload-set")


def test_context_without_decode_batch_is_refused():
    """``--context`` sizes the decodes' KV cache; with a prefill alone it was silently ignored."""
    with pytest.raises(ConfigError, match=r"--context 500 is the KV cache of each --decode-batch sequence.*--prefill-context"):
        estimate_iteration("llama-3-8b", "h100-sxm", prefill=100, context=500)


# --- C3: the tier, and keys given twice ---------------------------------------------------------------


def test_offload_set_tier_is_refused():
    """``--offload-set tier=flash`` silently overrode ``--offload dram``."""
    with pytest.raises(ConfigError, match=r"--offload-set tier='flash': the tier is --offload's"):
        offload_settings("dram", ["tier=flash"])
    _exit_2(run_cli(*_ESTIMATE, "--offload", "dram", "--offload-set", "tier=flash"), "--offload-set tier='flash': the tier is --offload's (dram or flash)")


def test_offload_set_key_given_twice_is_refused():
    """The last value silently won."""
    with pytest.raises(ConfigError, match=r"--offload-set layer_fraction: given twice"):
        offload_settings("dram", ["layer_fraction=0.5", "layer_fraction=0.25"])
    _exit_2(run_cli(*_ESTIMATE, "--offload", "dram", "--offload-set", "overlap=true", "--offload-set", " overlap=false"),
            "--offload-set overlap: given twice")


# --- C4: --specs help -------------------------------------------------------------------------------------


def test_specs_help_names_every_section_read():
    """``load_specs`` reads gpus, models, pims and storage; the help named only the first three."""
    from fleetwise.config.specs import SECTIONS

    help_text = inspect.signature(estimate).parameters["specs"].default.help
    for section in SECTIONS:
        assert f"{section}:" in help_text, help_text


# --- C5: warnings as one clean line -----------------------------------------------------------------


def test_cli_warning_is_one_line_without_python_source():
    """The draft-not-smaller warning printed Python's ``file:line: UserWarning:`` and the source line."""
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "100",
                "--speculative", "method=draft,draft_model=llama-3-8b,num_speculative_tokens=2,acceptance_rate=0.5")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: --speculative.draft_model: llama-3-8b is not smaller than llama-3-8b; each draft step costs at least a "
        "target decode, so speculation will slow decoding down"], r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr


def test_show_warning_names_other_categories_and_joins_lines(capsys):
    from fleetwise.cli.app import show_warning

    show_warning(UserWarning("plain"), UserWarning, "x.py", 1)
    show_warning(DeprecationWarning("old\nway"), DeprecationWarning, "x.py", 2)
    assert capsys.readouterr().err.splitlines() == ["warning: plain", "warning: DeprecationWarning: old way"]
