"""``fleetwise sweep``, ``goodput`` and ``place``: many simulations of one scenario, resumable."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fleetwise.cli.app import app, out, err
from fleetwise.cli.options import float_option
from fleetwise.cli.format import _default_dir, _check_positive

SWEEP_TABLE_ROWS = 100
"""The most points ``sweep`` prints (a terminal table of 10,000 rows takes seconds and helps no one)."""
REQUEST_TABLES_MAX_POINTS = 1000
"""The most points whose per-request tables ``sweep`` keeps unless told (``--requests``): 1.3 MiB per
20,000-request point, so 1.3 GB at this size and 13 GB for 10,000 points, which few want by default."""


def keeps_request_tables(requests: Optional[bool], points: int) -> bool:
    """Whether a sweep of ``points`` points keeps per-request tables: ``--requests`` / ``--no-requests``
    when given, else only up to ``REQUEST_TABLES_MAX_POINTS`` points."""
    return requests if requests is not None else points <= REQUEST_TABLES_MAX_POINTS


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by ``sigterm_interrupts``: the sweep stops as on Ctrl-C."""


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block, SIGTERM (``kill PID``, a batch system's time limit) raises ``Terminated`` in
    the main thread, so that the sweep stops as on Ctrl-C: workers terminated, ``points.parquet``
    rebuilt from the points saved; a second SIGTERM after the block ends the process at once."""
    try:
        old = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@app.command()
def sweep(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    grid: List[str] = typer.Option(..., "--grid", help="PATH=V1,V2,... (repeatable): every combination is a point."),
    set_: List[str] = typer.Option([], "--set", help="Override for every point: PATH=VALUE. Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Sweep directory (default sweeps/<name>); rerunning resumes."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Local worker processes."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: a cluster address, or 'local' to start a private one."),
    requests: Optional[bool] = typer.Option(None, "--requests/--no-requests", help=f"Keep each point's per-request table (and instances, vllm-bench.json), or only its summary. Default: kept for sweeps of up to {REQUEST_TABLES_MAX_POINTS:,} points, summaries only above (1.3 MiB per 20,000-request point)."),
    iterations: bool = typer.Option(False, "--iterations", help="Also keep each point's per-iteration table (for the report's time series)."),
) -> None:
    """Run SCENARIO at every point of a parameter grid, in parallel, saving each point as it finishes."""
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.runner import run_points
    from fleetwise.sweep.scenarios import BaseScenario
    from fleetwise.sweep.store import SweepStore

    g = parse_grid(grid, set_)
    points = expand(g)
    base = BaseScenario(scenario, set_)  # the file parsed once, not once per point
    for p in points:  # validate every point before running any
        base.load(p.overrides())
    name = base.load().name
    write_requests = keeps_request_tables(requests, len(points))
    if requests is None and not write_requests:
        err.print(f"{len(points):,} points: keeping each point's summary only, not its per-request table "
                  f"(default above {REQUEST_TABLES_MAX_POINTS:,} points); add --requests to keep them", highlight=False, markup=False)
    ids = {p.id for p in points}
    with SweepStore(output or _default_dir("sweeps", name)) as store:  # refuses a directory another sweep is writing
        store.write_manifest({"scenario": name, "scenario_file": str(scenario), "scenario_sha1": base.fingerprint(), "overrides": list(set_), "grid": {k: v for k, v in g}})
        corrupt = store.discard_corrupt()
        for bad in sorted(set(corrupt) & ids):
            err.print(f"{corrupt[bad]} was unreadable (truncated or corrupt): recomputing point {bad}", highlight=False, markup=False)
        done_before = len(store.done() & ids)
        try:
            with sigterm_interrupts():
                new_rows = run_points(str(scenario), list(set_), points, store, [k for k, _ in g], jobs=jobs, ray_address=ray, write_requests=write_requests, record_iterations=iterations)
        except KeyboardInterrupt as e:
            n = len(store.done() & ids)  # what is on disk: workers save each point as it finishes
            store.merge(ids)
            err.print(f"interrupted: {n} of {len(points)} points saved in {store.dir}/ ({n - done_before} new); run the same command again to resume", highlight=False, markup=False)
            sys.exit(143 if isinstance(e, Terminated) else 130)
        frame = store.merge(ids)
    computed = len(new_rows)
    t = Table(title=f"{name}: {len(points)} points ({done_before} resumed) in {store.dir}/")
    cols = [k for k, _ in g] + ["requests_per_s", "ttft_p90", "tpot_p90", "e2e_p90", "slo_attainment"]
    for c in cols:
        t.add_column(c)
    if frame.height > SWEEP_TABLE_ROWS:
        t.caption = f"the first {SWEEP_TABLE_ROWS} of {frame.height} points; all of them in {store.dir}/points.parquet"
    for row in (frame.sort([k for k, _ in g]).head(SWEEP_TABLE_ROWS).iter_rows(named=True) if frame.height else []):
        t.add_row(*(("-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row[c])) for c in cols))
    out.print(t)
    out.print(f"{computed} points computed, {done_before} resumed; results in {store.dir}/", soft_wrap=True, highlight=False, markup=False)


@app.command()
def goodput(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (arrivals with a rate: poisson, gamma, onoff)."),
    slo: List[str] = typer.Option(..., "--slo", help="METRIC_pNN=SECONDS, METRIC in ttft, tpot, e2e, scheduling_delay (repeatable)."),
    attainment: Optional[float] = float_option(None, "--attainment", min=0.0, max=1.0, help="Fraction of requests that must meet every SLO (default from the _pNN suffix, else 0.9)."),
    set_: List[str] = typer.Option([], "--set", help="Override: PATH=VALUE. Repeatable."),
    low: float = float_option(0.5, "--low", min=1e-6, max=1e6, help="Lowest rate tried, requests/s (the search stops at 1e6)."),
    high: Optional[float] = typer.Option(None, "--high", help="Upper bracket, requests/s (default: doubling from --low)."),
    tolerance: float = float_option(0.05, "--tolerance", min=0.001, max=0.5, help="Relative width at which bisection stops."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for the evaluated points and goodput.json."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Worker processes for the attainment curve."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run the simulations on Ray: a cluster address, or 'local' to start a private one."),
) -> None:
    """Find the highest request rate meeting the SLOs (DistServe's goodput), per instance and per GPU."""
    from fleetwise.config.load import load_scenario
    from fleetwise.sweep.goodput import parse_slos, search

    slos, implied = parse_slos(slo, attainment)
    _check_positive("--low", low)
    _check_positive("--high", high)
    target = attainment if attainment is not None else (implied if implied is not None else 0.9)
    name = load_scenario(scenario, set_).name
    out_dir = output or _default_dir("sweeps", f"{name}-goodput")
    try:
        with sigterm_interrupts():
            r = search(str(scenario), list(set_), out_dir, slos, target, low, high, tolerance, jobs, ray_address=ray)
    except KeyboardInterrupt as e:
        err.print(f"interrupted: evaluated points are saved in {out_dir}/; run the same command again to resume")
        sys.exit(143 if isinstance(e, Terminated) else 130)
    if r["below_rate"] is not None:
        out.print(f"no rate tried meets {target:.0%} attainment of {slos}: the goodput of {name} is below the lowest rate, "
                  f"{r['below_rate']:.3g} req/s (attainment there: {dict((c['rate'], c['attainment']) for c in r['curve']).get(r['below_rate'], 0.0):.1%}); "
                  "lower --low to find it", highlight=False, markup=False)
    else:
        out.print(f"goodput of {name} at {target:.0%} attainment of {slos}: {r['goodput_rate']:.3g} req/s "
                  f"({r['goodput_per_instance']:.3g} per instance, {r['goodput_per_gpu']:.3g} per GPU, {r['gpus']} GPUs)")
    t = Table(title="SLO attainment around the goodput")
    t.add_column("rate (req/s)", justify="right")
    t.add_column("attainment", justify="right")
    for c in r["curve"]:
        t.add_row(f"{c['rate']:.3g}", f"{c['attainment']:.1%}")
    out.print(t)
    if r.get("passing_above"):
        out.print(f"note: attainment is not monotone in the rate: {', '.join(f'{x:.3g}' for x in r['passing_above'])} req/s, above the goodput, "
                  f"meet{'s' if len(r['passing_above']) == 1 else ''} {target:.0%} too (more requests per point smooth the curve)", highlight=False, markup=False)
    out.print(f"results in {out_dir}/")


@app.command()
def place(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (arrivals with a rate)."),
    grid: List[str] = typer.Option(..., "--grid", help="Layout dimension PATH=V1,V2,... (repeatable), e.g. cluster.pools.0.count=1,2,3."),
    slo: List[str] = typer.Option(..., "--slo", help="METRIC_pNN=SECONDS (repeatable)."),
    attainment: Optional[float] = float_option(None, "--attainment", min=0.0, max=1.0, help="Fraction that must meet every SLO (default from _pNN, else 0.9)."),
    objective: str = typer.Option("goodput_per_gpu", "--objective", help="goodput, goodput_per_gpu or goodput_per_dollar."),
    budget_dollars: Optional[float] = typer.Option(None, "--budget-dollars-per-hour", help="Skip layouts costing more per hour."),
    budget_watts: Optional[float] = typer.Option(None, "--budget-watts", help="Skip layouts drawing more (TDP, or power caps)."),
    set_: List[str] = typer.Option([], "--set", help="Override for every layout: PATH=VALUE. Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for the searches and placement.json."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Layouts searched in parallel."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Search every layout at once on Ray: a cluster address, or 'local' to start a private one."),
) -> None:
    """Find the cluster layout with the best goodput (per GPU, per dollar) within a cost or power budget."""
    from fleetwise.config.load import load_scenario
    from fleetwise.sweep.goodput import parse_slos
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.placement import check_layout_count, place as run_place

    slos, implied = parse_slos(slo, attainment)
    _check_positive("--budget-dollars-per-hour", budget_dollars)
    _check_positive("--budget-watts", budget_watts)
    target = attainment if attainment is not None else (implied or 0.9)
    g = parse_grid(grid, set_)
    check_layout_count([(path, len(values)) for path, values in g])  # before expanding it
    points = expand(g)  # each layout is validated (and priced) by run_place before any search
    name = load_scenario(scenario, set_).name
    out_dir = output or _default_dir("sweeps", f"{name}-placement")
    try:
        with sigterm_interrupts():
            rows = run_place(str(scenario), list(set_), points, out_dir, slos, target, objective, budget_dollars, budget_watts, jobs=jobs, ray_address=ray)
    except KeyboardInterrupt as e:
        err.print(f"interrupted: finished searches are in {out_dir}/points/; run the same command again to resume them")
        sys.exit(143 if isinstance(e, Terminated) else 130)
    t = Table(title=f"{name}: {len(rows)} layouts ranked by {objective} at {target:.0%} of {slos}")
    for c in ("layout", "GPUs", "$/h", "kW", "goodput", "per GPU", "per $/h"):
        t.add_column(c, justify="left" if c == "layout" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    below = lambda r, v: f"< {r['below_rate']:.3g}" if r.get("below_rate") is not None and v is not None else fmt(v)  # noqa: E731
    for r in rows:
        t.add_row(r["layout"] + ("" if r["within_budget"] else " (over budget)"), str(r["gpus"]), f"{r['dollars_per_hour']:.2f}", f"{r['watts'] / 1e3:.2f}",
                  below(r, r.get("goodput")), *(("-", "-") if r.get("below_rate") is not None else (fmt(r.get("goodput_per_gpu")), fmt(r.get("goodput_per_dollar")))))
    out.print(t)
    best = next((r for r in rows if r["within_budget"] and (r.get("goodput") or 0.0) > 0), None)
    if best is not None:
        out.print(f"best: {best['layout']}")
    elif any(r["within_budget"] for r in rows):
        lowest = min((r["below_rate"] for r in rows if r.get("below_rate") is not None), default=None)
        out.print(f"no layout within the budget meets the SLOs, even at the lowest rate searched ({lowest:g} req/s)", highlight=False, markup=False)
    else:
        out.print("no layout is within the budget")


@app.command()
def designs(
    study: Path = typer.Argument(..., help="Design-study YAML file (base scenario, SLOs, reference, designs)."),
    design: List[str] = typer.Option([], "--design", help="Only this design (repeatable; the reference is searched too). Default: all."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for the searches and designs.json (default sweeps/<study name>)."),
    jobs: int = typer.Option(1, "-j", "--jobs", min=1, help="Designs searched in parallel."),
) -> None:
    """Compare cluster designs provisioned iso-power / iso-cost: each design's machines, watts, $/h and throughput under the SLOs."""
    from fleetwise.config.design_study import load_design_study
    from fleetwise.sweep.designs import run_study

    s = load_design_study(study)
    out_dir = output or _default_dir("sweeps", s.name)
    try:
        with sigterm_interrupts():
            rows = run_study(s, out_dir, list(design), jobs=jobs)
    except KeyboardInterrupt as e:
        err.print(f"interrupted: finished searches are in {out_dir}/designs/; run the same command again to resume them")
        sys.exit(143 if isinstance(e, Terminated) else 130)
    slos = ", ".join(f"{k} <= {v:g} s" for k, v in s.slo.items())
    t = Table(title=f"{s.name}: throughput at {s.attainment:.0%} of requests within {slos}; ratios against {s.reference}")
    for c in ("design", "provisioning", "machines", "kW", "$/h", "req/s", "x req/s", "x kW", "x $/h"):
        t.add_column(c, justify="left" if c in ("design", "provisioning", "machines") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for r in rows:
        goodput = f"< {r['below_rate']:.3g}" if r.get("below_rate") is not None else fmt(r["goodput"])
        t.add_row(r["design"], ", ".join(r["provisioning"]), r["machines"], f"{r['watts'] / 1e3:.1f}", f"{r['dollars_per_hour']:.1f}",
                  goodput, f"< {r['goodput_ratio_below']:.3g}" if r.get("goodput_ratio_below") is not None else fmt(r["goodput_ratio"]),
                  fmt(r["watts_ratio"]), fmt(r["cost_ratio"]))
    out.print(t)
    if any(r.get("below_rate") is not None for r in rows):
        out.print("< X: no rate searched meets the SLOs; the throughput is below X req/s (the study's low)", highlight=False, markup=False)
    out.print(f"results in {out_dir}/designs.json", soft_wrap=True, highlight=False, markup=False)
