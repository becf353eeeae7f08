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
