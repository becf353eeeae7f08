"""A Python router's cost per call against the instance count (issue 17).

Runs the same requests on 4, 64 and 1,024 Llama-3-8B / H100 instances three ways: the built-in
round-robin router (Rust), a Python power-of-two-choices router (reads two random endpoints per
request: its own work does not grow with the cluster) and the Python least-outstanding-tokens
profile router (reads every endpoint). The overhead of one call is the difference in wall time
from the Rust run divided by the number of requests. ``--against`` alternates each measurement with
another tree's ``python/`` directory (e.g. the core and bridge before a change) in fresh processes.

    python benchmarks/bench_python_router_scale.py
    python benchmarks/bench_python_router_scale.py --against /tmp/base/python --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scenario(requests: int, instances: int) -> dict:
    """Round-robin Llama-3-8B / H100 instances at 8 requests/s each."""
    return {
        "name": "python-router-scale",
        "seed": 5,
        "cluster": {"pools": [{"name": "main", "count": instances, "gpu": "h100-sxm", "model": "llama-3-8b"}], "router": {"kind": "round-robin"}},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": 8.0 * instances},
            "lengths": {"kind": "lognormal", "prompt_median": 600, "prompt_sigma": 0.7, "prompt_max": 4000, "output_median": 120, "output_sigma": 0.7, "output_max": 800},
            "requests": requests,
        },
    }


class PowerOfTwoChoices:
    """Two endpoints drawn at random, the one with fewer outstanding tokens taken."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def route(self, request, endpoints):
        """The less loaded of two random endpoints."""
        import fleetwise.policy as P

        n = len(endpoints)
        a, b = endpoints[self.rng.randrange(n)], endpoints[self.rng.randrange(n)]
        return P.RouteDecision(instance=min(a, b, key=lambda e: (e.outstanding_tokens, e.index)).index)


def child(requests: int, instances: int, repeat: int) -> dict:
    """Median wall seconds of each router on one cluster size (run in a fresh process)."""
    import fleetwise
    import fleetwise.policy as P
    from fleetwise.config.load import as_scenario
    from fleetwise.workload import build_workload

    sc = as_scenario(scenario(requests, instances))
    wl = build_workload(sc.workload, sc.seed, None)
    runs = {
        "rust round-robin": lambda: fleetwise.simulate(sc, workload=wl),
        "python power-of-two": lambda: fleetwise.simulate(sc, workload=wl, router=PowerOfTwoChoices()),
        "python least-outstanding": lambda: fleetwise.simulate(sc, workload=wl, router=P.create("router", "least-outstanding-tokens")),
    }
    out = {}
    for name, fn in runs.items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def measure(python_dir: str, requests: int, instances: int, repeat: int) -> dict:
    """``child`` in a fresh interpreter importing fleetwise from ``python_dir``."""
    env = {**os.environ, "PYTHONPATH": python_dir}
    cmd = [sys.executable, __file__, "--child", f"{requests},{instances},{repeat}"]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    """Measures and writes benchmarks/results/python_router_scale.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--instances", type=int, nargs="*", default=[4, 64, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", help="another tree's python/ directory, measured alternately")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "python_router_scale")
    a = ap.parse_args()
    if a.child:
        r, n, k = (int(x) for x in a.child.split(","))
        print(json.dumps(child(r, n, k)))
        return
    trees = {"this tree": str(HERE.parent / "python")}
    if a.against:
        trees["against"] = a.against
    rows = []
    for n in a.instances:
        for label, tree in trees.items():
            t = measure(tree, a.requests, n, a.repeat)
            base = t["rust round-robin"]
            rows.append({"tree": label, "instances": n, "wall_s": t, "overhead_us_per_call": {k: (v - base) / a.requests * 1e6 for k, v in t.items() if k != "rust round-robin"}})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"requests": a.requests, "repeat": a.repeat, "rows": rows}, indent=2) + "\n")
    lines = ["# A Python router's cost per call against the instance count", "",
             f"{a.requests} requests, median of {a.repeat} runs per cell, fresh process per tree and size;",
             "overhead = (wall time - the Rust round-robin run's) / requests. `python benchmarks/bench_python_router_scale.py`", "",
             "| tree | instances | power-of-two (2 endpoints read) us/call | least-outstanding (all read) us/call |", "|---|---:|---:|---:|"]
    for r in rows:
        o = r["overhead_us_per_call"]
        lines.append(f"| {r['tree']} | {r['instances']} | {o['python power-of-two']:.1f} | {o['python least-outstanding']:.1f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
