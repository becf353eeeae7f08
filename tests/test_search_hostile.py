"""Hostile input and wrong numbers in the search commands ``goodput``, ``place`` and ``designs``:
each case failed (a traceback, exit 0 over nothing, a number the search did not measure) before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml

from conftest import REPO, run_cli, small_scenario
from fleetwise.errors import ConfigError
from fleetwise.sweep.goodput import parse_slos, search


def _scenario(tmp_path, requests=100, **over):
    sc = small_scenario(**over)
    sc["workload"]["requests"] = requests
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def _study(tmp_path, designs: dict, **over) -> "os.PathLike":
    sc = small_scenario()
    sc["cluster"]["pools"][0]["price_per_hour"] = 3.0
    sc["workload"]["requests"] = 100
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(sc))
    doc = {"name": "hostile", "scenario": "base.yaml", "slo": {"ttft": 0.5}, "reference": next(iter(designs)), "low": 2.0, "designs": designs, **over}
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("command, result", [("goodput", "goodput.json"), ("place", "placement.json"), ("designs", "designs.json")])
def test_a_directory_where_the_results_file_goes_is_refused_before_any_simulation(tmp_path, command, result):
    # Was a traceback (IsADirectoryError, exit 1) after every search had run.
    out = tmp_path / "out"
    (out / result).mkdir(parents=True)
    if command == "designs":
        args = [str(_study(tmp_path, {"one": {"provisioning": ["iso-power"]}}))]
    else:
        args = [str(_scenario(tmp_path)), "--slo", "ttft_p90=0.5", "-j", "1"] + (["--grid", "cluster.pools.0.count=1,2"] if command == "place" else [])
    r = run_cli(command, *args, "-o", str(out))
    assert r.returncode == 2, r.stderr
    assert f"{out / result}: is a directory where the results file goes; remove it or give another -o directory" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(out.rglob("requests.parquet"))  # refused before simulating


def test_a_budget_that_excludes_every_layout_is_an_error(tmp_path):
    # Was exit 0 with "no layout is within the budget" and a placement.json of unsearched rows.
    sc = _scenario(tmp_path)
    r = run_cli("place", str(sc), "--grid", "cluster.pools.0.count=1,2", "--slo", "ttft_p90=0.5", "--budget-watts", "100", "-o", str(tmp_path / "pl"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("--budget-watts 100: excludes every layout of the grid (the cheapest costs $3.00/h, the least power-hungry draws 700 W); "
            "raise the budget or grid over smaller layouts") in r.stderr
    assert not (tmp_path / "pl" / "placement.json").exists()


def test_a_huge_place_grid_is_refused_before_it_is_expanded(tmp_path):
    # 400 x 400 layouts used to price for minutes (and a longer grid to expand forever) before any output.
    sc = _scenario(tmp_path)
    values = ",".join(str(i) for i in range(1, 401))
    r = run_cli("place", str(sc), "--grid", f"cluster.pools.0.count={values}", "--grid", f"seed={values}", "--slo", "ttft_p90=0.5", "-o", str(tmp_path / "pl"))
    assert r.returncode == 2
    assert "--grid: 400 (cluster.pools.0.count) x 400 (seed) = 160,000 layouts" in r.stderr and "at most 4,096: narrow the grid" in r.stderr
    from fleetwise.sweep.placement import check_layout_count

    with pytest.raises(ConfigError, match="= 1,000,000,000,000,000,000,000 layouts"):
        check_layout_count([("a", 10**9), ("b", 10**12)])  # a product never built


def test_a_layouts_failing_search_names_the_layout(tmp_path, monkeypatch):
    # Every layout's search shares the scenario file's name: the error did not say which layout.
    import fleetwise.sweep.goodput as goodput
    from fleetwise.sweep.grid import Point
    from fleetwise.sweep.placement import _evaluate

    def fail(*a, **k):
        raise ConfigError("sc.yaml: at least 90% of requests meet {'e2e': 1000.0} at every rate tried")

    monkeypatch.setattr(goodput, "search", fail)
    with pytest.raises(ConfigError, match=r"^layout cluster.pools.0.count=2: sc.yaml: at least 90%"):
        _evaluate("sc.yaml", [], Point((("cluster.pools.0.count", 2),)), str(tmp_path), {"e2e": 1000.0}, 0.9, 0.25, 0.05)


def test_points_table_attainment_is_the_searchs_not_the_scenarios(tmp_path):
    # points.parquet (which the report draws) measured attainment against the scenario's slo: block
    # (here 100 s, so always 1.0), disagreeing with goodput.json's curve for the search's SLOs.
    sc = _scenario(tmp_path, requests=100, slo={"ttft": 100.0})
    slos, _ = parse_slos(["ttft_p90=0.2"])
    r = search(str(sc), [], tmp_path / "gp", slos, 0.9, low=4.0, tolerance=0.2, jobs=1, quiet=True)
    curve = {c["rate"]: c["attainment"] for c in r["curve"]}
    table = pl.read_parquet(tmp_path / "gp" / "points.parquet")
    got = dict(zip(table["rate"].to_list(), table["slo_attainment"].to_list()))
    assert got == curve
    assert min(got.values()) < 0.9  # the scenario's own SLO would have said 1.0 everywhere


def test_a_design_below_the_studys_low_has_no_ratio_of_zero(tmp_path, monkeypatch):
    # A design whose throughput is only known to lie below `low` was given goodput_ratio 0.0 ("x req/s 0").
    import fleetwise.sweep.designs as designs
    from fleetwise.config.design_study import load_design_study

    study = load_design_study(_study(tmp_path, {"ref": {"provisioning": ["iso-power"]}, "slow": {"provisioning": ["iso-power"], "set": {"seed": 4}}}))
    fake = {"ref": {"goodput": 8.0, "goodput_per_gpu": 4.0, "below_rate": None}, "slow": {"goodput": 0.0, "goodput_per_gpu": 0.0, "below_rate": 2.0}}
    monkeypatch.setattr(designs, "_search", lambda base, overrides, out_dir, *a: fake[os.path.basename(out_dir)])
    rows = {r["design"]: r for r in designs.run_study(study, tmp_path / "out")}
    assert rows["slow"]["goodput_ratio"] is None and rows["slow"]["goodput_ratio_below"] == 0.25
    assert rows["ref"]["goodput_ratio"] == 1.0 and rows["ref"]["goodput_ratio_below"] is None
    saved = {r["design"]: r for r in json.loads((tmp_path / "out" / "designs.json").read_text())["designs"]}
    assert saved["slow"]["goodput_ratio"] is None


def test_slo_seconds_in_other_scripts_digits_are_refused():
    # float() reads Arabic-Indic digits: '٠.٥' was taken for 0.5 s.
    with pytest.raises(ConfigError, match="is not a number of seconds"):
        parse_slos(["ttft_p90=\u0660.\u0665"])


def test_low_above_the_searchs_ceiling_is_refused(tmp_path):
    # --low 1e7 simulated 1e7 req/s and then said "attainment stays above ... beyond 1e6".
    r = run_cli("goodput", str(_scenario(tmp_path)), "--slo", "ttft_p90=0.5", "--low", "1e7", "-o", str(tmp_path / "g"))
    assert r.returncode == 2 and "allowed: 1e-06 to 1e+06" in r.stderr


def _fake_measure(curve):
    from fleetwise.sweep.goodput import _rate_point

    def measure(scenario, overrides, store, rates, slos, *a, **k):
        return {_rate_point(r).rate: curve(r) for r in rates}
    return measure


def test_slos_that_every_rate_meets_say_so(tmp_path, monkeypatch):
    import fleetwise.sweep.goodput as goodput

    monkeypatch.setattr(goodput, "_measure", _fake_measure(lambda r: 1.0))
    with pytest.raises(ConfigError, match=r"every rate tried up to 524288 req/s meets \{'ttft': 0.5\}\): check the SLOs; they bound nothing"):
        search(str(_scenario(tmp_path)), [], tmp_path / "gp", {"ttft": 0.5}, 0.9, low=1.0, jobs=1, quiet=True)


def test_non_monotone_attainment_never_claims_a_failing_rate_and_names_passing_rates_above(tmp_path, monkeypatch):
    import fleetwise.sweep.goodput as goodput

    curve = lambda r: 1.0 if r < 10 or 14 < r < 16 else 0.0  # noqa: E731
    monkeypatch.setattr(goodput, "_measure", _fake_measure(curve))
    r = search(str(_scenario(tmp_path)), [], tmp_path / "gp", {"ttft": 0.5}, 0.9, low=1.0, tolerance=0.05, jobs=1, quiet=True)
    assert 9.5 <= r["goodput_rate"] < 10 and curve(r["goodput_rate"]) == 1.0
    assert len(r["passing_above"]) == 1 and 14 < r["passing_above"][0] < 16
    assert json.loads((tmp_path / "gp" / "goodput.json").read_text())["passing_above"] == r["passing_above"]


def test_sigterm_stops_a_search_like_ctrl_c(tmp_path):
    # SIGTERM killed goodput outright (exit -15, no message); sweep already exits 143.
    sc = _scenario(tmp_path, requests=1500)
    out = tmp_path / "gp"
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "fleetwise", "goodput", str(sc), "--slo", "ttft_p90=0.5", "--low", "1", "-o", str(out), "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    try:
        while not (out / "rows").is_dir() or not list((out / "rows").glob("*.parquet")):  # the first point saved
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no point saved within 120 s"
            time.sleep(0.05)
    except AssertionError:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == -signal.SIGABRT and "FATAL: exception not rethrown" in stderr:
        # A rare abort at interpreter exit after an interrupt (seen once in six runs on a loaded
        # machine, never reproduced since simulate() holds the signals back while its thread
        # starts): a thread still inside Rust code when the interpreter finalizes.
        pytest.xfail("rare abort at interpreter exit after an interrupt (a thread still inside Rust code)")
    assert proc.returncode == 143, stderr
    assert f"interrupted: evaluated points are saved in {out}/" in stderr
    assert list((out / "rows").glob("*.parquet"))
