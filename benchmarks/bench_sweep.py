"""Sweep throughput: a 64-point grid of 20,000-request scenarios on this machine's cores.

    python benchmarks/bench_sweep.py [--points-rates 16] [--requests 20000] [-j 2]

Runs ``fleetwise sweep`` on the quickstart scenario (Llama-3-8B on H100s) over 16 arrival rates x
4 instance counts = 64 points, each 20,000 requests, in a fresh directory, and reports wall time,
points per minute and simulated requests per second; writes benchmarks/results/sweep.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, default=16, help="number of arrival rates (x 4 instance counts)")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(HERE / "results" / "sweep"))
    a = ap.parse_args()
    rates = ",".join(str(2 + 2 * i) for i in range(a.rates))
    work = Path(tempfile.mkdtemp(prefix="fleetwise-sweep-bench-"))
    cmd = [sys.executable, "-m", "fleetwise", "sweep", str(REPO / "scenarios" / "quickstart.yaml"),
           "--grid", f"workload.arrivals.rate={rates}", "--grid", "cluster.pools.0.count=1,2,4,8",
           "--set", f"workload.requests={a.requests}", "-o", str(work / "sw"), "-j", str(a.jobs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
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
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# Sweep throughput\n\nMeasured {res['date']} on {res['machine']} with `-j {a.jobs}`: `fleetwise sweep` of the quickstart "
        f"scenario (Llama-3-8B on H100, vLLM batching) over {a.rates} arrival rates x 4 instance counts = {n} points of "
        f"{a.requests:,} requests each.\n\n| | |\n|---|---:|\n| wall time (whole command) | {wall:.1f} s |\n"
        f"| points per minute | {res['points_per_minute']:.0f} |\n| simulated requests per second | {res['simulated_requests_per_second']:,.0f} |\n"
        f"| results on disk (per-request tables of every point) | {size / 2**20:.0f} MiB |\n"
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
