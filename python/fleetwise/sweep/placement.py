"""Placement and provisioning search: the cluster layout that serves the most under the SLOs.

Every point of a grid over the cluster (pool counts, parallelism, node affinity...) is priced
(GPUs, dollars per hour, watts at TDP or the power cap); points over a budget are skipped; the rest
get a goodput search (DistServe's definition). The result ranks layouts by goodput, goodput per GPU
(DistServe's placement objective) or goodput per dollar, so Splitwise's provisioning question (how
many prompt and token machines for a cost or power budget) and DistServe's placement question
(which parallelism per phase maximises per-GPU goodput) are the same command.
"""

from __future__ import annotations

from pathlib import Path

from fleetwise.sweep.grid import RATE_PATH, Point
from fleetwise.sweep.workers import WorkerPool

OBJECTIVES = ("goodput", "goodput_per_gpu", "goodput_per_dollar")


def price(scenario) -> dict:
    """GPUs, dollars per hour (each pool's ``price_per_hour``, else its GPU's) and watts (at TDP,
    or at the power cap) of a scenario's cluster."""
    from fleetwise.catalog import lookup
    from fleetwise.cluster import pool_price

    gpus = dollars = watts = 0.0
    for i, p in enumerate(scenario.cluster.pools):
        g = lookup("gpu", p.gpu, scenario.gpus, f"cluster.pools.{i}.gpu")
        n = p.count * p.parallelism.tp * p.parallelism.pp
        gpus += n
        dollars += n * pool_price(scenario, p, f"cluster.pools.{i}.gpu")
        watts += n * min(p.power_cap_watts or g.tdp_watts, g.tdp_watts or p.power_cap_watts or 0.0)
    return {"gpus": int(gpus), "dollars_per_hour": dollars, "watts": watts}


MAX_LAYOUTS = 4096
"""The most layouts one ``place`` searches: each is a goodput search of about 20 simulations, and
pricing alone takes seconds per thousand layouts, so a larger grid is refused at once."""


def check_layout_count(sizes: list[tuple[str, int]]) -> None:
    """Refuses (``ConfigError`` naming every ``--grid`` path and its number of values) a grid of
    more than ``MAX_LAYOUTS`` layouts, before expanding it (a product of long lists never ends)."""
    from fleetwise.errors import ConfigError

    total = 1
    for _, n in sizes:
        total *= n
    if total > MAX_LAYOUTS:
        dims = " x ".join(f"{n} ({path})" for path, n in sizes if path)
        raise ConfigError(f"--grid: {dims + ' = ' if dims else ''}{total:,} layouts; place searches each one's goodput (about 20 simulations each) "
                          f"and allows at most {MAX_LAYOUTS:,}: narrow the grid")


MAX_CONCURRENT_SEARCHES = 256
"""On Ray, the most layouts searched at once (one driver thread each; their simulations are Ray tasks)."""


def _evaluate(scenario_path: str, overrides: list[str], point: Point, out_dir: str, slos: dict, target: float, low: float, tolerance: float, ray=None) -> dict:
    """Goodput search of one layout (in a worker process; or in a driver thread whose simulations
    run on the shared ``RayPool`` ``ray``)."""
    from fleetwise.errors import FleetwiseError
    from fleetwise.sweep.goodput import search

    try:
        r = search(scenario_path, [*overrides, *point.overrides()], Path(out_dir) / "points" / point.id, slos, target, low=low, tolerance=tolerance, jobs=1, quiet=True, ray_address=ray)
    except FleetwiseError as err:  # say which layout: every layout shares the scenario file's name
        layout = ", ".join(f"{k}={v}" for k, v in point.assignments) or "(the scenario)"
        raise type(err)(f"layout {layout}: {err}") from None
    return {"goodput": r["goodput_rate"], "goodput_per_gpu": r["goodput_per_gpu"], "below_rate": r["below_rate"]}


def _evaluate_on_ray(args: list[tuple], address: str) -> list[dict]:
    """Searches every layout at once, each in a driver thread, all sharing one ``RayPool``: the
    bisections of different layouts overlap, so the cluster's cores stay busy although each
    bisection is sequential. The driver saves every point as it finishes (a rerun resumes from them).
    Any exception (Ctrl-C included) closes the pool: every running task is cancelled and every
    thread stops at its next wait, before the exception goes on."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from fleetwise.sweep.ray_pool import WAIT_S, RayPool

    with RayPool(address) as pool, ThreadPoolExecutor(max_workers=min(len(args), MAX_CONCURRENT_SEARCHES), thread_name_prefix="fleetwise-place") as threads:
        futures = [threads.submit(_evaluate, *a, ray=pool) for a in args]
        try:
            pending = futures
            while pending:
                done, pending = wait(pending, timeout=WAIT_S, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        raise f.exception()
        except BaseException:
            for f in futures:
                f.cancel()
            pool.close()
            raise
        return [f.result() for f in futures]


def place(
    scenario_path: str,
    overrides: list[str],
    points: list[Point],
    out_dir: Path,
    slos: dict,
    target: float = 0.9,
    objective: str = "goodput_per_gpu",
    budget_dollars_per_hour: float | None = None,
    budget_watts: float | None = None,
    low: float = 0.25,
    tolerance: float = 0.05,
    jobs: int = 1,
    ray_address: str | None = None,
) -> list[dict]:
    """Prices every layout, searches the goodput of those within budget, and returns all rows
    ranked by ``objective`` (best first; skipped layouts last). Writes ``placement.json``.

    The searches run in ``jobs`` local worker processes, or with ``ray_address`` (a cluster
    address, or ``"local"`` for a private one) all at once with their simulations on Ray; the
    results are the same either way."""
    from fleetwise.config.load import load_scenario
    from fleetwise.errors import ConfigError
    from fleetwise.result import ensure_output_dir
    from fleetwise.sweep.goodput import check_result_file, write_json

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r}: allowed {', '.join(OBJECTIVES)}")
    if any(path == RATE_PATH for p in points for path, _ in p.assignments):
        # Each layout's goodput search sets the rate itself: such a grid would search the same
        # layout once per value and rank identical rows.
        raise ConfigError(f"--grid {RATE_PATH}: the goodput search varies the arrival rate itself; grid over the layout only")
    check_layout_count([("", len(points))])
    rows, todo = [], []
    for p in points:
        cost = price(load_scenario(scenario_path, [*overrides, *p.overrides()]))
        row = {"point": p.id, "layout": ", ".join(f"{k}={v}" for k, v in p.assignments), **cost}
        over = (budget_dollars_per_hour is not None and cost["dollars_per_hour"] > budget_dollars_per_hour + 1e-9) or (
            budget_watts is not None and cost["watts"] > budget_watts + 1e-9
        )
        row["within_budget"] = not over
        rows.append(row)
        if not over:
            todo.append((p, row))
    if not todo and rows:  # nothing would be searched: the budget is the mistake, not a result
        given = " and ".join(f"{o} {v:g}" for o, v in (("--budget-dollars-per-hour", budget_dollars_per_hour), ("--budget-watts", budget_watts)) if v is not None)
        raise ConfigError(f"{given}: excludes every layout of the grid (the cheapest costs ${min(r['dollars_per_hour'] for r in rows):.2f}/h, the least "
                          f"power-hungry draws {min(r['watts'] for r in rows):g} W); raise the budget or grid over smaller layouts")
    free = [row["layout"] or "(the scenario)" for _, row in todo if not row["dollars_per_hour"] > 0]
    if objective == "goodput_per_dollar" and free:  # goodput per dollar is unbounded: it ranked them last, shown as "-"
        raise ConfigError(f"--objective goodput_per_dollar: layout {free[0]} costs $0/h, so its goodput per dollar has no value; "
                          "give its GPUs or pools a price_per_hour (or grid over priced layouts only)")
    ensure_output_dir(out_dir)  # a bad -o fails before any search
    check_result_file(Path(out_dir) / "placement.json")
    args = [(scenario_path, overrides, p, str(out_dir), slos, target, low, tolerance) for p, _ in todo]
    if ray_address is not None and args:
        results = _evaluate_on_ray(args, ray_address)
    elif jobs > 1 and len(args) > 1:
        with WorkerPool(_evaluate, jobs) as pool:  # workers die with this process; Ctrl-C stops them at once
            by_index = dict(pool.imap_unordered(args, describe=lambda i: f"layout {todo[i][1]['layout']}"))
        results = [by_index[i] for i in range(len(args))]
    else:
        results = [_evaluate(*a) for a in args]
    for (_, row), res in zip(todo, results):
        row.update(res)
        row["goodput_per_dollar"] = res["goodput"] / row["dollars_per_hour"] if row["dollars_per_hour"] else None
    rows.sort(key=lambda r: (not r["within_budget"], -(r.get(objective) or 0.0), r["gpus"]))
    ensure_output_dir(out_dir)
    write_json(Path(out_dir) / "placement.json", {"objective": objective, "slo": slos, "attainment_target": target, "budget_dollars_per_hour": budget_dollars_per_hour,
                                                  "budget_watts": budget_watts, "layouts": rows})
    return rows
