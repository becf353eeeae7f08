"""Hostile scenario input is refused with a clear error naming the file and field, before any large
allocation, and never hangs, recurses too deep or prints a traceback (issue 12)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys

import numpy as np
import pytest

from fleetwise.config.limits import MAX_HASH_ENTRIES, MAX_YAML_DEPTH
from fleetwise.config.load import load_scenario, scenario_from_dict
from fleetwise.errors import ConfigError
from fleetwise.workload import build_workload
from fleetwise.workload.config import WorkloadConfig

from conftest import REPO, small_scenario


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data, "sc.yaml")
    return str(info.value)


def _cli_limited(*args: str, memory_gb: float = 4.0) -> subprocess.CompletedProcess:
    """``python -m fleetwise ARGS`` with its address space capped, so a blow-up fails fast."""
    limit = int(memory_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, cwd=REPO,
        timeout=300, preexec_fn=cap,
    )


# --- memory blow-ups: refused before anything is allocated ----------------------------------------


def test_prefix_longer_than_every_context_names_prefix_tokens():
    sc = small_scenario()
    sc["workload"]["prefixes"] = {"groups": 4, "prefix_tokens": 10_000_000, "fraction": 1.0}
    err = _error(sc)
    assert "sc.yaml: workload.prefixes.prefix_tokens" in err
    assert "prompt + output <= 8192" in err and "llama-3-8b" in err


def test_constant_prompt_longer_than_context_names_prompt():
    sc = small_scenario()
    sc["workload"]["lengths"] = {"kind": "constant", "prompt": 1_000_000, "output": 10}
    err = _error(sc)
    assert "workload.lengths.prompt:" in err and "1000000 prompt + 10 output" in err


def test_uniform_minimum_longer_than_context_names_prompt_min():
    sc = small_scenario()
    sc["workload"]["lengths"] = {"kind": "uniform", "prompt_min": 9000, "prompt_max": 9001, "output_min": 1, "output_max": 2}
    assert "workload.lengths.prompt_min" in _error(sc)


def test_vllm_prompt_cap_counts_for_the_context_check():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["scheduler"]["max_num_batched_tokens"] = 512
    sc["workload"]["lengths"] = {"kind": "constant", "prompt": 600, "output": 10}
    assert "prompt <= 512 (max_num_batched_tokens)" in _error(sc)


def test_a_request_fitting_one_pool_is_accepted():
    sc = small_scenario()
    pools = sc["cluster"]["pools"]
    pools.append({**pools[0], "name": "long", "model": "mistral-7b"})
    sc["workload"]["lengths"] = {"kind": "constant", "prompt": 20_000, "output": 10}
    scenario_from_dict(sc, "sc.yaml")


@pytest.mark.parametrize(
    "override",
    [
        "workload.prefixes={groups: 4, prefix_tokens: 10000000, fraction: 1.0}",
        "workload.lengths={kind: constant, prompt: 1000000, output: 10}",
    ],
)
def test_cli_refuses_blow_ups_within_a_small_address_space(override):
    scenario = "scenarios/batchllm.yaml" if "constant" in override else "scenarios/quickstart.yaml"
    r = _cli_limited("run", scenario, "--set", override, "-o", "/nonexistent/never-written")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert scenario in r.stderr and "workload." in r.stderr


def _long_prompts_config(**extra) -> WorkloadConfig:
    return WorkloadConfig.model_validate(
        {
            "arrivals": {"kind": "poisson", "rate": 10.0},
            "lengths": {"kind": "uniform", "prompt_min": 1, "prompt_max": 1_000_000_000, "output_min": 1, "output_max": 4},
            "requests": 1000,
            "prefixes": {"groups": 2, "prefix_tokens": 64, "fraction": 1.0},
            **extra,
        }
    )


def test_hash_lists_are_capped_at_the_longest_context():
    workload = build_workload(_long_prompts_config(), seed=1, context_tokens=8192)
    counts = workload.hash_ids.list.len().to_numpy()
    assert counts.max() == 8192 // 16
    assert workload.prompt_tokens.max() > 1_000_000  # the prompts themselves are kept as drawn


def test_hash_budget_is_refused_before_allocation():
    cfg = _long_prompts_config()
    with pytest.raises(ConfigError, match=r"hash_ids.*would need .* entries.*at most") as info:
        build_workload(cfg, seed=1)
    assert f"{MAX_HASH_ENTRIES:,}" in str(info.value)


# --- YAML hostility -------------------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ["defs:", '  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_in_a_typed_field_is_refused_quickly(tmp_path):
    import yaml

    base = yaml.safe_dump(small_scenario(), sort_keys=False)
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb() + base.replace("seed: 3", "seed: *j"))
    with pytest.raises(ConfigError, match="aliases are expanded") as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_small_alias_expansion_in_a_typed_field_quotes_only_part_of_it(write_yaml):
    sc = small_scenario()
    sc["seed"] = [["x" * 1000] * 100] * 100
    err = _error(sc)
    assert "sc.yaml: seed:" in err and len(err) < 2000


def test_cyclic_alias_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("name: &a [*a]\n")
    with pytest.raises(ConfigError, match="refers to itself|invalid YAML"):
        load_scenario(path)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_with_its_line(tmp_path, style):
    path = tmp_path / "deep.yaml"
    if style == "flow":
        path.write_text("name: x\nextra: " + "[" * 3000 + "]" * 3000 + "\n")
    else:
        path.write_text("name: x\n" + "".join("  " * i + f"k{i}:\n" for i in range(3000)) + "  " * 3000 + "v: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}, line \d+: too deeply nested \(more than {MAX_YAML_DEPTH} levels\)"):
        load_scenario(path)


def test_deep_override_value_is_refused(tmp_path, write_yaml):
    path = write_yaml(small_scenario())
    with pytest.raises(ConfigError, match="too deeply nested"):
        load_scenario(path, ["workload.extra=" + "[" * 3000 + "]" * 3000])


def test_non_utf8_scenario_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\nseed: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{path}: line 3: not UTF-8 text \(invalid byte 0xe9 at byte offset 21\)"):
        load_scenario(path)


def test_binary_scenario_is_refused(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: x\n\0\0\0")
    with pytest.raises(ConfigError, match="line 2: binary data"):
        load_scenario(path)


def test_directory_as_scenario_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_scenario(tmp_path)


# --- numeric fields: finite, in range -------------------------------------------------------------


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("cluster.pools.0.scheduler.swap_space_gb=.inf", "swap_space_gb", "finite number"),
        ("cluster.pools.0.power_cap_watts=.nan", "power_cap_watts", "finite number"),
        ("slo={ttft: .inf}", "slo.ttft", "finite number"),
        ("workload.requests=100000000000000000000000000000", "workload.requests", "less than or equal to 100000000"),
        ("workload.lengths.prompt_median=1.0e+300", "prompt_median", "less than or equal to 1000000000"),
        ("workload.lengths.prompt_sigma=1.0e+300", "prompt_sigma", "less than or equal to 20"),
        ("seed=100000000000000000000000", "seed", "less than or equal to 18446744073709551615"),
        ("seed=-1", "seed", "greater than or equal to 0"),
        ("workload.arrivals.rate=.inf", "rate", "finite number"),
        ("cluster.pools.0.count=100000000", "count", "less than or equal to 1000000"),
        ("cluster.pools.0.name=" + "x" * 1_000_000, "cluster.pools.0.name", "at most 128 characters"),
    ],
)
def test_out_of_range_values_name_field_and_allowed_range(write_yaml, override, field, allowed):
    path = write_yaml(small_scenario())
    with pytest.raises(ConfigError) as info:
        load_scenario(path, [override])
    message = str(info.value)
    assert str(path) in message and field in message and allowed in message
    assert len(message) < 2000


def _gpu(**over) -> dict:
    gpu = {"peak_flops": 1e15, "memory_bytes": 80e9, "memory_bandwidth": 3e12, "link_bandwidth": 4e11,
           "calibration": {"gemm_compute": 0.7, "attention_compute": 0.5, "memory": 0.8, "collective": 0.7, "iteration_overhead": 1e-3}}
    gpu.update(over)
    return gpu


@pytest.mark.parametrize("field, value", [("memory_bytes", float("inf")), ("peak_flops", float("nan")), ("memory_bandwidth", -1.0)])
def test_gpu_datasheet_fields_must_be_finite_and_positive(field, value):
    sc = small_scenario(gpus={"g": _gpu(**{field: value})})
    assert f"gpus.g.{field}" in _error(sc)


def test_calibration_must_be_finite():
    sc = small_scenario(gpus={"g": _gpu(calibration={**_gpu()["calibration"], "iteration_overhead": float("inf")})})
    assert "gpus.g.calibration.iteration_overhead: Input should be a finite number" in _error(sc)


def _model(**over) -> dict:
    model = {"num_layers": 32, "hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128,
             "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192}
    model.update(over)
    return model


def test_kv_heads_must_divide_heads():
    err = _error(small_scenario(models={"m": _model(num_kv_heads=7)}))
    assert "models.m" in err and "num_kv_heads (7) must divide num_heads (32)" in err
    assert "{" not in err  # the validator's message is enough; the model is not dumped


def test_experts_per_token_at_most_num_experts():
    err = _error(small_scenario(models={"m": _model(num_experts=8, experts_per_token=9, moe_intermediate_size=1024)}))
    assert "experts_per_token (9) must be <= num_experts (8)" in err


def test_builtin_catalogue_passes_the_checks():
    from fleetwise.catalog import builtin_models

    for model in builtin_models().values():
        assert model.mla is not None or model.num_heads % model.num_kv_heads == 0


# --- arrival times that would overflow the clock --------------------------------------------------


def test_generated_arrivals_past_the_clock_are_refused():
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "poisson", "rate": 1e-300}, "lengths": {"kind": "constant", "prompt": 10, "output": 10}, "requests": 10}
    )
    with pytest.raises(ConfigError, match="workload.arrivals: the generated arrival times reach"):
        build_workload(cfg, seed=1)


def test_session_think_time_past_the_clock_is_refused():
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "constant", "prompt": 10, "output": 10},
         "requests": 50, "sessions": {"turns_mean": 5, "think_time_s": 4e9}}
    )
    with pytest.raises(ConfigError, match="workload.sessions.think_time_s"):
        build_workload(cfg, seed=1)


def test_generated_arrivals_stay_non_negative_and_ordered():
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "poisson", "rate": 1e-6}, "lengths": {"kind": "constant", "prompt": 10, "output": 10}, "requests": 100}
    )
    arrival = build_workload(cfg, seed=1).arrival_ns
    assert arrival.min() >= 0 and bool(np.all(np.diff(arrival) >= 0))


# --- CLI options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=-1"], "--slo ttft=-1: the threshold must be a finite number of seconds > 0"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=nan"], "--slo ttft=nan"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=0.5", "--high", "-3"], "--high -3: must be a finite number > 0"),
        (["place", "scenarios/quickstart.yaml", "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=0.5", "--budget-dollars-per-hour", "-5"],
         "--budget-dollars-per-hour -5: must be a finite number > 0"),
        (["place", "scenarios/quickstart.yaml", "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=0.5", "--budget-watts", "inf"],
         "--budget-watts inf: must be a finite number > 0"),
        # The search sets the rate: a grid over it ranked copies of one layout as different ones.
        (["place", "scenarios/quickstart.yaml", "--grid", "workload.arrivals.rate=1,2", "--slo", "ttft_p90=0.5"],
         "--grid workload.arrivals.rate: the goodput search varies the arrival rate itself"),
        # A free layout's goodput per dollar has no value: it was ranked last and shown as "-".
        (["place", "scenarios/quickstart.yaml", "--grid", "cluster.pools.0.price_per_hour=0,3", "--slo", "ttft_p90=0.5", "--objective", "goodput_per_dollar"],
         "--objective goodput_per_dollar: layout cluster.pools.0.price_per_hour=0 costs $0/h"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=1", "--slo", "tpot_p99=0.1", "--attainment", "0.9", "--low", "0"],
         "--low"),
    ],
)
def test_goodput_and_place_refuse_meaningless_numbers(args, message):
    r = subprocess.run([sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr


_WIDE = {**os.environ, "COLUMNS": "200"}
"""The environment of a CLI run whose error panel is wide enough to hold the message on one line."""
_ESTIMATE = ["estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--decode-batch", "8", "--context", "100"]


@pytest.mark.parametrize(
    "args, option",
    [
        ([*_ESTIMATE, "--power-cap", "nan"], "--power-cap"),
        ([*_ESTIMATE, "--power-cap", "inf"], "--power-cap"),
        (["check-policy", "router", "round-robin", "--timeout", "NaN"], "--timeout"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=1", "--low", "nan"], "--low"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=1", "--attainment", "-inf"], "--attainment"),
        (["run", "scenarios/quickstart.yaml", "--policy-timeout", "nan"], "--policy-timeout"),
        # Options without a range are refused the same way (inf used to pass FailoverSettings).
        (["serve-router", "--endpoint", "http://127.0.0.1:1", "--connect-timeout", "nan"], "--connect-timeout"),
        (["serve-router", "--endpoint", "http://127.0.0.1:1", "--health-timeout", "nan"], "--health-timeout"),
    ],
)
def test_non_finite_float_options_are_not_a_number_rather_than_out_of_range(args, option):
    # NaN used to be "Input should be less than or equal to 1000000", as if it were too large.
    r = subprocess.run([sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, cwd=REPO, timeout=300, env=_WIDE)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"'{option}'" in r.stderr and f"'{args[-1]}' is not a finite number" in r.stderr, r.stderr
    assert "less than" not in r.stderr and "greater than" not in r.stderr and "Traceback" not in r.stderr


def test_finite_float_parser_names_what_is_allowed():
    import typer

    from fleetwise.cli.options import finite_float

    assert finite_float(0.001, 10.0)("2.5") == 2.5 and finite_float()(7) == 7.0
    for value, says in (("nan", "'nan' is not a finite number; allowed: 0.001 to 10"), ("20", "'20' is out of range; allowed: 0.001 to 10"),
                        ("x", "'x' is not a number; allowed: 0.001 to 10")):
        with pytest.raises(typer.BadParameter, match=re.escape(says)):
            finite_float(0.001, 10.0)(value)
    with pytest.raises(typer.BadParameter, match="'-inf' is not a finite number$"):
        finite_float()("-inf")


_LONG = "x" * 100_000


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "scenarios/quickstart.yaml", "--set", _LONG], "--set 'xxxx"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", f"ttft_p90={_LONG}"], "--slo 'ttft_p90=xxxx"),
        (["check-policy", "router", "round-robin", "-p", _LONG], "--param 'xxxx"),
        (["goodput", "scenarios/quickstart.yaml", "--slo", "ttft_p90=1", "--ray", _LONG], "--ray xxxx"),
    ],
)
def test_long_option_values_are_shortened_in_error_messages(args, says):
    # A 100 KB value used to be echoed whole (twice for --slo: 200 KB of stderr).
    r = subprocess.run([sys.executable, "-m", "fleetwise", *args], capture_output=True, text=True, cwd=REPO, timeout=300, env=_WIDE)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert says in r.stderr and re.search(r"x\.\.\.x{80}'? \(100,0\d\d characters\)", r.stderr), r.stderr[:2000]
    assert len(r.stderr) < 2000, r.stderr[:2000]


def test_shorten_values_leaves_short_values_and_prose_alone():
    from fleetwise.cli.format import shorten_values

    message = "the policy's route() raised ValueError: unknown gpu 'h100'; the engine's limit is 5"
    assert shorten_values(message) == message
    assert shorten_values(f"unknown gpu {'a' * 450!r}; known: h100") == f"unknown gpu '{'a' * 200}...{'a' * 80}' (450 characters); known: h100"
    assert shorten_values(f"--ray {'b' * 401}") == f"--ray {'b' * 200}...{'b' * 80} (401 characters)"
    # A deep path keeps its file name, and the colon after it stays outside the count.
    deep = "/data/" + "project/" * 60 + "run.yaml"
    assert shorten_values(f"{deep}: scenario file not found") == f"{deep[:200]}...{deep[-80:]} (494 characters): scenario file not found"
    assert shorten_values(f"{deep[:399]}: x") == f"{deep[:399]}: x"  # 399 characters: whole
    long_list = f"parameters {list(range(100_000))} raised"
    assert len(shorten_values(long_list)) < 5000 and shorten_values(long_list).endswith("raised")
