"""Error bars from an engine profile's calibration residuals (fleetwise.error_bars)."""

from __future__ import annotations

import json

import pytest

from fleetwise.config.load import load_scenario
from fleetwise.error_bars import profile_error, scaled, with_error_bars
from fleetwise.simulate import simulate

from conftest import REPO, run_cli

QUICK = ["workload.requests=300"]


def test_profile_error_is_the_fit_residual(tmp_path):
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml", QUICK)
    from fleetwise.catalog.engine import load_engine

    assert profile_error(sc) == load_engine("vllm").residuals["iteration_seconds"]["median_abs"] > 0
    (tmp_path / "p.yaml").write_text("based_on: vllm\nresiduals: {ttft: {p50: 0.1, p90: -0.3}, tpot: {p50: 0.05, p90: null}}\n")
    logfit = load_scenario(REPO / "scenarios" / "quickstart.yaml", QUICK + [f"cluster.pools.0.engine={tmp_path / 'p.yaml'}"])
    assert profile_error(logfit) == pytest.approx(0.1)  # median of |0.1|, |-0.3|, |0.05|
    (tmp_path / "none.yaml").write_text("based_on: fleetwise-torch\n")
    bare = load_scenario(REPO / "scenarios" / "quickstart.yaml", QUICK + [f"cluster.pools.0.engine={tmp_path / 'none.yaml'}"])
    assert profile_error(bare) is None
    assert with_error_bars(bare, simulate)[1] is None


def test_scaled_runs_stretch_every_iteration():
    """One request alone: its E2E is the sum of its iterations, so it scales by the factor exactly
    (up to the nanosecond rounding of each iteration)."""
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml", ["workload.requests=1"])
    base = simulate(sc).summary["e2e_s"]["p50"]
    assert simulate(scaled(sc, 1.2)).summary["e2e_s"]["p50"] == pytest.approx(1.2 * base, rel=1e-6)


def test_cli_band_brackets_the_run(tmp_path):
    r = run_cli("run", str(REPO / "scenarios" / "quickstart.yaml"), "--set", QUICK[0], "-o", str(tmp_path / "o"), "--error-bars")
    assert r.returncode == 0, r.stderr
    assert "error bars (iteration times within" in r.stdout and "engine: main vllm" in r.stdout
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["engines"] == {"main": "vllm"}
    for m in ("ttft_s", "tpot_s", "e2e_s"):
        for stat in ("p50", "p90"):
            lo, hi = s["error_bars"][m][stat]
            assert lo <= s[m][stat] <= hi and lo < hi


@pytest.mark.parametrize(("residual", "message"), [("abc", "got 'abc'"), ("[1, 2]", "got [1, 2]"), (".nan", "got nan")])
def test_a_residual_that_is_not_a_number_is_named(tmp_path, residual, message):
    (tmp_path / "p.yaml").write_text(f"based_on: vllm\nresiduals:\n  iteration_seconds: {{median_abs: {residual}}}\n")
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml", QUICK + [f"cluster.pools.0.engine={tmp_path / 'p.yaml'}"])
    with pytest.raises(Exception, match=r"residuals.iteration_seconds.median_abs must be a finite number >= 0 .*" + message.replace("[", r"\[").replace("]", r"\]")):
        profile_error(sc)


def test_an_error_of_90_percent_or_more_still_gets_a_band_within_the_cores_time_scale(tmp_path):
    # 1 - 0.9 is 0.0999... in floating point, under the core's 0.1: the run failed after the base run.
    (tmp_path / "p.yaml").write_text("based_on: vllm\nresiduals:\n  iteration_seconds: {median_abs: 0.95}\n")
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml", ["workload.requests=40", f"cluster.pools.0.engine={tmp_path / 'p.yaml'}"])
    assert scaled(sc, 1 - 0.9).cluster.pools[0].calibration.time_scale == 0.1
    result, bars = with_error_bars(sc, simulate)
    low, high = bars["e2e_s"]["p50"]
    assert low < result.summary["e2e_s"]["p50"] < high and bars["relative_error"] == 0.9
