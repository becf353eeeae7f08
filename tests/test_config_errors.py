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
    assert "cluster.pools.0.scheduler.vllm.swap_space_gb: Input should be a finite number" in r.stderr


def test_alias_bomb_exits_2_without_hanging(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    err = _cli_error(p)  # run_cli's timeout guards against a hang
    assert f"{p}: " in err and "aliases are expanded" in err
