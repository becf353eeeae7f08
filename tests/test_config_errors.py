"""Bad input gets a clear error naming the file and field path, and exit code 2 from the CLI."""

from __future__ import annotations

import pytest

import fleetwise
from fleetwise.errors import ConfigError

from conftest import run_cli, small_scenario


def _cli_error(path) -> str:
    r = run_cli("run", str(path))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stderr


def test_unknown_field_names_file_path_and_allowed_fields(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["parallelizm"] = {"tp": 2}
    p = write_yaml(sc)
    err = _cli_error(p)
    assert str(p) in err
    assert "cluster.pools.0.parallelizm" in err
    assert "allowed fields" in err and "parallelism" in err


def test_wrong_type_names_field_and_value(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = "many"
    p = write_yaml(sc)
    err = _cli_error(p)
    assert f"{p}: cluster.pools.0.count" in err
    assert "'many'" in err


def test_unknown_gpu_lists_known_ones(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["gpu"] = "h1000"
    p = write_yaml(sc)
    err = _cli_error(p)
    assert f"{p}: cluster.pools.0.gpu" in err
    assert "'h1000'" in err and "h100-sxm" in err and "a100-80gb-sxm" in err


def test_unknown_model_lists_known_ones(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["model"] = "llama-9-1t"
    p = write_yaml(sc)
    err = _cli_error(p)
    assert f"{p}: cluster.pools.0.model" in err
    assert "llama-3-70b" in err


def test_unknown_kind_names_allowed_kinds(write_yaml):
    sc = small_scenario()
    sc["cluster"]["router"] = {"kind": "smartest"}
    p = write_yaml(sc)
    err = _cli_error(p)
    assert "cluster.router" in err
    assert "round-robin" in err and "least-outstanding-tokens" in err


def test_tp_not_dividing_heads_is_a_config_error_with_path(write_yaml):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["parallelism"] = {"tp": 3}
    p = write_yaml(sc)
    err = _cli_error(p)
    assert f"{p}: cluster.pools.0.parallelism.tp" in err
    assert "32 attention heads" in err


def test_set_override_changes_value_and_bad_override_is_reported(write_yaml, tmp_path):
    p = write_yaml(small_scenario())
    sc = fleetwise.load_scenario(p, ["cluster.pools.0.count=3", "workload.arrivals.rate=5"])
    assert sc.cluster.pools[0].count == 3
    assert sc.workload.arrivals.rate == 5.0
    with pytest.raises(ConfigError, match=r"index '7' out of range"):
        fleetwise.load_scenario(p, ["cluster.pools.7.count=3"])
    r = run_cli("run", str(p), "--set", "cluster.pools.0.count=zero", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "cluster.pools.0.count" in r.stderr


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\ncluster: [unclosed\n")
    err = _cli_error(p)
    assert "broken.yaml" in err and "line" in err
    r = run_cli("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_api_raises_config_error_subclass():
    sc = small_scenario()
    sc["seed"] = -1
    with pytest.raises(ConfigError, match="seed") as info:
        fleetwise.simulate(sc)
    assert isinstance(info.value, fleetwise.FleetwiseError)


def test_huge_seed_names_the_field_and_range(write_yaml):
    sc = small_scenario()
    sc["seed"] = 10**23
    p = write_yaml(sc)
    err = _cli_error(p)
    assert f"{p}: seed: Input should be less than or equal to 18446744073709551615" in err
    assert "u64" not in err


def test_infinite_swap_space_names_the_field(write_yaml):
    p = write_yaml(small_scenario())
    r = run_cli("run", str(p), "--set", "cluster.pools.0.scheduler.swap_space_gb=.inf")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cluster.pools.0.scheduler.swap_space_gb: Input should be a finite number" in r.stderr


def test_alias_bomb_exits_2_without_hanging(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    err = _cli_error(p)  # run_cli's timeout guards against a hang
    assert f"{p}: " in err and "aliases are expanded" in err


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("workload", "requests"), True, "workload.requests: Input should be a valid integer (got true, a boolean)"),
    (("workload", "arrivals", "rate"), True, "workload.arrivals.rate: Input should be a valid number (got true, a boolean)"),
    (("cluster", "pools", 0, "count"), False, "cluster.pools.0.count: Input should be a valid integer (got false, a boolean)"),
    (("seed",), True, "seed: Input should be a valid integer (got true, a boolean)"),
    (("slo",), {"ttft": True}, "slo.ttft: Input should be a valid number (got true, a boolean)"),
])
def test_a_boolean_where_a_number_is_expected_is_an_error_not_one_or_zero(path, value, expected):
    # pydantic's lax mode would read `requests: yes` as 1 request and simulate it with exit 0.
    sc = small_scenario()
    node = sc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as info:
        fleetwise.scenario_from_dict(sc, "bools.yaml")
    assert f"bools.yaml: {expected}" in str(info.value)


def test_a_boolean_field_still_takes_booleans():
    sc = small_scenario()
    sc["cluster"]["pools"][0]["prefix_caching"] = True
    assert fleetwise.scenario_from_dict(sc).cluster.pools[0].prefix_caching is True


@pytest.mark.parametrize("cv", [1e-200, 1e300])
def test_gamma_cv_out_of_its_range_is_an_error_not_a_traceback(write_yaml, cv):
    sc = small_scenario()
    sc["workload"]["arrivals"] = {"kind": "gamma", "rate": 10.0, "cv": cv}
    err = _cli_error(write_yaml(sc))
    assert "workload.arrivals.cv: Input should be" in err and ("0.001" in err or "1000" in err)


@pytest.mark.parametrize(("section", "allowed"), [
    (("workload", "arrivals"), "'poisson', 'gamma'"),
    (("cluster", "router"), "'round-robin', 'least-outstanding-tokens'"),
    (("cluster", "pools", 0, "scheduler"), "'vllm', 'vllm-v1', 'sarathi-serve'"),
])
def test_a_section_without_its_kind_lists_the_kinds(section, allowed):
    sc = small_scenario()
    node = sc
    for key in section[:-1]:
        node = node[key]
    node[section[-1]] = {"max_num_seqs": 4} if section[-1] == "scheduler" else {}
    with pytest.raises(ConfigError) as info:
        fleetwise.scenario_from_dict(sc, "nokind.yaml")
    where = ".".join(str(k) for k in section)
    assert f"nokind.yaml: {where}: a 'kind' is required; allowed: {allowed}" in str(info.value)


def test_small_cli_mistakes_are_named(write_yaml, tmp_path):
    p = write_yaml(small_scenario())
    r = run_cli("run", str(p), "--set", "=5")
    assert r.returncode == 2 and "--set '=5': the path '' has an empty part" in r.stderr
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--specs", str(tmp_path), "--decode-batch", "1", "--context", "5")
    assert r.returncode == 2 and f"{tmp_path}: is a directory; --specs takes a YAML file" in r.stderr
    r = run_cli("sweep", str(p), "--grid", "workload.arrivals.rate=2,2.0", "-o", str(tmp_path / "sw"))
    assert r.returncode == 2 and "the value 2.0 is given twice" in r.stderr


@pytest.mark.parametrize(("field", "value"), [("experts_per_token", 0), ("moe_intermediate_size", 0)])
def test_a_moe_model_without_routed_experts_is_refused(field, value):
    # With k = 0 (or experts of width 0) it used to run as a cheaper dense model, exit 0.
    sc = small_scenario()
    model = {"num_layers": 32, "hidden_size": 4096, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "intermediate_size": 14336,
             "vocab_size": 32000, "max_position_embeddings": 8192, "num_experts": 6, "experts_per_token": 2, "moe_intermediate_size": 14336}
    model[field] = value
    sc["models"] = {"x": model}
    sc["cluster"]["pools"][0]["model"] = "x"
    with pytest.raises(ConfigError, match=r"models.x: .*a MoE model \(num_experts 6\) needs experts_per_token >= 1 and moe_intermediate_size >= 1"):
        fleetwise.scenario_from_dict(sc)


@pytest.mark.parametrize(("args", "message"), [
    (["compare", "--variant", "..: cluster.router.kind=round-robin"], "the label '..' cannot name the variant's directory"),
    (["compare", "--variant", ": cluster.router.kind=round-robin"], "the label '' cannot name the variant's directory"),
    (["run", "--policy-timeout", "inf"], "--policy-timeout"),
    (["compare", "--variant", "a: seed=1; seed=2"], "seed is set twice; set each path once"),
    (["compare", "--variant", "rate 4/s: seed=1", "--variant", "rate 4_s: seed=2"], "--variant labels 'rate 4/s' and 'rate 4_s' both name the output directory 'rate_4_s'"),
])
def test_compare_labels_and_policy_time_limits_are_checked(write_yaml, args, message):
    cmd, *rest = args
    r = run_cli(cmd, str(write_yaml(small_scenario())), *rest)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_simulate_refuses_an_infinite_policy_timeout():
    with pytest.raises(ConfigError, match="policy_timeout must be a positive number of seconds up to 86400"):
        fleetwise.simulate(small_scenario(), policy_timeout=float("inf"))


def test_two_pools_of_one_name_are_an_error_not_mixed_results(write_yaml):
    sc = small_scenario()
    second = dict(sc["cluster"]["pools"][0], gpu="a100-80gb-sxm")
    sc["cluster"]["pools"].append(second)  # same name: prices, engines and idealized runtimes are kept by name
    err = _cli_error(write_yaml(sc))
    assert "cluster.pools" in err and "are both named" in err and "pool names must be unique" in err


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("cluster.pools.0.calibration.decode_query_rows", 10**8, "less than or equal to 1024"),  # ran 138 days, exit 0
    ("cluster.pools.0.calibration.mixed_query_tile", 10**12, "less than or equal to 1024"),
    ("cluster.pools.0.calibration.prefill_pad_tokens", 10**18, "less than or equal to 65536"),  # was serde's "expected u32"
    ("cluster.pools.0.calibration.gemm_ridge_exponent", 1e6, "less than or equal to 64"),
])
def test_engine_tiles_are_bounded_and_named(write_yaml, path, value, expected):
    r = run_cli("run", str(write_yaml(small_scenario())), "--set", f"{path}={value}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert path in r.stderr and expected in r.stderr, r.stderr


def test_a_flash_read_smaller_than_a_sector_is_named():
    # It was accepted (> 0), rounded to 0 bytes in the core and blamed on queue_depth.
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--offload", "flash", "--offload-set", "read_chunk_kb=1e-300",
                "--decode-batch", "1", "--context", "10")
    assert r.returncode == 2 and "read_chunk_kb" in r.stderr and "greater than or equal to 0.5" in r.stderr, r.stderr


def test_mla_widths_are_bounded_and_named():
    sc = small_scenario()
    sc["models"] = {"mla": {"num_layers": 4, "hidden_size": 1024, "num_heads": 8, "num_kv_heads": 8, "head_dim": 128, "intermediate_size": 2048,
                            "vocab_size": 32000, "max_position_embeddings": 4096,
                            "mla": {"qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "kv_lora_rank": 10**12}}}
    sc["cluster"]["pools"][0]["model"] = "mla"
    with pytest.raises(ConfigError, match=r"models.mla.mla.kv_lora_rank: Input should be less than or equal to 100000"):
        fleetwise.scenario_from_dict(sc)


@pytest.mark.parametrize(("field", "value", "limit"), [("tdp_watts", 1e308, "100000"), ("idle_watts", 1e300, "100000"), ("price_per_hour", 1e308, "1000000")])
def test_a_gpus_power_and_price_are_bounded(write_yaml, field, value, limit):
    # Unbounded, they made infinite energy or cost, which crashed the summary (TypeError, exit 1).
    sc = small_scenario()
    sc["gpus"] = {"g": {"architecture": "hopper", "memory_type": "hbm", "peak_flops": 989.4e12, "memory_bytes": 80e9, "memory_bandwidth": 3.35e12,
                        "link_bandwidth": 450e9, "tdp_watts": 700, "idle_watts": 70, "price_per_hour": 3, field: value}}
    sc["cluster"]["pools"][0]["gpu"] = "g"
    err = _cli_error(write_yaml(sc))
    assert f"gpus.g.{field}: Input should be less than or equal to {limit}" in err


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    # PyYAML keeps the last of two equal keys: requests: 50 then 5000000 ran five million.
    p = tmp_path / "dup.yaml"
    p.write_text("name: q\ncluster:\n  pools:\n    - {name: main, count: 1, gpu: h100-sxm, model: llama-3-8b}\n"
                 "workload:\n  requests: 50\n  requests: 5000000\n")
    err = _cli_error(p)
    assert f"{p}, line 7: 'requests' is given twice in one mapping (first at line 6); keep one" in err, err
    # A merge key may still bring in a value the mapping then overrides.
    from fleetwise.config.yaml_input import parse_yaml

    data = parse_yaml("base: &p {count: 2, gpu: h100-sxm}\npool: {<<: *p, count: 3}\n", "m.yaml")
    assert data["pool"] == {"count": 3, "gpu": "h100-sxm"}
    # An anchored mapping with a merge, merged again elsewhere (PyYAML flattens it in place).
    assert parse_yaml("x: {y: {n: &n {<<: {a: 1}, a: 2}}}\nm: {<<: *n}\n", "m.yaml") == {"x": {"y": {"n": {"a": 2}}}, "m": {"a": 2}}


def test_sexagesimal_numbers_are_text_not_ninety(write_yaml):
    # YAML 1.1 reads 1:30 as 90: a rate of "1:30" ran at 90 req/s.
    from fleetwise.config.yaml_input import parse_yaml

    assert parse_yaml("a: 1:30\nb: 1:30.5\nc: 90\nd: 1_000\ne: 2.5e+3", "x") == {"a": "1:30", "b": "1:30.5", "c": 90, "d": 1000, "e": 2500.0}
    r = run_cli("run", str(write_yaml(small_scenario())), "--set", "workload.arrivals.rate=1:30")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "workload.arrivals.rate: Input should be a valid number, unable to parse string as a number (got '1:30')" in r.stderr, r.stderr
