"""``fleetwise compare``: variants of one scenario side by side."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fleetwise.cli.app import app, out, err
from fleetwise.cli.format import _scaled, _default_dir


def _parse_variant(text: str) -> tuple[str, list[str]]:
    """``'label: path=value; path=value'`` -> (label, overrides); the label defaults to the overrides."""
    from fleetwise.errors import ConfigError

    label, sep, rest = text.partition(": ")
    if not sep:
        label, rest = text, text
    overrides = [o.strip() for o in rest.split(";") if o.strip()]
    if not overrides or any("=" not in o for o in overrides):
        raise ConfigError(f"--variant {text!r}: expected 'LABEL: PATH=VALUE; PATH=VALUE'")
    if label.strip() in ("", ".", ".."):
        raise ConfigError(f"--variant {text!r}: the label {label.strip()!r} cannot name the variant's directory; give a name")
    paths = [o.split("=", 1)[0].strip() for o in overrides]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:  # the last would silently win
        raise ConfigError(f"--variant {text!r}: {', '.join(twice)} is set twice; set each path once")
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
    ray: Optional[str] = typer.Option(None, "--ray", help="Run the variants (and goodput searches) on Ray, all at once: a cluster address, or 'local' to start a private one."),
) -> None:
    """Run one scenario under several policies and print them side by side."""
    from fleetwise.config.load import load_scenario
    from fleetwise.errors import ConfigError
    from fleetwise.result import check_output_dir
    from fleetwise.metrics import flatten_summary
    from fleetwise.sweep.goodput import parse_slos, search
    from fleetwise.sweep.ray_pool import pool_for

    variants = [_parse_variant(v) for v in variant]
    if len({l for l, _ in variants}) != len(variants):
        raise ConfigError("--variant labels must differ")
    slos, implied = parse_slos(slo) if slo else ({}, None)
    if with_goodput and not slos:
        raise ConfigError("--goodput needs at least one --slo")
    target = implied or 0.9
    base = load_scenario(scenario, set_)
    out_dir = check_output_dir(output or _default_dir("compare", base.name))
    for marker, what in (("summary.json", "a run"), ("sweep.json", "a sweep")):
        if (out_dir / marker).exists():  # the variants' run directories would nest inside it
            raise ConfigError(f"output directory {out_dir} holds {what} ({marker}): compare writes one run directory per variant "
                              "inside -o; give another directory")
    scenarios = [load_scenario(scenario, [*set_, *overrides]) for _, overrides in variants]
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in label) for label, _ in variants]
    first_of: dict[str, str] = {}
    for (label, _), dirname in zip(variants, safe):
        if dirname in first_of:  # one directory would hold both runs: the second would overwrite the first
            raise ConfigError(f"--variant labels {first_of[dirname]!r} and {label!r} both name the output directory {dirname!r} "
                              "(characters other than letters, digits, '-', '_' and '.' become '_'): give labels that differ there")
        first_of[dirname] = label
    lock = _lock_output(out_dir)
    try:
        _clear_stale_runs(out_dir, safe)
        try:
            with contextlib.ExitStack() as stack:
                pool = pool_for(ray, stack)
                if pool is None:
                    runs = _run_locally(scenarios, out_dir, safe, slos)
                else:
                    runs = _run_on_ray(pool, scenarios, out_dir, safe, slos, [label for label, _ in variants])
                columns = {}
                for (label, overrides), dirname, (summary, met) in zip(variants, safe, runs):
                    flat = flatten_summary(summary)
                    col = {row: flat[name] if scale is None else _scaled(flat[name], scale) for row, name, scale in _COMPARE_ROWS}
                    if slos:
                        col["SLO attainment"] = met
                    if with_goodput:
                        g = search(str(scenario), [*set_, *overrides], out_dir / f"{dirname}-goodput", slos, target, quiet=True, ray_address=pool)
                        col["goodput (req/s)"] = g["goodput_rate"]
                        col["goodput per GPU"] = g["goodput_per_gpu"]
                    columns[label] = col
        except KeyboardInterrupt:
            err.print(f"interrupted: finished variants are in {out_dir}/")
            sys.exit(130)
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
    finally:
        lock.close()


def _lock_output(out_dir: Path):
    """Creates ``out_dir`` and holds its lock (``.compare.lock``, hidden from ``report DIR/*``) while
    this compare writes there: a second compare into the same directory is refused (their runs
    would interleave)."""
    from fleetwise.errors import ConfigError
    from fleetwise.sweep.store import lock_directory

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output directory: {e.strerror or e}") from None
    return lock_directory(out_dir, ".compare.lock", "compare", "then run this command again")


def _clear_stale_runs(out_dir: Path, names: list[str]) -> None:
    """Deletes the run files an earlier compare left in the variants' directories, and its goodput
    searches (``<name>-goodput``), before any variant runs: an interrupted compare then leaves only
    runs of this one (a variant it did not finish has no ``summary.json``), never an old run beside
    new ones, and a goodput search of an edited scenario starts afresh instead of being refused
    after every variant has run."""
    import shutil

    from fleetwise.errors import ConfigError
    from fleetwise.result import remove_run_files

    for name in names:
        remove_run_files(out_dir / name)
        search = out_dir / f"{name}-goodput"
        if search.is_dir() and (search / "sweep.json").exists():  # only a goodput search's directory
            try:
                shutil.rmtree(search)
            except OSError as e:
                raise ConfigError(f"{search}: cannot replace an earlier goodput search: {e.strerror or e}") from None


def _run_locally(scenarios: list, out_dir: Path, names: list[str], slos: dict) -> list[tuple[dict, float | None]]:
    """Simulates the variants one after another here, each writing ``out_dir/<name>`` as it
    finishes; returns each one's summary and SLO attainment (None without SLOs)."""
    from fleetwise.metrics import attainment
    from fleetwise.simulate import simulate

    from fleetwise.errors import FleetwiseError
    from fleetwise.result import write_stopped

    runs = []
    for sc, name in zip(scenarios, names):
        try:
            r = simulate(sc, progress=True)
        except FleetwiseError as e:
            kept = getattr(e, "requests", None)
            where = f" (what finished is in {write_stopped(out_dir / name, kept, sc.name, f'{type(e).__name__}: {e}')}/)" if kept is not None else ""
            raise type(e)(f"variant {name!r}{where}: {e}") from None
        r.write(out_dir / name)
        runs.append((r.summary, attainment(r.scan_requests(), slos) if slos else None))
    return runs


def _run_on_ray(pool, scenarios: list, out_dir: Path, names: list[str], slos: dict, labels: list[str]) -> list[tuple[dict, float | None]]:
    """Simulates every variant at once as Ray tasks (the loaded scenarios travel whole); the driver
    writes each one's files to ``out_dir/<name>`` as it finishes — the same bytes a local run
    writes; returns each one's summary and SLO attainment, in the variants' order."""
    import io

    import polars as pl

    from fleetwise.metrics import attainment
    from fleetwise.result import ensure_output_dir
    from fleetwise.sweep.point import simulate_run_files, write_run_dir

    ensure_output_dir(out_dir)
    runs: dict[int, tuple[dict, float | None]] = {}
    results = pool.imap_unordered(simulate_run_files, ((sc,) for sc in scenarios), describe=lambda i: f"variant {labels[i]!r}")
    with contextlib.closing(results):
        for i, (files, summary) in results:
            write_run_dir(out_dir / names[i], files)
            runs[i] = (summary, attainment(pl.read_parquet(io.BytesIO(files["requests.parquet"])), slos) if slos else None)
    return [runs[i] for i in range(len(scenarios))]
