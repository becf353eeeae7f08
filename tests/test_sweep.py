"""Sweeps: grid expansion, parallel runs, saving as points finish, resuming, Ctrl-C, Ray; goodput."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from fleetwise.sweep.grid import Point, expand, parse_grid
from fleetwise.sweep.goodput import attainment, parse_slos, search
from fleetwise.sweep.runner import run_points
from fleetwise.sweep.store import SweepStore

from conftest import REPO, run_cli, small_scenario


def _scenario(tmp_path, requests=300):
    sc = small_scenario()
    sc["workload"]["requests"] = requests
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def test_grid_expansion_and_stable_ids():
    g = parse_grid(["workload.arrivals.rate=4,8", "cluster.router.kind=round-robin,random"])
    pts = expand(g)
    assert len(pts) == 4
    assert pts[0].assignments == (("workload.arrivals.rate", 4), ("cluster.router.kind", "round-robin"))
    assert len({p.id for p in pts}) == 4
    assert expand(parse_grid(["workload.arrivals.rate=4,8", "cluster.router.kind=round-robin,random"]))[3].id == pts[3].id
    assert pts[1].label == "cluster.router.kind=random" and pts[1].rate == 4.0
    with pytest.raises(Exception, match="PATH=V1"):
        parse_grid(["nonsense"])


@pytest.mark.parametrize(("option", "message"), [
    ("cluster.pools.0.count=[1", "--grid cluster.pools.0.count: value '[1', line 1: invalid YAML"),  # was a ParserError traceback
    ("seed=" + "[" * 500 + "]" * 500, "too deeply nested"),  # was a RecursionError
    ("name=!!python/object:os.system", "invalid YAML"),
    ("=1", "--grid '=1': no path before '='"),  # reported as --set '=1'
    ("cluster.pools.0.count=1,,2", "--grid cluster.pools.0.count: an empty value between commas"),  # silently dropped
    ("cluster.pools.0.count=,", "--grid 'cluster.pools.0.count=,': no values"),
])
def test_grid_values_are_read_with_the_guards_of_set(option, message):
    from fleetwise.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid([option])  # (message is matched literally)


def test_a_grid_path_that_set_also_sets_is_refused():
    from fleetwise.errors import ConfigError

    # The grid's values silently replaced the --set value at every point.
    with pytest.raises(ConfigError, match=r"--grid seed: --set seed=3 sets it too"):
        parse_grid(["seed=1,2"], ["workload.requests=10", "seed=3"])
    assert parse_grid(["seed=1,2"], ["workload.requests=10"]) == [("seed", [1, 2])]


def test_a_string_grid_value_stays_a_string_in_the_points_overrides():
    (point,) = expand(parse_grid(["name='null'"]))  # the string 'null', not YAML's null
    assert point.assignments == (("name", "null"),) and point.overrides() == ['name="null"']
    from fleetwise.config.load import load_scenario

    assert load_scenario(REPO / "scenarios" / "quickstart.yaml", point.overrides()).name == "null"


def test_parallel_sweep_equals_serial_and_saves_every_point(tmp_path):
    sc = _scenario(tmp_path)
    pts = expand(parse_grid(["workload.arrivals.rate=5,10", "cluster.pools.0.count=1,2"]))
    serial = SweepStore(tmp_path / "serial")
    run_points(str(sc), [], pts, serial, ["workload.arrivals.rate", "cluster.pools.0.count"], jobs=1, quiet=True)
    par = SweepStore(tmp_path / "par")
    run_points(str(sc), [], pts, par, ["workload.arrivals.rate", "cluster.pools.0.count"], jobs=2, quiet=True)
    a, b = serial.merge().sort("point"), par.merge().sort("point")
    assert a.equals(b)
    assert a.height == 4 and set(a["point"]) == {p.id for p in pts}
    for p in pts:
        d = tmp_path / "par" / "points" / p.id
        assert (d / "requests.parquet").exists() and (d / "summary.json").exists()
    # More load, worse tail: the rate column is numeric and the trend shows in the table.
    one = a.filter(pl.col("cluster.pools.0.count") == 1).sort("workload.arrivals.rate")
    assert one["e2e_p90"][1] > one["e2e_p90"][0]


def test_resume_runs_only_missing_points(tmp_path):
    sc = _scenario(tmp_path)
    out = tmp_path / "sw"
    r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=4,6,8", "-o", str(out), "-j", "1")
    assert r.returncode == 0, r.stderr
    rows = sorted((out / "rows").glob("*.parquet"))
    assert len(rows) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in rows}
    rows[1].unlink()
    r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=4,6,8", "-o", str(out), "-j", "1")
    assert r.returncode == 0 and "1 resumed" not in r.stdout and "2 resumed" in r.stdout
    after = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.parquet")}
    assert len(after) == 3
    assert sum(after[k] == v for k, v in stamps.items() if k in after) == 2, "finished points are not rerun"
    # A different grid in the same directory is refused rather than mixed in.
    r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=1,2", "-o", str(out))
    assert r.returncode == 2 and "different sweep" in r.stderr


def test_ctrl_c_keeps_finished_points_and_resumes(tmp_path):
    # Points long enough (20k requests) that the interrupt lands mid-sweep even on a loaded machine.
    sc = _scenario(tmp_path, requests=20000)
    out = tmp_path / "sw"
    rates = ",".join(str(r) for r in range(2, 12))
    cmd = [sys.executable, "-m", "fleetwise", "sweep", str(sc), "--grid", f"workload.arrivals.rate={rates}", "-o", str(out), "-j", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "rows").glob("*.parquet"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    saved = len(list((out / "rows").glob("*.parquet")))
    assert 1 <= saved < 10
    assert pl.read_parquet(out / "points.parquet").height == saved
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and f"{saved} resumed" in r.stdout
    assert pl.read_parquet(out / "points.parquet").height == 10


def test_ray_local_matches_local_processes(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'fleetwise[ray]'")
    import ray

    sc = _scenario(tmp_path)
    pts = expand(parse_grid(["workload.arrivals.rate=5,10,20"]))
    local = SweepStore(tmp_path / "local")
    run_points(str(sc), [], pts, local, ["workload.arrivals.rate"], jobs=1, quiet=True)
    # Relative paths, as a user gives them: the driver resolves the scenario and ships it whole;
    # the tasks send their files back and the driver writes them (Ray workers run elsewhere).
    monkeypatch.chdir(tmp_path)
    try:
        # A private local cluster ("local"), never one that happens to run on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        remote = SweepStore(Path("ray"))
        run_points(sc.name, [], pts, remote, ["workload.arrivals.rate"], ray_address="local", quiet=True)
    finally:
        ray.shutdown()
    assert local.merge().sort("point").equals(remote.merge().sort("point"))
    for p in pts:
        assert (tmp_path / "ray" / "points" / p.id / "requests.parquet").read_bytes() == (tmp_path / "local" / "points" / p.id / "requests.parquet").read_bytes()


def test_goodput_search_brackets_the_target(tmp_path):
    sc = _scenario(tmp_path, requests=600)
    slos, implied = parse_slos(["ttft_p90=0.3", "tpot_p90=0.03"])
    assert implied == 0.9
    r = search(str(sc), [], tmp_path / "gp", slos, 0.9, low=1.0, tolerance=0.05, jobs=1, quiet=True)
    g = r["goodput_rate"]
    assert g > 1.0
    curve = {round(c["rate"], 6): c["attainment"] for c in r["curve"]}
    at = lambda rate: curve[min(curve, key=lambda x: abs(x - rate))]
    assert at(g) >= 0.9
    assert at(1.25 * g) < 0.9
    assert r["goodput_per_gpu"] == pytest.approx(g / 2) and r["gpus"] == 2
    saved = json.loads((tmp_path / "gp" / "goodput.json").read_text())
    assert saved["goodput_rate"] == g
    # Each point's attainment recomputes from its request table.
    p = Point((("workload.arrivals.rate", round(g, 6)),))
    req = pl.read_parquet(tmp_path / "gp" / "points" / p.id / "requests.parquet")
    assert attainment(req, slos) == pytest.approx(at(g))


def test_a_goodput_below_the_lowest_rate_is_reported_as_such(tmp_path):
    # An SLO no rate can meet used to print "goodput ... 0 req/s" as if measured.
    sc = _scenario(tmp_path, requests=100)
    out = tmp_path / "gp"
    r = run_cli("goodput", str(sc), "--slo", "ttft_p90=0.000001", "--low", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "no rate tried meets 90% attainment" in r.stdout and "below the lowest rate, 2 req/s" in r.stdout
    saved = json.loads((out / "goodput.json").read_text())
    assert saved["goodput_rate"] == 0.0 and saved["below_rate"] == 2.0
    assert saved["curve"] and all(c["attainment"] < 0.9 for c in saved["curve"])


def test_goodput_cli_errors(tmp_path):
    sc = _scenario(tmp_path)
    r = run_cli("goodput", str(sc), "--slo", "latency=1")
    assert r.returncode == 2 and "ttft" in r.stderr
    with pytest.raises(Exception, match=r"--slo ttft given twice \(ttft_p90=0.01, ttft_p90=1\)"):
        parse_slos(["ttft_p90=0.01", "ttft_p90=1"])  # the last silently won
    r = run_cli("goodput", str(sc), "--slo", "ttft_p90=1", "--low", "1", "--high", "0.5", "-o", str(tmp_path / "g"))
    assert r.returncode == 2 and "--high 0.5 must be above --low 1" in r.stderr, r.stderr


@pytest.mark.parametrize("option, message", [
    ("ttft_p9.9.9=1", "the percentile after _p must be a number between 0 and 100"),  # a traceback (float('9.9.9'))
    ("ttft_p\u00b2=1", "the percentile after _p must be a number"),  # '²'.isdigit() is True
    ("ttft_p=0.5", "got ''"),  # accepted with no percentile
    ("ttft_p90=1_0", "'1_0' is not a number of seconds"),  # read as 10 s
    ("ttft_p90=nan", "--slo ttft=nan: the threshold must be a finite number of seconds > 0"),
    ("ttft_p90=-1", "--slo ttft=-1: the threshold must be a finite number of seconds > 0"),
])
def test_slo_options_are_read_strictly(option, message):
    from fleetwise.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_slos([option])


def test_attainment_settles_disagreeing_slo_percentiles():
    from fleetwise.errors import ConfigError

    with pytest.raises(ConfigError, match="percentiles disagree"):
        parse_slos(["ttft_p90=1", "tpot_p99=0.1"])
    # With --attainment given they need not agree (the command said "give --attainment" and then
    # refused it anyway).
    assert parse_slos(["ttft_p90=1", "tpot_p99=0.1"], attainment=0.9) == ({"ttft": 1.0, "tpot": 0.1}, None)
    assert parse_slos(["ttft_p90.5=1"]) == ({"ttft": 1.0}, 0.905)
    with pytest.raises(ConfigError, match="--attainment 0: must be a fraction of requests above 0"):
        parse_slos(["ttft_p90=1"], attainment=0.0)


def test_sweep_then_report_from_the_cli(tmp_path):
    sc = _scenario(tmp_path, requests=200)
    out = tmp_path / "sw"
    r = run_cli("sweep", str(sc), "--grid", "workload.arrivals.rate=4,8", "-o", str(out), "-j", "1", "--iterations")
    assert r.returncode == 0, r.stderr
    assert all((out / "points" / p / "iterations.parquet").exists() for p in pl.read_parquet(out / "points.parquet")["point"])
    html = tmp_path / "r.html"
    r = run_cli("report", str(out), "-o", str(html))
    assert r.returncode == 0, r.stderr
    text = html.read_text()
    assert 'id="fig-percentiles"' in text and 'id="fig-utilisation"' in text
    r = run_cli("report", str(tmp_path / "missing"), "-o", str(html))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_place_does_not_crown_a_layout_that_meets_nothing(tmp_path):
    sc = _scenario(tmp_path, requests=100)
    out = tmp_path / "pl"
    r = run_cli("place", str(sc), "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=0.000001", "-o", str(out), "-j", "1")
    assert r.returncode == 0, r.stderr
    assert "best:" not in r.stdout and "no layout within the budget meets the SLOs, even at the lowest rate searched (0.25 req/s)" in r.stdout
    assert "< 0.25" in r.stdout
    layouts = json.loads((out / "placement.json").read_text())["layouts"]
    assert [row["below_rate"] for row in layouts] == [0.25, 0.25] and all(row["goodput"] == 0.0 for row in layouts)


def test_goodput_rates_keep_their_significant_digits():
    from fleetwise.sweep.goodput import _rate_point

    assert _rate_point(12.3456789).rate == 12.345679 and _rate_point(0.25).rate == 0.25  # 6 decimals, as before
    assert _rate_point(2.5e-7).rate == 2.5e-7 and _rate_point(1.23456789e-6).rate == 1.23457e-6  # was 0.0 and 1e-6


def test_a_grid_of_more_points_than_a_sweep_allows_is_refused_before_expanding(tmp_path, write_yaml):
    # 1,000 x 1,000 values: the product was built whole (a longer one never finished).
    rates = ",".join(str(i) for i in range(1, 1001))
    seeds = ",".join(str(i) for i in range(1, 1001))
    r = run_cli("sweep", str(write_yaml(small_scenario())), "--grid", f"workload.arrivals.rate={rates}", "--grid", f"seed={seeds}", "-o", str(tmp_path / "sw"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--grid: 1000 (workload.arrivals.rate) x 1000 (seed) = 1,000,000 points; a sweep may have at most 100,000" in r.stderr, r.stderr
    assert not (tmp_path / "sw" / "rows").exists()
