"""A sweep's base scenario parsed once: every point's scenario, and every error, is what
``load_scenario`` gives; which points keep per-request tables by default."""

from __future__ import annotations

import pickle

import polars as pl
import pytest
import yaml

from conftest import small_scenario
from fleetwise.config.load import load_scenario
from fleetwise.errors import ConfigError
from fleetwise.sweep.grid import expand, parse_grid
from fleetwise.sweep.scenarios import BaseScenario


def _write(tmp_path, sc: dict, text: str | None = None):
    p = tmp_path / "sc.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(sc))
    return p


def test_every_point_is_the_scenario_load_scenario_gives(tmp_path):
    path = _write(tmp_path, small_scenario())
    base_overrides = ["workload.requests=123", "cluster.router.kind=round-robin"]
    base = BaseScenario(path, base_overrides)
    points = expand(parse_grid(["workload.arrivals.rate=3,5.5", "cluster.pools.0.count=1,3", "seed=1,9"]))
    for p in points:
        got = base.load(p.overrides())
        want = load_scenario(path, [*base_overrides, *p.overrides()])
        assert got.model_dump() == want.model_dump()
        assert (got.source, got._base_dir) == (want.source, want._base_dir)
    # A point's overrides never leak into the next point's scenario.
    assert base.load().workload.arrivals.rate == 20.0 and base.load().cluster.pools[0].count == 2
    # Pickled to a worker it builds the same scenarios without the file.
    path.unlink()
    again = pickle.loads(pickle.dumps(base))
    assert again.load(points[-1].overrides()).model_dump() == base.load(points[-1].overrides()).model_dump()


ALIASED = """\
name: aliased
seed: 3
cluster:
  pools:
    - {name: a, count: 1, gpu: h100-sxm, model: llama-3-8b, scheduler: &s {kind: vllm, max_num_seqs: 64}}
    - {name: b, count: 1, gpu: h100-sxm, model: llama-3-8b, scheduler: *s}
  router: {kind: round-robin}
workload:
  arrivals: {kind: poisson, rate: 5.0}
  lengths: {kind: constant, prompt: 100, output: 10}
  requests: 20
"""


def test_yaml_aliases_stay_shared_as_in_a_fresh_parse(tmp_path):
    # Both pools refer to one anchored scheduler: an override through the first pool reaches the
    # second, in a fresh parse and in every copy alike, and never the next copy.
    path = _write(tmp_path, {}, ALIASED)
    over = ["cluster.pools.0.scheduler.max_num_seqs=7"]
    want = load_scenario(path, over)
    assert [p.scheduler.max_num_seqs for p in want.cluster.pools] == [7, 7]
    base = BaseScenario(path)
    assert base.load(over).model_dump() == want.model_dump()
    assert [p.scheduler.max_num_seqs for p in base.load().cluster.pools] == [64, 64]


@pytest.mark.parametrize("over", [["cluster.pools.5.count=2"], ["workload.arrivals.rate=-1"], ["cluster.pools.0.scheduler.kind=nope"], ["workload.requests"]])
def test_a_bad_point_is_the_error_load_scenario_gives(tmp_path, over):
    path = _write(tmp_path, small_scenario())
    with pytest.raises(ConfigError) as want:
        load_scenario(path, over)
    with pytest.raises(ConfigError) as got:
        BaseScenario(path).load(over)
    assert str(got.value) == str(want.value)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: scenario file not found"):
        BaseScenario(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"sc.yaml, line \d+: invalid YAML"):
        BaseScenario(_write(tmp_path, {}, "a: [1, 2\n"))


def test_request_tables_are_kept_up_to_the_limit_unless_told(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import fleetwise.cli.sweeps as sweeps
    from fleetwise.cli import app

    assert sweeps.keeps_request_tables(None, sweeps.REQUEST_TABLES_MAX_POINTS)
    assert not sweeps.keeps_request_tables(None, sweeps.REQUEST_TABLES_MAX_POINTS + 1)
    assert sweeps.keeps_request_tables(True, 10**6) and not sweeps.keeps_request_tables(False, 1)

    sc = small_scenario()
    sc["workload"]["requests"] = 40
    path = _write(tmp_path, sc)
    monkeypatch.setattr(sweeps, "REQUEST_TABLES_MAX_POINTS", 2)

    def sweep(out: str, *extra: str):
        r = CliRunner().invoke(app, ["sweep", str(path), "--grid", "workload.arrivals.rate=3,5,7", "-o", str(tmp_path / out), "-j", "1", *extra], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        kept = sorted(f.name for f in (tmp_path / out / "points").iterdir() if (f / "requests.parquet").exists())
        return r.output, len(kept), sorted(f.name for f in next((tmp_path / out / "points").iterdir()).iterdir())

    output, kept, files = sweep("auto")
    assert kept == 0 and files == ["point.json", "summary.json"]
    assert "3 points: keeping each point's summary only" in output and "--requests" in output
    output, kept, files = sweep("kept", "--requests")
    assert kept == 3 and "requests.parquet" in files and "summary only" not in output
    # The rows are the same whichever files a point keeps.
    assert pl.read_parquet(tmp_path / "auto" / "points.parquet").equals(pl.read_parquet(tmp_path / "kept" / "points.parquet"))
