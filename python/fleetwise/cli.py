"""The ``fleetwise`` command line: run, compare, sweep, goodput, place, report, estimate, catalog, calibrate,
check-policy, serve-engine, serve-router.

User mistakes (bad scenario fields, unknown names, models that do not fit, malformed traces) end
with a one-paragraph message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Simulate and schedule LLM serving clusters.")
out = Console(width=120)
err = Console(stderr=True, soft_wrap=True)


def _ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x * 1e3:.1f}"


def _num(x: float | None, fmt: str) -> str:
    """``x`` formatted, or "-" when the summary has no value for it."""
    return "-" if x is None else format(x, fmt)


def _scaled(x: float | None, k: float) -> float | None:
    return None if x is None else x * k


def _summary_table(summary: dict) -> Table:
    t = Table(title=f"{summary['scenario']}: {summary['finished']}/{summary['requests']} requests finished in {summary['duration_s']:.1f} s simulated")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(f"{c} (ms)", justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E")):
        d = summary[key]
        t.add_row(label, *(_ms(d[c]) for c in ("mean", "p50", "p90", "p99")))
    return t


def _default_dir(base: str, name: str) -> Path:
    """``base/name``, the default output directory of a scenario named ``name``; it never leaves ``base``."""
    from fleetwise.errors import ConfigError

    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"scenario name {name!r} cannot name a directory under {base}/ (no / or \\, not . or ..); rename it or give -o")
    return Path(base) / name


def _check_positive(option: str, value: float | None) -> None:
    """``ConfigError`` unless ``value`` (an option's number) is unset or finite and > 0."""
    import math

    from fleetwise.errors import ConfigError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} {value:g}: must be a finite number > 0")


def _check_slos(slos: dict[str, float]) -> None:
    """``ConfigError`` for an SLO threshold that is not a finite number of seconds > 0."""
    import math

    from fleetwise.errors import ConfigError

    for name, seconds in slos.items():
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"--slo {name}={seconds:g}: the threshold must be a finite number of seconds > 0")


def _trace_rows_line(rows: dict[str, int]) -> str:
    """``trace: N rows read, M replayed; left out on purpose: reason count, ...``."""
    left = ", ".join(f"{k} {v}" for k, v in rows.items() if k not in ("rows_read", "replayed") and v)
    line = f"trace: {rows.get('rows_read', 0)} rows read, {rows.get('replayed', 0)} replayed"
    return line + (f"; left out on purpose: {left}" if left else "")


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    set_: List[str] = typer.Option([], "--set", help="Override a value: PATH=VALUE (e.g. cluster.pools.0.count=8). Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for requests.parquet and summary.json (default runs/<name>)."),
    iterations: bool = typer.Option(False, "--iterations", help="Also write one row per iteration (iterations.parquet)."),
    policy_timeout: float = typer.Option(60.0, "--policy-timeout", min=0.001, help="Most seconds one call into a Python policy may take; a longer call stops the run (exit 2)."),
) -> None:
    """Simulate SCENARIO, print a summary table and write the results."""
    from fleetwise.config.load import load_scenario
    from rich.markup import escape

    from fleetwise.errors import FleetwiseError
    from fleetwise.result import check_output_dir, write_stopped
    from fleetwise.simulate import simulate

    sc = load_scenario(scenario, set_)
    out_dir = check_output_dir(output or _default_dir("runs", sc.name))  # a bad -o fails before simulating
    try:
        result = simulate(sc, record_iterations=iterations, progress=True, policy_timeout=policy_timeout)
    except KeyboardInterrupt:
        err.print("interrupted: the simulation was cancelled; nothing was written")
        sys.exit(130)
    except FleetwiseError as e:
        kept = getattr(e, "requests", None)
        if kept is None:
            raise
        d = write_stopped(out_dir, kept, sc.name, f"{type(e).__name__}: {e}")
        err.print(f"[bold red]error:[/] {escape(f'{type(e).__name__}: {e}')}", highlight=False, markup=True)
        err.print(f"the run stopped: {int((kept['status'] == 'finished').sum())} of {kept.height} requests had finished; they are written to {d}/ (the rest have status 'unfinished')", highlight=False, markup=False)
        sys.exit(2)
    s = result.summary
    out.print(_summary_table(s))
    if "trace_rows" in s:
        out.print(_trace_rows_line(s["trace_rows"]))
    tp = s["throughput"]
    out.print(f"throughput: {tp['requests_per_s']:.2f} req/s, {tp['output_tokens_per_s']:.0f} output tok/s; preemptions: {s['preemptions']}; rejected: {s['rejected']}")
    if "energy" in s and s["energy"]["joules"] > 0:
        e, c = s["energy"], s["cost"]
        out.print(f"energy: {e['joules'] / 3.6e6:.2f} kWh, {_num(e['joules_per_output_token'], '.2f')} J/output token, {_num(e['average_watts_per_gpu'], '.0f')} W/GPU; cost: ${c['dollars']:.2f} ({_num(c['dollars_per_million_output_tokens'], '.2f')} $/M output tokens)")
    if "experts" in s:
        x = s["experts"]
        hit = "n/a (all in HBM)" if x["hit_rate"] is None else f"{x['hit_rate']:.1%}"
        out.print(f"experts: hit rate {hit}, {x['fetched_bytes_per_token'] / 1e6:.1f} MB fetched/token, stall {x['stall_ms_per_iteration']:.2f} ms/iteration, {x['experts_activated_per_iteration']:.1f} experts activated/iteration, HBM {x['hbm_expert_gib_per_gpu']:.1f} GiB/GPU ({x['hbm_saved_gib_per_gpu']:.1f} GiB saved)")
    if "slo" in s and s["slo"]["attainment"] is not None:
        out.print(f"SLO attainment {s['slo']['targets']}: {s['slo']['attainment']:.1%}")
    for r in s.get("rejections", []):
        out.print(f"rejected {r['count']} request(s), e.g.: {r['reason']}", highlight=False)
    d = result.write(out_dir)
    out.print(f"results written to {d}/")
    if s["finished"] == 0:
        why = f"; most often: {s['rejections'][0]['reason']}" if s.get("rejections") else ""
        err.print(f"[bold red]error:[/] no request finished ({s['rejected']} of {s['requests']} rejected{why}): there is no latency to report", highlight=False)
        sys.exit(2)


@app.command()
def sweep(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    grid: List[str] = typer.Option(..., "--grid", help="PATH=V1,V2,... (repeatable): every combination is a point."),
    set_: List[str] = typer.Option([], "--set", help="Override for every point: PATH=VALUE. Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Sweep directory (default sweeps/<name>); rerunning resumes."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Local worker processes."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: a cluster address, or 'local' to start one."),
    no_requests: bool = typer.Option(False, "--no-requests", help="Keep only each point's summary, not its per-request table."),
    iterations: bool = typer.Option(False, "--iterations", help="Also keep each point's per-iteration table (for the report's time series)."),
) -> None:
    """Run SCENARIO at every point of a parameter grid, in parallel, saving each point as it finishes."""
    from fleetwise.config.load import load_scenario
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.runner import run_points
    from fleetwise.sweep.store import SweepStore

    g = parse_grid(grid)
    points = expand(g)
    for p in points:  # validate every point before running any
        load_scenario(scenario, [*set_, *p.overrides()])
    name = load_scenario(scenario, set_).name
    ids = {p.id for p in points}
    with SweepStore(output or _default_dir("sweeps", name)) as store:  # refuses a directory another sweep is writing
        store.write_manifest({"scenario": name, "scenario_file": str(scenario), "overrides": list(set_), "grid": {k: v for k, v in g}})
        for bad in sorted(set(store.discard_corrupt()) & ids):
            err.print(f"{store.rows}/{bad}.parquet was unreadable (truncated or corrupt): recomputing point {bad}", highlight=False, markup=False)
        done_before = len(store.done() & ids)
        try:
            new_rows = run_points(str(scenario), list(set_), points, store, [k for k, _ in g], jobs=jobs, ray_address=ray, write_requests=not no_requests, record_iterations=iterations)
        except KeyboardInterrupt:
            n = len(store.done() & ids)  # what is on disk: workers save each point as it finishes
            store.merge()
            err.print(f"interrupted: {n} of {len(points)} points saved in {store.dir}/ ({n - done_before} new); run the same command again to resume", highlight=False, markup=False)
            sys.exit(130)
        frame = store.merge()
    computed = len(new_rows)
    t = Table(title=f"{name}: {len(points)} points ({done_before} resumed) in {store.dir}/")
    cols = [k for k, _ in g] + ["requests_per_s", "ttft_p90", "tpot_p90", "e2e_p90", "slo_attainment"]
    for c in cols:
        t.add_column(c)
    for row in (frame.sort([k for k, _ in g]).iter_rows(named=True) if frame.height else []):
        t.add_row(*(("-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row[c])) for c in cols))
    out.print(t)
    out.print(f"{computed} points computed, {done_before} resumed; results in {store.dir}/", soft_wrap=True, highlight=False, markup=False)


@app.command()
def goodput(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (arrivals with a rate: poisson, gamma, onoff)."),
    slo: List[str] = typer.Option(..., "--slo", help="METRIC_pNN=SECONDS, METRIC in ttft, tpot, e2e (repeatable)."),
    attainment: Optional[float] = typer.Option(None, "--attainment", min=0.0, max=1.0, help="Fraction of requests that must meet every SLO (default from the _pNN suffix, else 0.9)."),
    set_: List[str] = typer.Option([], "--set", help="Override: PATH=VALUE. Repeatable."),
    low: float = typer.Option(0.5, "--low", min=1e-6, help="Lowest rate tried, requests/s."),
    high: Optional[float] = typer.Option(None, "--high", help="Upper bracket, requests/s (default: doubling from --low)."),
    tolerance: float = typer.Option(0.05, "--tolerance", min=0.001, max=0.5, help="Relative width at which bisection stops."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for the evaluated points and goodput.json."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Worker processes for the attainment curve."),
) -> None:
    """Find the highest request rate meeting the SLOs (DistServe's goodput), per instance and per GPU."""
    from fleetwise.config.load import load_scenario
    from fleetwise.sweep.goodput import parse_slos, search

    slos, implied = parse_slos(slo)
    _check_slos(slos)
    _check_positive("--low", low)
    _check_positive("--high", high)
    target = attainment if attainment is not None else (implied if implied is not None else 0.9)
    name = load_scenario(scenario, set_).name
    out_dir = output or _default_dir("sweeps", f"{name}-goodput")
    try:
        r = search(str(scenario), list(set_), out_dir, slos, target, low, high, tolerance, jobs)
    except KeyboardInterrupt:
        err.print(f"interrupted: evaluated points are saved in {out_dir}/; run the same command again to resume")
        sys.exit(130)
    out.print(f"goodput of {name} at {target:.0%} attainment of {slos}: {r['goodput_rate']:.3g} req/s "
              f"({r['goodput_per_instance']:.3g} per instance, {r['goodput_per_gpu']:.3g} per GPU, {r['gpus']} GPUs)")
    t = Table(title="SLO attainment around the goodput")
    t.add_column("rate (req/s)", justify="right")
    t.add_column("attainment", justify="right")
    for c in r["curve"]:
        t.add_row(f"{c['rate']:.3g}", f"{c['attainment']:.1%}")
    out.print(t)
    out.print(f"results in {out_dir}/")


def _parse_variant(text: str) -> tuple[str, list[str]]:
    """``'label: path=value; path=value'`` -> (label, overrides); the label defaults to the overrides."""
    from fleetwise.errors import ConfigError

    label, sep, rest = text.partition(": ")
    if not sep:
        label, rest = text, text
    overrides = [o.strip() for o in rest.split(";") if o.strip()]
    if not overrides or any("=" not in o for o in overrides):
        raise ConfigError(f"--variant {text!r}: expected 'LABEL: PATH=VALUE; PATH=VALUE'")
    return label.strip(), overrides


_COMPARE_ROWS = (
    ("requests/s", "requests_per_s", None),
    ("output tok/s", "output_tokens_per_s", None),
    *((f"TTFT {q} (ms)", f"ttft_{q}", 1e3) for q in ("p50", "p90", "p99")),
    *((f"TPOT {q} (ms)", f"tpot_{q}", 1e3) for q in ("p50", "p90", "p99")),
    ("ITL p99 (ms)", "itl_p99", 1e3),
    ("E2E p90 (s)", "e2e_p90", None),
    ("preemptions", "preemptions", None),
    ("rejected", "rejected", None),
    ("expert hit rate", "expert_hit_rate", None),
    ("expert stall/iter (ms)", "expert_stall_ms_per_iteration", None),
    ("expert HBM (GiB/GPU)", "expert_hbm_gib_per_gpu", None),
)
"""``compare``'s rows: label, flattened summary column (``flatten_summary``), scale (None: as is)."""


@app.command()
def compare(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    variant: List[str] = typer.Option(..., "--variant", help="'LABEL: PATH=VALUE; PATH=VALUE' (repeatable), e.g. 'vllm: cluster.pools.0.scheduler={kind: vllm}'."),
    set_: List[str] = typer.Option([], "--set", help="Override for every variant: PATH=VALUE. Repeatable."),
    slo: List[str] = typer.Option([], "--slo", help="METRIC_pNN=SECONDS (repeatable): adds SLO attainment, and goodput with --goodput."),
    with_goodput: bool = typer.Option(False, "--goodput", help="Also search each variant's goodput (needs --slo)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for one run directory per variant (default compare/<name>)."),
) -> None:
    """Run one scenario under several policies and print them side by side."""
    from fleetwise.config.load import load_scenario
    from fleetwise.errors import ConfigError
    from fleetwise.result import check_output_dir
    from fleetwise.simulate import simulate
    from fleetwise.metrics import attainment, flatten_summary
    from fleetwise.sweep.goodput import parse_slos, search

    variants = [_parse_variant(v) for v in variant]
    if len({l for l, _ in variants}) != len(variants):
        raise ConfigError("--variant labels must differ")
    slos, implied = parse_slos(slo) if slo else ({}, None)
    if with_goodput and not slos:
        raise ConfigError("--goodput needs at least one --slo")
    target = implied or 0.9
    base = load_scenario(scenario, set_)
    out_dir = check_output_dir(output or _default_dir("compare", base.name))
    columns = {}
    for label, overrides in variants:
        sc = load_scenario(scenario, [*set_, *overrides])
        try:
            r = simulate(sc, progress=True)
        except KeyboardInterrupt:
            err.print(f"interrupted: finished variants are in {out_dir}/")
            sys.exit(130)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        r.write(out_dir / safe)
        flat = flatten_summary(r.summary)
        col = {label: flat[name] if scale is None else _scaled(flat[name], scale) for label, name, scale in _COMPARE_ROWS}
        if slos:
            col["SLO attainment"] = attainment(r.requests, slos)
        if with_goodput:
            g = search(str(scenario), [*set_, *overrides], out_dir / f"{safe}-goodput", slos, target, quiet=True)
            col["goodput (req/s)"] = g["goodput_rate"]
            col["goodput per GPU"] = g["goodput_per_gpu"]
        columns[label] = col
    t = Table(title=f"{base.name}: {len(variants)} variants" + (f", SLO {slos} for {target:.0%}" if slos else ""))
    t.add_column("metric")
    for label in columns:
        t.add_column(label, justify="right")
    for metric in next(iter(columns.values())):
        if all(c[metric] is None for c in columns.values()):
            continue
        t.add_row(metric, *("-" if c[metric] is None else f"{c[metric]:.1%}" if metric in ("SLO attainment", "expert hit rate") else f"{c[metric]:.4g}" for c in columns.values()))
    out.print(t)
    out.print(f"runs in {out_dir}/ (fleetwise report {out_dir}/* -o compare.html)")


@app.command()
def report(
    inputs: List[Path] = typer.Argument(..., help="Run directories (compared side by side) or a sweep directory."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    title: Optional[str] = typer.Option(None, "--title", help="Report title."),
) -> None:
    """Write one self-contained HTML report (plotly, works offline) of runs or a sweep."""
    from fleetwise.errors import ConfigError
    from fleetwise.report import write_report
    from fleetwise.result import check_output_dir

    if output.is_dir():
        raise ConfigError(f"-o {output}: is a directory; give the HTML file to write, e.g. {output / 'report.html'}")
    try:
        check_output_dir(output.parent)
    except ConfigError as e:
        raise ConfigError(f"-o {output}: cannot write the report there: {e}") from None
    try:
        path = write_report(list(inputs), output, title=title)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except OSError as e:  # the output's directory cannot be created or written
        raise ConfigError(f"{e.filename or output}: cannot write the report: {e.strerror or e}") from None
    out.print(f"report written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def place(
    scenario: Path = typer.Argument(..., help="Scenario YAML file (arrivals with a rate)."),
    grid: List[str] = typer.Option(..., "--grid", help="Layout dimension PATH=V1,V2,... (repeatable), e.g. cluster.pools.0.count=1,2,3."),
    slo: List[str] = typer.Option(..., "--slo", help="METRIC_pNN=SECONDS (repeatable)."),
    attainment: Optional[float] = typer.Option(None, "--attainment", min=0.0, max=1.0, help="Fraction that must meet every SLO (default from _pNN, else 0.9)."),
    objective: str = typer.Option("goodput_per_gpu", "--objective", help="goodput, goodput_per_gpu or goodput_per_dollar."),
    budget_dollars: Optional[float] = typer.Option(None, "--budget-dollars-per-hour", help="Skip layouts costing more per hour."),
    budget_watts: Optional[float] = typer.Option(None, "--budget-watts", help="Skip layouts drawing more (TDP, or power caps)."),
    set_: List[str] = typer.Option([], "--set", help="Override for every layout: PATH=VALUE. Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for the searches and placement.json."),
    jobs: int = typer.Option(max(1, (os.cpu_count() or 1)), "-j", "--jobs", min=1, help="Layouts searched in parallel."),
) -> None:
    """Find the cluster layout with the best goodput (per GPU, per dollar) within a cost or power budget."""
    from fleetwise.config.load import load_scenario
    from fleetwise.sweep.goodput import parse_slos
    from fleetwise.sweep.grid import expand, parse_grid
    from fleetwise.sweep.placement import place as run_place

    slos, implied = parse_slos(slo)
    _check_slos(slos)
    _check_positive("--budget-dollars-per-hour", budget_dollars)
    _check_positive("--budget-watts", budget_watts)
    target = attainment if attainment is not None else (implied or 0.9)
    points = expand(parse_grid(grid))
    for p in points:
        load_scenario(scenario, [*set_, *p.overrides()])
    name = load_scenario(scenario, set_).name
    out_dir = output or _default_dir("sweeps", f"{name}-placement")
    try:
        rows = run_place(str(scenario), list(set_), points, out_dir, slos, target, objective, budget_dollars, budget_watts, jobs=jobs)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished searches are in {out_dir}/points/; run the same command again to resume them")
        sys.exit(130)
    t = Table(title=f"{name}: {len(rows)} layouts ranked by {objective} at {target:.0%} of {slos}")
    for c in ("layout", "GPUs", "$/h", "kW", "goodput", "per GPU", "per $/h"):
        t.add_column(c, justify="left" if c == "layout" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"
    for r in rows:
        t.add_row(r["layout"] + ("" if r["within_budget"] else " (over budget)"), str(r["gpus"]), f"{r['dollars_per_hour']:.2f}", f"{r['watts'] / 1e3:.2f}", fmt(r.get("goodput")), fmt(r.get("goodput_per_gpu")), fmt(r.get("goodput_per_dollar")))
    out.print(t)
    best = next((r for r in rows if r["within_budget"]), None)
    out.print(f"best: {best['layout']}" if best else "no layout is within the budget")


@app.command()
def estimate(
    model: str = typer.Option(..., "--model", help="Model name (see `fleetwise catalog`)."),
    gpu: str = typer.Option(..., "--gpu", help="GPU name (see `fleetwise catalog`)."),
    tp: int = typer.Option(1, "--tp", min=1, max=4096, help="Tensor-parallel degree."),
    pp: int = typer.Option(1, "--pp", min=1, max=4096, help="Pipeline-parallel stages."),
    ep: int = typer.Option(1, "--ep", min=1, max=4096, help="Expert parallelism for MoE models (1 or tp)."),
    microbatches: Optional[int] = typer.Option(None, "--microbatches", min=1, max=4096, help="Micro-batches with --pp (default: pp)."),
    power_cap: Optional[float] = typer.Option(None, "--power-cap", min=1, max=1e6, help="Power cap per GPU, watts."),
    pim: Optional[str] = typer.Option(None, "--pim", help="Attach a PIM device to each GPU (see `fleetwise catalog`)."),
    offload: Optional[str] = typer.Option(None, "--offload", help="Offload weights: dram or flash."),
    offload_set: List[str] = typer.Option([], "--offload-set", help="Offload setting KEY=VALUE (layer_fraction, ffn_load_fraction, dram_cache_fraction, overlap, storage, queue_depth, read_chunk_kb). Repeatable."),
    prefill: int = typer.Option(0, "--prefill", min=0, max=2**31 - 1, help="Prefill chunk size, tokens."),
    prefill_context: int = typer.Option(0, "--prefill-context", min=0, max=2**31 - 1, help="Tokens already cached before the chunk."),
    decode_batch: int = typer.Option(0, "--decode-batch", min=0, max=10**7, help="Number of decoding sequences."),
    context: int = typer.Option(0, "--context", min=0, max=2**31 - 1, help="Tokens in each decoding sequence's KV cache."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict the time and memory of one iteration (prefill, decode, or both mixed)."""
    from fleetwise.errors import CapacityError
    from fleetwise.estimate import estimate_iteration

    off = None
    if offload is not None:
        import yaml

        off = {"tier": offload}
        for kv in offload_set:
            k, _, v = kv.partition("=")
            off[k.strip()] = yaml.safe_load(v)
    r = estimate_iteration(model, gpu, tp, prefill, prefill_context, decode_batch, context, pp=pp, microbatches=microbatches, power_cap_watts=power_cap, pim=pim, offload=off, ep=ep)
    if as_json:
        out.print_json(json.dumps(r))
    else:
        layout = f"x{tp}" + (f" x pp{pp}" if pp > 1 else "")
        t = Table(title=f"{model} on {gpu} {layout}: {r['seconds'] * 1e3:.3f} ms per iteration, {r['power_watts_per_gpu']:.0f} W per GPU")
        for c in ("operator", "ms", "TFLOP", "GB", "bound"):
            t.add_column(c, justify="left" if c in ("operator", "bound") else "right")
        for o in r["ops"]:
            bound = "-" if o["op"] == "overhead" else ("compute" if o["compute_bound"] else ("link" if o["op"] in ("all_reduce", "all_to_all", "pipeline_send", "weight_fetch") else "memory"))
            if o.get("on_pim"):
                bound += " (PIM)"
            t.add_row(o["op"], f"{o['seconds'] * 1e3:.3f}", f"{o['flops'] / 1e12:.3f}", f"{o['bytes'] / 1e9:.3f}", bound)
        out.print(t)
        m = r["memory"]
        gib = 1 << 30
        out.print(f"memory per GPU: {r['memory_bytes'] / gib:.2f} GiB (weights {m['weights'] / gib:.2f} + KV {m['kv_cache'] / gib:.2f} + activations {m['activations'] / gib:.2f}) of {m['available'] / gib:.2f} GiB usable")
    if not r["memory"]["fits"]:
        m = r["memory"]
        raise CapacityError(f"{model} on {gpu} x{tp}: this iteration needs {r['memory_bytes'] / (1 << 30):.2f} GiB per GPU, {m['available'] / (1 << 30):.2f} GiB available")


@app.command()
def catalog(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in GPUs and models."""
    from fleetwise.catalog import builtin_gpus, builtin_models, builtin_pims

    gpus, models, pims = builtin_gpus(), builtin_models(), builtin_pims()
    if as_json:
        out.print_json(json.dumps({"gpus": {k: v.model_dump() for k, v in gpus.items()}, "models": {k: v.model_dump() for k, v in models.items()}, "pims": {k: v.model_dump() for k, v in pims.items()}}))
        return
    t = Table(title="GPUs")
    for c in ("name", "description", "BF16 TFLOP/s", "memory GB", "HBM TB/s", "link GB/s/dir"):
        t.add_column(c)
    for k, g in gpus.items():
        t.add_row(k, g.description, f"{g.peak_flops / 1e12:.0f}", f"{g.memory_bytes / 1e9:.0f}", f"{g.memory_bandwidth / 1e12:.2f}", f"{g.link_bandwidth / 1e9:.0f} ({g.link})")
    out.print(t)
    t = Table(title="Models")
    for c in ("name", "layers", "hidden", "heads/kv", "MLP / experts", "vocab", "context", "params (B)"):
        t.add_column(c)
    from fleetwise.cost import cost_model

    for k, m in models.items():
        g = next(iter(gpus.values()))
        cm = cost_model(m, g, model_name=k, gpu_name="x")
        params = cm.weight_bytes() / m.dtype_bytes / 1e9
        ffn = f"{m.num_experts}x{m.moe_intermediate_size} top-{m.experts_per_token}" if m.num_experts else str(m.intermediate_size)
        kv = f"MLA {m.mla.kv_lora_rank}" if m.mla else str(m.num_kv_heads)
        t.add_row(k, str(m.num_layers), str(m.hidden_size), f"{m.num_heads}/{kv}", ffn, str(m.vocab_size), str(m.max_position_embeddings), f"{params:.2f}")
    out.print(t)
    t = Table(title="PIM devices (attached to each GPU's memory)")
    for c in ("name", "description", "TFLOP/s", "internal TB/s"):
        t.add_column(c)
    for k, p in pims.items():
        t.add_row(k, p.description, f"{p.peak_flops / 1e12:.1f}", f"{p.internal_bandwidth / 1e12:.1f}")
    out.print(t)


@app.command()
def calibrate(
    data: Path = typer.Option(..., "--data", help="Directory of measurements (written by --measure, or copied from a GPU machine)."),
    gpu: str = typer.Option(..., "--gpu", help="Catalogue GPU whose datasheet peaks the factors are relative to."),
    measure: bool = typer.Option(False, "--measure", help="First measure on this machine's GPU (needs PyTorch and CUDA)."),
    model: str = typer.Option("llama-3-8b", "--model", help="Model of the measured forward passes."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Where to write the fitted calibration (default DATA/fitted.yaml)."),
) -> None:
    """Fit the cost model's efficiency factors to measurements taken on a real GPU."""
    import subprocess

    import yaml

    from fleetwise.calibrate.fit import Measurements, error_summary, error_table, fit_calibration, predict_forward
    from fleetwise.catalog import lookup
    from fleetwise.errors import ConfigError

    if measure:
        script = Path(__file__).parent / "calibrate" / "measure_gpu.py"
        subprocess.run([sys.executable, str(script), "--out", str(data)], check=True)
    missing = [f for f in ("gemm.csv", "attn_prefill.csv", "attn_decode.csv", "forward.csv", "device.json") if not (data / f).exists()]
    if missing:
        raise ConfigError(f"--data {data}: missing {', '.join(missing)}; run with --measure on a GPU machine, or copy a measure_gpu.py output directory")
    spec = lookup("gpu", gpu, {}, "--gpu")
    m_spec = lookup("model", model, {}, "--model")
    m = Measurements.load(data)
    cal = fit_calibration(m, spec, m_spec)
    s = error_summary(error_table(m.forward, predict_forward(m.forward, m_spec, spec, cal)))
    out_file = output or data / "fitted.yaml"
    out_file.write_text(yaml.safe_dump(cal.model_dump(exclude_none=True), sort_keys=False))
    out.print(yaml.safe_dump(cal.model_dump(), sort_keys=False))
    out.print(f"forward passes: median error {s['median_abs_error']:.1%}, worst {s['max_abs_error']:.1%} over {s['points']} points; written to {out_file}")


@app.command("check-policy")
def check_policy(
    kind: str = typer.Argument(..., help="router, scheduler, prefix-cache or expert-cache."),
    name: str = typer.Argument(..., help="A registered name or package.module:attr."),
    param: List[str] = typer.Option([], "--param", "-p", help="Constructor argument key=value (value parsed as JSON when it can be)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.001, help="Most seconds one policy call may take; a longer call fails the check."),
) -> None:
    """Check a policy against its interface (fleetwise.policy.conformance); exit 1 when it fails, 2 when it cannot be built."""
    from fleetwise.errors import ConfigError, PolicyError
    from fleetwise.policy import conformance, registry
    from fleetwise.policy.watchdog import PolicyTimeout, deadline

    params = {}
    for p in param:
        key, sep, value = p.partition("=")
        if not sep:
            raise ConfigError(f"--param {p!r}: expected key=value")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    def within(what: str, fn):
        try:
            with deadline(timeout, what):
                return fn()
        except PolicyTimeout:
            raise PolicyError(f"{kind} policy {name!r}: {what} did not return within {timeout:g} s") from None

    def create():
        return within("importing or creating it", lambda: registry.create(kind, name, **params))

    if kind == "router":
        report = conformance.check_router(create(), timeout=timeout)
    elif kind == "scheduler":
        report = conformance.check_scheduler(create(), timeout=timeout)
    elif kind == "prefix-cache":
        report = conformance.check_prefix_cache(create(), timeout=timeout)
    elif kind == "expert-cache":
        factory = within("importing it", lambda: registry.resolve(kind, name))
        report = conformance.check_expert_cache(lambda layers, experts, capacity: registry.build(kind, name, factory, layers, experts, capacity, **params), timeout=timeout)
    else:
        raise ConfigError(f"check-policy: unknown kind {kind!r}; allowed: router, scheduler, prefix-cache, expert-cache")
    report.policy = name
    out.print(str(report), highlight=False, markup=False)
    if not report.passed:
        raise typer.Exit(1)


def _serve_extra():
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import uvicorn
    except ImportError as e:
        err.print(f"[bold red]error:[/] the serve commands need the serve extra (pip install 'fleetwise[serve]'): {e}")
        sys.exit(2)
    return uvicorn


@app.command("serve-engine")
def serve_engine(
    model: str = typer.Option("llama-3-8b", "--model", help="Model to emulate (see `fleetwise catalog`)."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help="GPU to emulate (see `fleetwise catalog`)."),
    tp: int = typer.Option(1, "--tp", min=1, max=4096, help="Tensor-parallel degree."),
    role: str = typer.Option("mixed", "--role", help="mixed, prefill or decode (disaggregation)."),
    speedup: float = typer.Option(1.0, "--speedup", help="Run this many times faster than real time."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1, max=10**6, help="Most sequences per iteration."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", min=1, max=2**31 - 1, help="Most tokens per iteration (default max(context, 2048))."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model name in the API (default --model)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
) -> None:
    """Serve the OpenAI API and vLLM's /metrics with latencies from fleetwise's cost model, in real time."""
    uvicorn = _serve_extra()
    from fleetwise.serve.emulator import EmulatedEngine
    from fleetwise.serve.engine_app import create_engine_app

    sched = {"kind": "vllm", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
    engine = EmulatedEngine(model, gpu, tp=tp, role=role, speedup=speedup, scheduler=sched, served_model_name=served_model_name)
    err.print(f"emulating {model} on {gpu} x{tp} ({role}, {engine.num_blocks} KV blocks, speedup {speedup:g}) at http://{host}:{port}")
    uvicorn.run(create_engine_app(engine), host=host, port=port, log_level="warning")


@app.command("serve-router")
def serve_router(
    endpoint: List[str] = typer.Option(..., "--endpoint", help="Engine URL[,ROLE] (ROLE mixed, prefill or decode). Repeatable."),
    policy: str = typer.Option("round-robin", "--policy", help="Router policy: a registered name (round-robin, least-outstanding-tokens, cache-aware, disaggregated) or module:attr."),
    param: List[str] = typer.Option([], "--param", help="Policy parameter KEY=VALUE (VALUE read as YAML). Repeatable."),
    scrape_interval: float = typer.Option(1.0, "--scrape-interval", min=0, help="Seconds between /metrics scrapes of the engines (0: never)."),
    block_chars: int = typer.Option(64, "--block-chars", min=1, help="Prompt characters per block in the prefix index."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
) -> None:
    """Serve an OpenAI-compatible router in front of ENDPOINTs, routing with a fleetwise Router policy."""
    uvicorn = _serve_extra()
    import yaml

    from fleetwise.errors import ConfigError
    from fleetwise.policy import create
    from fleetwise.serve.router_app import RouterState, create_router_app, parse_endpoint

    params = {}
    for kv in param:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--param {kv!r}: expected KEY=VALUE")
        params[k.strip()] = yaml.safe_load(v)
    state = RouterState([parse_endpoint(e) for e in endpoint], create("router", policy, **params), block_chars=block_chars, scrape_interval=scrape_interval)
    err.print(f"routing with {policy} over {', '.join(f'{e.name} ({e.role})' for e in state.endpoints)} at http://{host}:{port}")
    uvicorn.run(create_router_app(state), host=host, port=port, log_level="warning")


def main() -> None:
    """Entry point: runs the app, turning fleetwise errors into exit code 2 (usage errors are 2 too)."""
    from fleetwise.errors import FleetwiseError

    try:
        app()
    except FleetwiseError as e:
        err.print(f"[bold red]error:[/] {type(e).__name__}: {e}", highlight=False, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. while starting up)
        err.print("interrupted")
        sys.exit(130)
