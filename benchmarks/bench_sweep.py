"""Sweep throughput, and the sweep store's bookkeeping per point as a sweep grows.

    python benchmarks/bench_sweep.py [--rates 16] [--requests 20000] [-j 2] [--sizes 100,1000,5000] [--overhead-points 1000]
        [--seeds 250] [--interrupt-seeds 26] [--ray-seeds 5] [--only throughput|point|bookkeeping|driver|overhead|large|interrupt|ray]

Throughput: runs ``fleetwise sweep`` on the quickstart scenario (Llama-3-8B on H100s) over 16
arrival rates x 4 instance counts = 64 points, each 20,000 requests, in a fresh directory, and
reports wall time, points per minute and simulated requests per second.

Bookkeeping (``bench_sweep_store.py``): the time ``SweepStore.add`` takes for one finished point
when the sweep already holds N points, for this checkout's store and for ``main``'s (``git show``),
plus the one-off ``merge`` that builds ``points.parquet`` at the end.

Driver (part of bookkeeping): what the driver spends per point on Ray (loading the scenario it
ships, writing the files the task sends back), against the task's own CPU time.

Overhead: one ``fleetwise sweep`` of 1,000 points of 10 requests each (so the time is per-point
overhead, not simulation), with this checkout's code and with ``main``'s.

Point (``bench_sweep_point.py``): one point's CPU time, the core's simulation against the rest, with
this checkout's Python and ``main``'s.

Large, interrupt (``bench_sweep_large.py``): 10,000 points of 20,000 requests in one command; the
same grid, smaller, interrupted by SIGTERM and SIGINT and resumed.

Ray (``bench_sweep_ray.py``): the grid, smaller, on a local Ray cluster of several nodes, with one
and with two worker CPUs.

Writes benchmarks/results/sweep.json and .md (its summary on top from sweep.json's ``notes``, kept by hand) (every part; a part not run keeps its last result).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def throughput(a: argparse.Namespace) -> dict:
    """Runs the 64-point sweep once and returns its wall time, points per minute and requests per second."""
    rates = ",".join(str(2 + 2 * i) for i in range(a.rates))
    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-bench-"))
    cmd = [sys.executable, "-m", "fleetwise", "sweep", str(REPO / "scenarios" / "quickstart.yaml"),
           "--grid", f"workload.arrivals.rate={rates}", "--grid", "cluster.pools.0.count=1,2,4,8",
           "--set", f"workload.requests={a.requests}", "-o", str(work / "sw"), "-j", str(a.jobs)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # the command and its workers
    pts = pl.read_parquet(work / "sw" / "points.parquet")
    size = sum(f.stat().st_size for f in (work / "sw").rglob("*") if f.is_file())
    shutil.rmtree(work)
    n = pts.height
    res = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jobs": a.jobs,
        "points": n,
        "requests_per_point": a.requests,
        "wall_seconds": wall,
        "points_per_minute": n / wall * 60,
        "simulated_requests_per_second": n * a.requests / wall,
        "output_bytes": size,
        "finished_all": bool((pts["finished"] + pts["rejected"] == a.requests).all()),
        "rates": a.rates,
        "cpu_seconds": cpu,
        "cpu_seconds_per_point": cpu / n,
        "load_average_before": load,
        "projected_10000_points_hours_on_8_cores": 10000 * cpu / n / 8 / 3600,
    }
    return res


def throughput_md(res: dict) -> str:
    """The throughput part of sweep.md."""
    return (
        f"# Sweep throughput\n\nMeasured {res['date']} on {res['machine']} with `-j {res['jobs']}`: `fleetwise sweep` of the quickstart "
        f"scenario (Llama-3-8B on H100, vLLM batching) over {res.get('rates', 16)} arrival rates x 4 instance counts = {res['points']} points of "
        f"{res['requests_per_point']:,} requests each.\n\n| | |\n|---|---:|\n| wall time (whole command) | {res['wall_seconds']:.1f} s |\n"
        f"| points per minute | {res['points_per_minute']:.0f} |\n| simulated requests per second | {res['simulated_requests_per_second']:,.0f} |\n"
        f"| results on disk (per-request tables of every point) | {res['output_bytes'] / 2**20:.0f} MiB |\n"
        + (f"| CPU time per point (command and workers) | {res['cpu_seconds_per_point']:.2f} s |\n"
           f"| machine load average when it started (other users) | {res['load_average_before']:.1f} |\n"
           f"| projected: 10,000 such points on 8 free cores | {res['projected_10000_points_hours_on_8_cores'] * 60:.0f} min |\n"
           if "cpu_seconds_per_point" in res else "")
    )


def overhead(points: int, jobs: int) -> dict:
    """Runs one ``fleetwise sweep`` of ``points`` tiny points (10 requests each: the simulations take
    almost nothing, so the wall time is the per-point overhead: validation, workers, files,
    bookkeeping) with this checkout's code and with ``main``'s (``git archive``), and returns both times."""
    from bench_sweep_store import OLD_REF

    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-overhead-"))
    try:
        subprocess.run(f"git archive {OLD_REF} python | tar -x -C {work}", shell=True, check=True, cwd=REPO)
        shutil.copy(REPO / "python" / "fleetwise" / "_core.abi3.so", work / "python" / "fleetwise" / "_core.abi3.so")
        rates = ",".join(f"{1 + 0.01 * i:.2f}" for i in range(points))
        res: dict = {"points": points, "requests_per_point": 10, "jobs": jobs, "before": OLD_REF, "load_average_before": os.getloadavg()[0]}
        for name, code in (("before", work / "python"), ("after", REPO / "python")):
            cmd = [sys.executable, "-m", "fleetwise", "sweep", str(REPO / "scenarios" / "quickstart.yaml"), "--grid", f"workload.arrivals.rate={rates}",
                   "--set", "workload.requests=10", "-o", str(work / f"sw-{name}"), "-j", str(jobs)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(code)))
            res[f"{name}_wall_seconds"] = time.perf_counter() - t0
            res[f"{name}_ms_per_point"] = res[f"{name}_wall_seconds"] / points * 1e3
        res["points_parquet_identical"] = (work / "sw-before" / "points.parquet").read_bytes() == (work / "sw-after" / "points.parquet").read_bytes()
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def overhead_md(res: dict) -> str:
    """The whole-command overhead part of sweep.md."""
    return (
        f"# Sweep overhead per point, whole command\n\n`fleetwise sweep` of {res['points']:,} points of {res['requests_per_point']} requests each "
        f"(`-j {res['jobs']}`; load average {res['load_average_before']:.1f} when it started), so that the time is the per-point "
        f"overhead, not simulation:\n\n| | wall time | per point |\n|---|---:|---:|\n"
        f"| before (`{res['before']}`) | {res['before_wall_seconds']:.1f} s | {res['before_ms_per_point']:.1f} ms |\n"
        f"| after | {res['after_wall_seconds']:.1f} s | {res['after_ms_per_point']:.1f} ms |\n\n"
        f"`points.parquet` byte-identical: {'yes' if res['points_parquet_identical'] else 'NO'}.\n"
    )


def notes_md(notes: list[str]) -> str:
    """The summary at the top of sweep.md: ``notes`` in sweep.json, written by hand from the parts below."""
    return "# Where the sweep targets stand\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main() -> None:
    from bench_sweep_large import interrupt, interrupt_md, large, large_md
    from bench_sweep_point import per_point, per_point_md
    from bench_sweep_ray import ray_cluster, ray_md
    from bench_sweep_store import bookkeeping, bookkeeping_md, driver_cost, projection

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, default=16, help="number of arrival rates (x 4 instance counts)")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sizes", default="100,1000,5000", help="sweep sizes (points already saved) at which one add is timed")
    ap.add_argument("--overhead-points", type=int, default=1000, help="tiny points of the whole-command overhead run")
    ap.add_argument("--seeds", type=int, default=250, help="seeds of the large sweep (x 10 rates x 4 counts: 250 gives 10,000 points)")
    ap.add_argument("--interrupt-seeds", type=int, default=26, help="seeds of the interrupted sweep")
    ap.add_argument("--ray-seeds", type=int, default=5, help="seeds of the Ray cluster sweep (x 40 points)")
    ap.add_argument("--ray-nodes", default="1,2", help="counts of one-CPU worker nodes the Ray cluster sweep runs on")
    ap.add_argument("--only", choices=("throughput", "point", "bookkeeping", "driver", "overhead", "large", "interrupt", "ray"), help="run one part; the others keep their last results")
    ap.add_argument("--out", default=str(HERE / "results" / "sweep"))
    a = ap.parse_args()
    out = Path(a.out)
    try:
        last = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        last = {}
    if "throughput" not in last and "wall_seconds" in last:  # the earlier flat layout: throughput only
        last = {"throughput": last}
    res = dict(last)
    if a.only in (None, "throughput"):
        res["throughput"] = throughput(a)
    if a.only in (None, "point"):
        res["point"] = per_point(a.requests)
    if a.only in (None, "bookkeeping"):
        res["bookkeeping"] = bookkeeping([int(n) for n in a.sizes.split(",")])
    if a.only in (None, "bookkeeping", "driver") and "bookkeeping" in res:
        res["bookkeeping"]["driver"] = driver_cost()
        res["bookkeeping"]["projected_10000_points_s"] = projection(res["bookkeeping"])
    if a.only in (None, "overhead"):
        res["overhead"] = overhead(a.overhead_points, a.jobs)
    if a.only in (None, "large"):
        res["large"] = large(a.seeds, a.requests, a.jobs)
    if a.only in (None, "interrupt"):
        res["interrupt"] = interrupt(a.interrupt_seeds, a.requests, a.jobs)
    if a.only in (None, "ray"):
        res["ray"] = ray_cluster(a.ray_seeds, a.requests, tuple(int(n) for n in a.ray_nodes.split(",")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    parts = [notes_md(res["notes"]) if res.get("notes") else "", throughput_md(res["throughput"]) if "throughput" in res else "", per_point_md(res["point"]) if "point" in res else "", bookkeeping_md(res["bookkeeping"]) if "bookkeeping" in res else "",
             overhead_md(res["overhead"]) if "overhead" in res else "", large_md(res["large"]) if "large" in res else "",
             interrupt_md(res["interrupt"]) if "interrupt" in res else "", ray_md(res["ray"]) if "ray" in res else ""]
    out.with_suffix(".md").write_text("\n".join(p for p in parts if p))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
