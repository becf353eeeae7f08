"""Cost of a user's Python policy inside the simulator, per call.

Runs one scenario three ways: built-in Rust policies; the same decisions from Python policy objects
(a least-outstanding-tokens ProfileRouter, an FCFS BatchScheduler plan) plugged into the core; and
each Python policy alone. The Python and Rust runs produce identical results (checked), so the
difference in wall time divided by the number of calls is the overhead of one call across the
boundary (building the views, the policy's own work, the decision back into Rust).

    python benchmarks/bench_python_policy.py                  # 20k requests, 8 instances, median of 3
    python benchmarks/bench_python_policy.py --requests 5000 --repeat 1

Writes benchmarks/results/python_policy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import fleetwise
import fleetwise.policy as P
from fleetwise.config.load import as_scenario
from fleetwise.workload import build_workload


def scenario(requests: int, instances: int, seed: int) -> dict:
    """Llama-3-8B on H100s under Poisson load near saturation, vLLM v1 scheduling."""
    return {
        "name": "python-policy-bench",
        "seed": seed,
        "cluster": {
            "pools": [{"name": "main", "count": instances, "gpu": "h100-sxm", "model": "llama-3-8b", "scheduler": {"kind": "vllm-v1", "max_num_seqs": 128, "max_num_batched_tokens": 2048}}],
            "router": {"kind": "least-outstanding-tokens"},
        },
        "workload": {
            "arrivals": {"kind": "poisson", "rate": 9.0 * instances},
            "lengths": {"kind": "lognormal", "prompt_median": 800, "prompt_sigma": 0.8, "prompt_max": 4000, "output_median": 150, "output_sigma": 0.8, "output_max": 1000},
            "requests": requests,
        },
    }


class ExplicitFcfs:
    """FCFS that reads every request's view and spells out the engine's own orders: same
    decisions as ``Fcfs``, the cost of a policy that looks at all requests each step."""

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int):
        self.limits = (max_num_seqs, max_num_batched_tokens)

    def plan(self, step):
        """Queue order, admission order, newest-first victims, all listed."""
        running = [r.id for r in step.running]
        return P.StepPlan(token_budget=self.limits[1], max_num_seqs=self.limits[0], running_order=running, waiting_order=[r.id for r in step.waiting], victim_order=running[::-1])


def timed(fn, repeat: int):
    """Median wall time of ``fn()`` over ``repeat`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    """Runs the benchmark and writes the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "python_policy")
    a = ap.parse_args()

    sc = as_scenario(scenario(a.requests, a.instances, a.seed))
    wl = build_workload(sc.workload, sc.seed, None)
    runs = {
        "rust": lambda: fleetwise.simulate(sc, workload=wl),
        "python router": lambda: fleetwise.simulate(sc, workload=wl, router=P.create("router", "least-outstanding-tokens")),
        "python scheduler": lambda: fleetwise.simulate(sc, workload=wl, schedulers={"main": lambda: P.Fcfs(128, 2048)}),
        "python scheduler reading all requests": lambda: fleetwise.simulate(sc, workload=wl, schedulers={"main": lambda: ExplicitFcfs(128, 2048)}),
        "python both": lambda: fleetwise.simulate(sc, workload=wl, router=P.create("router", "least-outstanding-tokens"), schedulers={"main": lambda: P.Fcfs(128, 2048)}),
    }
    t, res = {}, {}
    for name, fn in runs.items():
        t[name], res[name] = timed(fn, a.repeat)
    base = res["rust"]
    identical = {name: r.requests.equals(base.requests) for name, r in res.items()}
    routes = a.requests
    plans = int(base.instances["iterations"].sum())
    per_route = (t["python router"] - t["rust"]) / routes
    per_plan = (t["python scheduler"] - t["rust"]) / plans
    per_plan_all = (t["python scheduler reading all requests"] - t["rust"]) / plans
    out = {
        "requests": a.requests,
        "instances": a.instances,
        "router_calls": routes,
        "scheduler_calls": plans,
        "wall_s": t,
        "identical_to_rust": identical,
        "router_overhead_us_per_call": per_route * 1e6,
        "scheduler_overhead_us_per_call": per_plan * 1e6,
        "scheduler_reading_all_overhead_us_per_call": per_plan_all * 1e6,
        "slowdown": {k: v / t["rust"] for k, v in t.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Python policies inside the simulator",
        "",
        f"{a.requests} requests on {a.instances} Llama-3-8B / H100 instances (vLLM v1 scheduling), median of {a.repeat} runs;",
        f"{routes} routing calls, {plans} scheduling calls. `python benchmarks/bench_python_policy.py`",
        "",
        "| policies | wall s | vs Rust | identical results |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {k} | {t[k]:.3f} | {t[k] / t['rust']:.2f}x | {identical[k]} |" for k in runs]
    lines += ["", f"Overhead per call: router {per_route * 1e6:.1f} us; scheduler plan {per_plan * 1e6:.1f} us (request views never read), {per_plan_all * 1e6:.1f} us when the policy reads every request's view."]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
