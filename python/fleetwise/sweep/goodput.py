"""Goodput search (DistServe's definition): the highest request rate at which at least a target
fraction of requests meets every latency SLO, found by bisection, with the attainment curve around it.

Per-request SLOs are thresholds on TTFT, TPOT and E2E; a request meets the SLO when it meets every
threshold given, and a rejected request never does. Attainment = requests meeting it / all requests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path

import polars as pl

from fleetwise.metrics.slo import SLO_COLUMNS as METRICS
from fleetwise.metrics.slo import attainment
from fleetwise.sweep.grid import RATE_PATH, Point
from fleetwise.sweep.ray_pool import RayPool, pool_for
from fleetwise.sweep.runner import run_points
from fleetwise.sweep.scenarios import BaseScenario
from fleetwise.sweep.store import SweepStore, temp_name

__all__ = ["METRICS", "MAX_RATE", "attainment", "parse_slos", "search", "write_json"]


_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
"""A plain decimal number (ASCII digits, no sign, exponent or underscores)."""
MAX_RATE = 1e6
"""The highest arrival rate (requests/s) the search doubles up to before it gives up."""


def write_json(path: Path, doc: dict) -> None:
    """Writes ``doc`` to ``path`` atomically (a temporary file renamed over it, so a FIFO or a
    half-written file is never left there); a failure to write is a ``ConfigError`` naming ``path``."""
    from fleetwise.sweep.store import saving

    path = Path(path)
    tmp = temp_name(path)
    try:
        with saving(path):
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_result_file(path: Path, option: str = "-o") -> None:
    """Refuses (``ConfigError`` naming ``path`` and ``option``), before any simulation, a results
    file that cannot be replaced because a directory is in its place."""
    from fleetwise.errors import ConfigError
    from fleetwise.paths import path_kind

    if path_kind(Path(path), option) == "dir":
        raise ConfigError(f"{path}: is a directory where the results file goes; remove it or give another {option} directory")


def parse_slos(options: list[str], attainment: float | None = None) -> tuple[dict[str, float], float | None]:
    """Parses ``ttft_p90=0.5`` style options into thresholds and the attainment their percentile
    implies (percentiles that disagree are refused unless ``attainment`` is given, which sets it)."""
    from fleetwise.errors import ConfigError

    if attainment is not None and not 0 < attainment <= 1:  # 0 would search ~20 rates before saying so
        raise ConfigError(f"--attainment {attainment:g}: must be a fraction of requests above 0 and at most 1")
    slos: dict[str, float] = {}
    implied = set()
    for opt in options:
        key, _, value = opt.partition("=")
        name, has_pct, pct = key.strip().partition("_p")
        if name not in METRICS or not value:
            raise ConfigError(f"--slo {opt!r}: expected METRIC[_pNN]=SECONDS with METRIC one of {', '.join(METRICS)} (e.g. ttft_p90=0.5)")
        if name in slos:  # the last would silently win
            raise ConfigError(f"--slo {name} given twice ({', '.join(o for o in options if o.partition('=')[0].strip().partition('_p')[0] == name)}); give each metric once")
        text = value.strip()
        try:
            if "_" in text or not text.isascii():  # float() reads 1_0 as 10, and other scripts' digits
                raise ValueError(text)
            seconds = float(text)
        except ValueError:
            raise ConfigError(f"--slo {opt!r}: {value!r} is not a number of seconds") from None
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"--slo {name}={seconds:g}: the threshold must be a finite number of seconds > 0")
        slos[name] = seconds
        if has_pct:
            if not _NUMBER.fullmatch(pct) or not 0 < float(pct) < 100:
                raise ConfigError(f"--slo {opt!r}: the percentile after _p must be a number between 0 and 100 (e.g. {name}_p90), got {pct!r}")
            implied.add(float(pct) / 100)
    if not slos:
        raise ConfigError("goodput needs at least one --slo, e.g. --slo ttft_p90=0.5 --slo tpot_p90=0.05")
    if len(implied) > 1 and attainment is None:
        raise ConfigError(f"--slo percentiles disagree ({sorted(implied)}); give --attainment instead")
    return slos, (implied.pop() if len(implied) == 1 else None)


def _rate_point(rate: float) -> Point:
    """The sweep point simulating ``rate``, rounded to 6 decimals (at least 6 significant digits
    below 0.1 req/s: a rate of 2.5e-7 is not rounded to 0)."""
    return Point(((RATE_PATH, round(rate, max(6, 5 - math.floor(math.log10(rate))))),))


def _measure(scenario: str, overrides: list[str], store: SweepStore, rates: list[float], slos: dict, jobs: int, quiet: bool, description: str,
             ray_address: "str | RayPool | None" = None) -> dict[float, float]:
    points = [_rate_point(r) for r in rates]
    out: dict[float, float] = {}
    for attempt in range(2):
        run_points(scenario, overrides, points, store, [RATE_PATH], jobs=jobs, quiet=quiet, description=description, ray_address=ray_address)
        damaged = []
        for p in points:
            path = store.dir / "points" / p.id / "requests.parquet"
            try:
                out[p.rate] = attainment(pl.read_parquet(path), slos)
            except Exception as e:  # truncated or corrupt (polars raises several kinds), or missing
                if attempt:
                    from fleetwise.errors import SimulationError

                    raise SimulationError(f"{path}: unreadable after recomputing its point ({e})") from None
                sys.stderr.write(f"{path}: unreadable (truncated or corrupt): recomputing point {p.id}\n")
                store.forget(p.id)
                damaged.append(p)
        if not damaged:
            break
    return out


def search(
    scenario: str,
    overrides: list[str],
    out_dir: Path,
    slos: dict[str, float],
    target: float = 0.9,
    low: float = 0.5,
    high: float | None = None,
    tolerance: float = 0.05,
    jobs: int = 1,
    quiet: bool = False,
    ray_address: "str | RayPool | None" = None,
    curve: bool = True,
) -> dict:
    """Finds the goodput of a scenario by bisection on ``workload.arrivals.rate`` (Poisson, gamma or on/off arrivals).

    When even ``low`` misses the target the goodput is reported as 0 with ``below_rate`` = ``low``
    (it lies below the range searched); otherwise ``below_rate`` is None.
    Starts from ``[low, high]`` (high doubles until attainment falls below ``target``), stops when
    the bracket is within ``tolerance`` (relative), then (unless ``curve`` is false: the bisection's
    rates only) measures the attainment curve at 0.5x to 1.5x the goodput. Every evaluated rate is a saved sweep point (so a rerun resumes). With
    ``ray_address`` (an address, ``"local"``, or a ``RayPool`` shared with other searches) every
    simulation runs as a Ray task and the driver saves its files: the bisection's one at a time,
    the attainment curve's in parallel. ``passing_above`` lists the measured rates above the
    goodput that meet the target too (attainment that is not monotone in the rate).
    """
    from fleetwise.config.load import load_scenario
    from fleetwise.errors import ConfigError

    if high is not None and not high > low:
        raise ConfigError(f"--high {high:g} must be above --low {low:g} (the bracket the search starts from)")
    sc = load_scenario(scenario, overrides)
    if not hasattr(sc.workload.arrivals, "rate"):
        raise ConfigError(f"{scenario}: goodput search varies workload.arrivals.rate; {sc.workload.arrivals.kind} arrivals have no rate (use poisson, gamma or onoff)")
    gpus = sum(p.count * p.parallelism.tp * p.parallelism.pp for p in sc.cluster.pools)
    instances = sum(p.count for p in sc.cluster.pools)
    check_result_file(Path(out_dir) / "goodput.json")  # before any simulation, not after them all
    store = SweepStore(out_dir)  # holds the directory's lock until the search ends
    stack = contextlib.ExitStack()
    try:
        ray_address = pool_for(ray_address, stack)  # one pool for the whole search
        store.write_manifest({"scenario": sc.name, "scenario_file": str(scenario), "scenario_sha1": BaseScenario(scenario, overrides).fingerprint(), "overrides": overrides, "grid": {RATE_PATH: "goodput search"}, "slo": slos, "attainment_target": target})
        measured: dict[float, float] = {}

        def att(rate: float) -> float:
            if rate not in measured:
                measured.update(_measure(scenario, overrides, store, [rate], slos, 1, True, "goodput", ray_address))
            return measured[_rate_point(rate).rate]

        lowest = low
        if att(low) < target:
            goodput = 0.0  # below the lowest rate tried: `below_rate` says so
        else:
            hi = high if high is not None else low * 2
            while att(hi) >= target:
                low, hi = hi, hi * 2
                if hi > MAX_RATE:
                    raise ConfigError(f"{scenario}: attainment stays above {target} beyond 1e6 req/s (every rate tried up to {low:g} req/s meets {slos}): "
                                      "check the SLOs; they bound nothing at this load: tighten them or simulate more requests")
            while (hi - low) / hi > tolerance:
                mid = math.sqrt(low * hi)
                if att(mid) >= target:
                    low = mid
                else:
                    hi = mid
            goodput = low
        curve_rates = [goodput * f for f in (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)] if goodput > 0 else [low * f for f in (0.25, 0.5, 1.0)]
        if curve:
            measured.update(_measure(scenario, overrides, store, curve_rates, slos, jobs, quiet, "attainment curve", ray_address))
        _attainment_column(store, store.merge(), measured, slos)
        result = {
            "scenario": sc.name,
            "slo": slos,
            "attainment_target": target,
            "goodput_rate": goodput,
            "below_rate": lowest if goodput == 0.0 else None,
            "goodput_per_instance": goodput / instances,
            "goodput_per_gpu": goodput / gpus,
            "gpus": gpus,
            "instances": instances,
            "curve": [{"rate": r, "attainment": a} for r, a in sorted(measured.items())],
            # Attainment is not always monotone in the rate (few requests, bursts): rates above the
            # goodput that meet the target too are named, not hidden behind "the highest rate".
            "passing_above": [r for r, a in sorted(measured.items()) if goodput > 0 and r > _rate_point(goodput).rate and a >= target],
        }
        write_json(Path(out_dir) / "goodput.json", result)
        return result
    finally:
        stack.close()
        store.close()


def _attainment_column(store: SweepStore, frame: pl.DataFrame, measured: dict[float, float], slos: dict) -> None:
    """Rewrites ``points.parquet``'s ``slo_attainment`` against the search's SLOs (each point's own
    summary measures it against the scenario's ``slo:`` block, which the search does not use), so
    that it agrees with ``goodput.json``; a point whose requests cannot be read gets null."""
    from fleetwise.sweep.store import saving

    if frame.height == 0 or "point" not in frame.columns:
        return
    values = []
    for pid, rate in zip(frame["point"].to_list(), frame["rate"].to_list() if "rate" in frame.columns else [None] * frame.height):
        if rate in measured:
            values.append(measured[rate])
            continue
        try:
            values.append(attainment(pl.read_parquet(store.dir / "points" / pid / "requests.parquet"), slos))
        except Exception:  # a point without (readable) requests: unknown, not the scenario's number
            values.append(None)
    final = store.dir / "points.parquet"
    tmp = temp_name(final)
    try:
        with saving(final):
            frame.with_columns(pl.Series("slo_attainment", values, dtype=pl.Float64)).write_parquet(tmp)
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
