"""Running a design study: every design's price and its throughput under the study's SLOs.

Each design is priced (machines, GPUs, watts at TDP or the power cap, dollars per hour at the
pools' prices) and its goodput found by the same bisection as ``fleetwise goodput`` (the highest
Poisson arrival rate at which the study's fraction of requests meets every SLO target). The rows
compare every design with the reference design, so a study reproduces Splitwise's iso-power and
iso-cost comparisons (docs/splitwise-designs.md) as one command: ``fleetwise designs STUDY``.
"""

from __future__ import annotations

from pathlib import Path

from fleetwise.config.design_study import DesignStudy, design_scenarios
from fleetwise.sweep.workers import WorkerPool


def machines(scenario) -> str:
    """The design's instances in words, e.g. ``5 x 8 h100-sxm prefill + 7 x 8 h100-sxm @490 W decode``."""
    parts = []
    for p in scenario.cluster.pools:
        gpus = p.parallelism.tp * p.parallelism.pp
        cap = f" @{p.power_cap_watts:g} W" if p.power_cap_watts is not None else ""
        role = "" if p.role == "mixed" else f" {p.role}"
        parts.append(f"{p.count} x {gpus} {p.gpu}{cap}{role}")
    return " + ".join(parts)


def _search(scenario_path: str, overrides: list[str], out_dir: str, slos: dict, target: float, low: float, tolerance: float, where: str = "") -> dict:
    """One design's goodput search (in a worker process, or in this one); an error names the
    design (``where``: the study file and ``designs.NAME``) before the base scenario's message."""
    from fleetwise.errors import FleetwiseError
    from fleetwise.sweep.goodput import search

    try:
        r = search(scenario_path, overrides, Path(out_dir), slos, target, low=low, tolerance=tolerance, jobs=1, quiet=True, curve=False)
    except FleetwiseError as err:
        if not where:
            raise
        raise type(err)(f"{where} (its overrides {'; '.join(overrides) or 'none'}): {err}") from None
    return {"goodput": r["goodput_rate"], "goodput_per_gpu": r["goodput_per_gpu"], "below_rate": r["below_rate"]}


def run_study(study: DesignStudy, out_dir: Path, names: list[str] | None = None, jobs: int = 1) -> list[dict]:
    """Prices and searches the designs ``names`` (default all, in the study's order), ``jobs`` at
    a time, and returns one row per design: ``design``, ``provisioning``, ``machines``,
    ``instances``, ``gpus``, ``watts``, ``dollars_per_hour``, ``goodput`` (requests/s under the
    SLOs), ``goodput_per_gpu``, and against the reference design ``goodput_ratio``,
    ``watts_ratio`` and ``cost_ratio`` (the reference is searched too when not among ``names``).
    A design whose throughput lies below the study's ``low`` (``below_rate`` set) has no
    ``goodput_ratio`` (None) but ``goodput_ratio_below``: the ratio it lies below.
    Writes ``designs.json`` in ``out_dir``; each search keeps its points under
    ``out_dir/designs/NAME`` (a rerun resumes from them)."""
    from fleetwise.errors import ConfigError
    from fleetwise.result import ensure_output_dir
    from fleetwise.sweep.goodput import check_result_file, write_json
    from fleetwise.sweep.placement import price

    names = list(study.designs) if not names else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in study.designs]
    if unknown:
        raise ConfigError(f"--design {unknown[0]!r}: not a design of {study.source}; allowed: {', '.join(study.designs)}")
    searched = names if study.reference in names else [*names, study.reference]
    ensure_output_dir(out_dir)
    check_result_file(Path(out_dir) / "designs.json")
    scenarios = design_scenarios(study)
    base = str(study.scenario_path)
    slos = dict(study.slo)
    args = [(base, study.designs[n].overrides(), str(Path(out_dir) / "designs" / n), slos, study.attainment, study.low, study.tolerance,
             f"{study.source}: designs.{n}") for n in searched]
    if jobs > 1 and len(args) > 1:
        with WorkerPool(_search, jobs) as pool:  # workers die with this process; Ctrl-C stops them at once
            by_index = dict(pool.imap_unordered(args, describe=lambda i: f"design {searched[i]}"))
        results = {searched[i]: by_index[i] for i in range(len(args))}
    else:
        results = {n: _search(*a) for n, a in zip(searched, args)}
    ref_price = price(scenarios[study.reference])
    ref_goodput = results[study.reference]["goodput"]
    rows = []
    for n in names:
        sc = scenarios[n]
        cost = price(sc)
        res = results[n]
        rows.append({
            "design": n,
            "provisioning": list(study.designs[n].provisioning),
            "description": study.designs[n].description,
            "machines": machines(sc),
            "instances": sum(p.count for p in sc.cluster.pools),
            **cost,
            **res,
            # Below the study's low the goodput is unknown (0 stands for "below"): so is its ratio, but not its bound.
            "goodput_ratio": res["goodput"] / ref_goodput if ref_goodput > 0 and res.get("below_rate") is None else None,
            "goodput_ratio_below": res["below_rate"] / ref_goodput if ref_goodput > 0 and res.get("below_rate") is not None else None,
            "watts_ratio": cost["watts"] / ref_price["watts"] if ref_price["watts"] else None,
            "cost_ratio": cost["dollars_per_hour"] / ref_price["dollars_per_hour"] if ref_price["dollars_per_hour"] else None,
        })
    doc = {"study": study.name, "study_file": study.source, "scenario_file": base, "reference": study.reference,
           "slo": slos, "attainment_target": study.attainment, "designs": rows}
    write_json(Path(out_dir) / "designs.json", doc)
    return rows
