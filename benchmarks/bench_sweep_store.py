"""The sweep store's bookkeeping per finished point as a sweep grows: this checkout's store vs ``main``'s.

Used by ``bench_sweep.py`` (``--only bookkeeping``). For each size N it fills a fresh sweep
directory with N saved row files, opens the store, records one more point (the first record of a
store reads what is on disk: timed apart as "first"), then times ``ADDS`` further records — each row
file written beforehand, untimed, as the worker that ran the point writes it — and finally the
``merge`` that builds ``points.parquet``. The same is done with ``main``'s ``store.py`` (read with
``git show``), and the two ``points.parquet`` files are compared byte for byte.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ADDS = 5
"""Records timed after the first, per size and store."""
OLD_REF = "main"
"""The git revision whose store.py is the "before"."""


def _store_module(source: str, name: str) -> types.ModuleType:
    """The store module built from ``source`` (its imports resolve in this checkout's fleetwise)."""
    mod = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def _row(i: int) -> dict:
    """A realistic point row: grid values and every summary column of ``points.parquet``."""
    from fleetwise.sweep.point import ROW_METRICS

    row = {"point": f"{i:012x}", "label": f"cluster.pools.0.count={1 + i % 8}", "rate": 1.0 + i % 97,
           "workload.arrivals.rate": 1.0 + i % 97, "cluster.pools.0.count": float(1 + i % 8)}
    row.update((m, (i * 7919 % 10007) / 1000.0) for m in ROW_METRICS)
    row["slo_attainment"] = None
    return row


def _fill(directory: Path, n: int) -> None:
    rows = directory / "rows"
    rows.mkdir(parents=True)
    for i in range(n):
        pl.DataFrame([_row(i)]).write_parquet(rows / f"{_row(i)['point']}.parquet")


def _measure(mod: types.ModuleType, directory: Path, n: int) -> dict:
    _fill(directory, n)
    new = [_row(n + k) for k in range(ADDS + 1)]
    for r in new:
        mod.write_row(directory, r)  # what the worker does before the driver records the point
    with mod.SweepStore(directory) as store:
        t0 = time.perf_counter()
        store.add(new[0])
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in new[1:]:
            store.add(r)
        per_add = (time.perf_counter() - t0) / ADDS
        t0 = time.perf_counter()
        store.merge()
        merge = time.perf_counter() - t0
    with mod.SweepStore(directory) as store:  # a rerun's first look at what is saved (reads every row file)
        t0 = time.perf_counter()
        store.done()
        scan = time.perf_counter() - t0
    assert pl.read_parquet(directory / "points.parquet").height == n + ADDS + 1
    return {"first_add_s": first, "add_s": per_add, "merge_s": merge, "done_scan_s": scan}


def bookkeeping(sizes: list[int]) -> dict:
    """Times one recorded point at each size N, for this checkout's store and ``main``'s."""
    new_src = (REPO / "python" / "fleetwise" / "sweep" / "store.py").read_text()
    old_src = subprocess.run(["git", "show", f"{OLD_REF}:python/fleetwise/sweep/store.py"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    stores = {"before": _store_module(old_src, "store_before"), "after": _store_module(new_src, "store_after")}
    out: dict = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 "before": OLD_REF, "adds_timed": ADDS, "sizes": {}}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="fleetwise-store-bench-"))
        try:
            res = {k: _measure(mod, work / k, n) for k, mod in stores.items()}
            same = (work / "before" / "points.parquet").read_bytes() == (work / "after" / "points.parquet").read_bytes()
        finally:
            shutil.rmtree(work)
        out["sizes"][str(n)] = {**res, "points_parquet_identical": same}
        print(f"N={n}: before add {res['before']['add_s'] * 1e3:.2f} ms, after add {res['after']['add_s'] * 1e3:.3f} ms, "
              f"merge {res['after']['merge_s']:.3f} s, identical {same}", file=sys.stderr)
    out["projected_10000_points_s"] = projection(out)
    return out


def projection(res: dict, points: int = 10000) -> dict:
    """The bookkeeping of a whole sweep of ``points``, from the largest size measured: before, the
    per-point cost grows linearly with the points saved (every record rewrote points.parquet), so
    it sums to slope * N^2 / 2; after, it is constant per point plus one merge, linear in N."""
    big = max(res["sizes"], key=int)
    slope = res["sizes"][big]["before"]["add_s"] / int(big)
    after = res["sizes"][big]["after"]
    return {"before": slope * points**2 / 2, "after": points * after["add_s"] + after["merge_s"] * points / int(big)}


def driver_cost(points: int = 100) -> dict:
    """What the driver spends per point on Ray, where it loads each point's scenario and writes the
    files its task sends back: one quickstart point of 20,000 requests is simulated once here, then
    its files are saved under ``points`` different ids (load, save, record: ``runner.save_points``), timed."""
    from fleetwise.sweep.grid import Point
    from fleetwise.sweep.point import simulate_point_files
    from fleetwise.sweep.runner import save_points
    from fleetwise.sweep.scenarios import BaseScenario
    from fleetwise.sweep.store import SweepStore
    base = BaseScenario(REPO / "scenarios" / "quickstart.yaml", ["workload.requests=20000"])
    p0 = Point((("workload.arrivals.rate", 10.0),))
    t0 = time.process_time()
    files, summary = simulate_point_files(base.load(p0.overrides()), p0)
    task_cpu = time.process_time() - t0
    work = Path(tempfile.mkdtemp(prefix="fleetwise-driver-bench-"))
    try:
        with SweepStore(work / "sw") as store:
            def finished():
                for i in range(points):
                    p = Point((("workload.arrivals.rate", 10.0 + i),))
                    base.load(p.overrides())  # the driver loads what it ships
                    yield p, files, summary

            t0 = time.perf_counter()
            for row in save_points(store, finished(), ["workload.arrivals.rate"]):  # what the driver does with Ray's results
                store.add(row)
            per_point = (time.perf_counter() - t0) / points
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"points": points, "driver_s_per_point": per_point, "task_cpu_s_per_point": task_cpu,
            "bytes_per_point": sum(len(b) for b in files.values()), "cores_one_driver_feeds": task_cpu / per_point}


def bookkeeping_md(res: dict) -> str:
    """The bookkeeping part of sweep.md."""
    lines = [
        "# Sweep bookkeeping per point",
        "",
        f"Measured {res['date']} on {res['machine']} (`python benchmarks/bench_sweep.py --only bookkeeping`): the time the "
        f"sweep store takes to record one finished point when N points are already saved (mean of {res['adds_timed']} records; "
        f"the point's own row file is written beforehand by its worker and not timed), before (`{res['before']}`: every record "
        "rewrote `points.parquet` from all row files) and after (append-only: a record is one existence check; "
        "`points.parquet` is built once at the end). \"first\" is the first record of a freshly opened store.",
        "",
        "| N saved | before: per point | before: first | after: per point | after: final merge (once) | after: resume scan (once) | points.parquet identical |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for n, r in res["sizes"].items():
        b, a = r["before"], r["after"]
        lines.append(f"| {int(n):,} | {b['add_s'] * 1e3:,.1f} ms | {b['first_add_s']:.2f} s | {a['add_s'] * 1e6:,.0f} µs | "
                     f"{a['merge_s']:.2f} s | {a['done_scan_s']:.2f} s | {'yes' if r['points_parquet_identical'] else 'NO'} |")
    p = projection(res)
    if p:
        lines += ["", f"Projected from the largest size, the bookkeeping of a whole 10,000-point sweep: before {p['before'] / 60:,.0f} min "
                  f"(per-point cost growing linearly, summing quadratically), after {p['after']:.0f} s (constant per point, plus one merge)."]
    d = res.get("driver")
    if d:
        lines += ["", f"On Ray the driver loads each point's scenario and writes the files its task sends back ({d['bytes_per_point'] / 2**20:.1f} MiB "
                  f"for a 20,000-request quickstart point): {d['driver_s_per_point'] * 1e3:.0f} ms per point, measured over {d['points']} points, "
                  f"against {d['task_cpu_s_per_point']:.2f} s of CPU for the task's simulation here, so one driver keeps about "
                  f"{d['cores_one_driver_feeds']:.0f} cluster cores busy before it becomes the limit."]
    return "\n".join(lines) + "\n"
