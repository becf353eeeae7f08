"""Error bars: how far a run's latencies and SLO attainment move within the engine profile's
calibration error.

An engine profile records what its fit left (``residuals``): the median absolute error of the
iteration times it was fitted to (``vllm``: 156 iterations on an H200), or of the TTFT/TPOT/ITL/E2E
statistics of the log it was fitted to (``fleetwise calibrate --requests``). The band re-runs the
same scenario and seed with every iteration ``1 - r`` and ``1 + r`` times as long (the core's
``time_scale``), ``r`` the largest such error among the pools' profiles, and reports each
statistic's range over the three runs. Queueing is simulated in all three, so a band widens near
saturation, where a few percent of iteration time moves TTFT a lot.

It is a sensitivity band to the profile's typical calibration error, not a confidence interval:
errors that the residuals do not show (a workload unlike the calibration's, another GPU) are not in it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from fleetwise.catalog.engine import load_engine
from fleetwise.catalog import CalibrationOverride
from fleetwise.config.scenario import Scenario
from fleetwise.config.yaml_input import short_repr
from fleetwise.errors import ConfigError

LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s")
"""Summary entries that get a band."""
STATS = ("mean", "p50", "p90", "p99")
"""Statistics of each latency that get a band."""


def _median_abs(tree: Any) -> float | None:
    """The median absolute value of every number in a nested residuals mapping."""
    values: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            values.append(abs(float(x)))

    walk(tree)
    return statistics.median(values) if values else None


def profile_error(scenario: Scenario) -> float | None:
    """The relative error ``r`` of the scenario's engine profiles: per pool, the iteration-time
    fit's ``median_abs`` if recorded, else the median absolute residual of the log fit; the
    largest over the pools. None when no profile records residuals."""
    base_dir = Path(scenario._base_dir) if scenario._base_dir else None
    errors = []
    for pool in scenario.cluster.pools:
        engine = scenario.cluster.engine_of(pool)
        res = load_engine(engine, base_dir).residuals
        it = res.get("iteration_seconds", {}) if isinstance(res, dict) else {}
        r = it.get("median_abs") if isinstance(it, dict) else None
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and r >= 0)):
            raise ConfigError(f"engine profile {engine}: residuals.iteration_seconds.median_abs must be a finite number >= 0 "
                              f"(the iteration-time fit's median relative error), got {short_repr(r)}")
        if r is None:
            r = _median_abs({k: v for k, v in res.items() if k != "iteration_seconds"})
        if r is not None:
            errors.append(float(r))
    return max(errors) if errors else None


TIME_SCALE_RANGE = (0.1, 10.0)
"""The calibration ``time_scale`` the core accepts."""


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """A copy of ``scenario`` whose every pool's iterations last ``factor`` times as long (the
    pool's ``time_scale`` kept within ``TIME_SCALE_RANGE``: a profile whose error is 90% or more
    gets a band from 0.1 x)."""
    pools = []
    for pool in scenario.cluster.pools:
        over = pool.calibration or CalibrationOverride()
        scale = min(max(factor * (over.time_scale or 1.0), TIME_SCALE_RANGE[0]), TIME_SCALE_RANGE[1])  # within what the core takes
        pools.append(pool.model_copy(update={"calibration": over.model_copy(update={"time_scale": scale})}))
    sc = scenario.model_copy(update={"cluster": scenario.cluster.model_copy(update={"pools": pools})})
    sc._base_dir, sc._source = scenario._base_dir, scenario._source
    return sc


def bands(base: dict, low: dict, high: dict, r: float) -> dict:
    """Each latency statistic's and the SLO attainment's (low, high) over the three summaries."""
    out: dict[str, Any] = {"relative_error": r, "what": "range over re-runs with iteration times x (1 - r) and x (1 + r)"}
    for m in LATENCIES:
        out[m] = {}
        for s in STATS:
            vals = [x[m][s] for x in (base, low, high) if x.get(m) and x[m].get(s) is not None]
            out[m][s] = [min(vals), max(vals)] if vals else None
    atts = [x["slo"]["attainment"] for x in (base, low, high) if x.get("slo") and x["slo"].get("attainment") is not None]
    if atts:
        out["slo_attainment"] = [min(atts), max(atts)]
    return out


def with_error_bars(scenario: Scenario, run) -> tuple[Any, dict | None]:
    """Runs ``run(scenario)`` (a function returning a ``Result``) and, when the profiles record a
    residual, twice more with iteration times scaled by ``1 -/+ r``; returns the base result and the
    bands (None without residuals). The base result is the one written."""
    result = run(scenario)
    r = profile_error(scenario)
    if r is None or r <= 0:
        return result, None
    r = min(r, 0.9)
    low = run(scaled(scenario, 1.0 - r)).summary
    high = run(scaled(scenario, 1.0 + r)).summary
    return result, bands(result.summary, low, high, r)
