"""Where one sweep point's CPU time goes: the Rust core's simulation against everything else.

Used by ``bench_sweep.py`` (``--only point``). In one process, as a sweep worker does, it runs the
large sweep's 40 grid points (10 rates x 4 instance counts, seed 1; 20,000 requests each) through
``fleetwise.sweep.point.run_point`` after one untimed warm-up point, keeping per-request tables and
keeping summaries only, and splits the process's CPU time (``getrusage``) into the core's
``_core.simulate`` call (its thread's CPU time) and the rest: building the scenario, the workload,
the result tables and summary, writing the files and the row. The same is done with ``main``'s
Python code (``git archive``; the same compiled core), whose ``run_point`` takes the scenario path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_sweep_large import COUNTS, RATES, REPO

OLD_REF = "main"
"""The git revision whose Python code is the "before"."""

_MEASURE = r'''
import inspect, json, resource, sys, tempfile, time
import fleetwise._core as core
from fleetwise.sweep import point as P
from fleetwise.sweep.grid import expand, parse_grid
rates, counts, requests, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
spent = [0.0]
simulate = core.simulate
def timed(*a, **k):
    t = time.thread_time()
    try:
        return simulate(*a, **k)
    finally:
        spent[0] += time.thread_time() - t
core.simulate = timed
pts = expand(parse_grid([f"workload.arrivals.rate={rates}", f"cluster.pools.0.count={counts}", "seed=1"]))
paths = ["workload.arrivals.rate", "cluster.pools.0.count", "seed"]
out = tempfile.mkdtemp(prefix="fleetwise-point-bench-")
if "base" in inspect.signature(P.run_point).parameters:
    from fleetwise.sweep.scenarios import BaseScenario
    base = BaseScenario("scenarios/quickstart.yaml", [f"workload.requests={requests}"])
    run = lambda p: P.run_point(base, p, out, paths, keep)
else:
    run = lambda p: P.run_point("scenarios/quickstart.yaml", [f"workload.requests={requests}"], p, out, paths, keep)
run(pts[0])
spent[0] = 0.0
r0 = resource.getrusage(resource.RUSAGE_SELF)
for p in pts:
    run(p)
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"points": len(pts), "cpu_s_per_point": cpu / len(pts), "core_s_per_point": spent[0] / len(pts),
                  "rest_s_per_point": (cpu - spent[0]) / len(pts)}))
'''


def per_point(requests: int) -> dict:
    """CPU per point, core and rest, with and without per-request tables, for main and this checkout."""
    work = Path(tempfile.mkdtemp(prefix="fleetwise-point-bench-"))
    try:
        subprocess.run(f"git archive {OLD_REF} python | tar -x -C {work}", shell=True, check=True, cwd=REPO)
        shutil.copy(REPO / "python" / "fleetwise" / "_core.abi3.so", work / "python" / "fleetwise" / "_core.abi3.so")
        res: dict = {"before": OLD_REF, "requests_per_point": requests, "load_average_before": os.getloadavg()[0]}
        for name, code in (("before", work / "python"), ("after", REPO / "python")):
            for keep in (True, False):
                r = subprocess.run([sys.executable, "-c", _MEASURE, ",".join(map(str, RATES)), ",".join(map(str, COUNTS)), str(requests), "1" if keep else "0"],
                                   cwd=REPO, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(code)))
                res[f"{name}_{'tables' if keep else 'summaries'}"] = json.loads(r.stdout.strip().splitlines()[-1])
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def per_point_md(res: dict) -> str:
    """The per-point part of sweep.md."""
    lines = [f"# Where a point's CPU time goes\n\n`python benchmarks/bench_sweep.py --only point` (load average {res['load_average_before']:.1f} "
             f"when it started): the 40 points of the large sweep's grid with seed 1 ({res['requests_per_point']:,} requests each), run one "
             "after another in one process as a sweep worker runs them; CPU time per point, split into the Rust core's simulation "
             f"and the rest (scenario, workload, result tables and summary, files, row), with `{res['before']}`'s Python and this checkout's.\n",
             "| | keeps | CPU per point | core | rest |", "|---|---|---:|---:|---:|"]
    for name in ("before", "after"):
        for keep in ("tables", "summaries"):
            r = res[f"{name}_{keep}"]
            label = f"{name} (`{res['before']}`)" if name == "before" else name
            lines.append(f"| {label} | {'per-request tables' if keep == 'tables' else 'summaries only'} | {r['cpu_s_per_point'] * 1e3:.0f} ms | "
                         f"{r['core_s_per_point'] * 1e3:.0f} ms | {r['rest_s_per_point'] * 1e3:.0f} ms |")
    return "\n".join(lines) + "\n"
