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
