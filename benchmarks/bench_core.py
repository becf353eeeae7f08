"""Time the Rust core alone on the workloads of the core-performance issue, optionally side by side
with another build of the core (this machine is shared and noisy: compare ratios, not absolutes).

    python benchmarks/bench_core.py                          # every case, this checkout's core
    python benchmarks/bench_core.py --cases scale4 scale1024 --repeat 3
    python benchmarks/bench_core.py --against /tmp/base/python   # alternate runs with another tree
    python benchmarks/bench_core.py --cases scale4 scale1024 --marginal 4   # steady-state cost per request
    python benchmarks/bench_core.py --cases scale4 scale1024 --interleave   # cases in rounds, to compare them

Each measurement is a fresh Python process (pinned to core 0 when ``taskset`` exists) that builds
the case's workload, then times ``fleetwise._core.simulate`` (the core only: no Python
post-processing). Reported: the median of ``--repeat`` runs, in microseconds per request and per
iteration-free request count, and with ``--against`` the ratio other/this. ``--marginal F`` also
runs each case with F times its requests and reports the marginal cost per request, (t(F n) -
t(n)) / ((F - 1) n): the run's ramp-up and drain (few requests per instance in a large cluster,
small batches while the last requests finish) cancel out, leaving the steady-state cost.
``--cpu-time`` times the core by the calling thread's CPU time (the core runs on it, the GIL
released) instead of wall time: on a shared, loaded machine it leaves out the time the process waits
for a core, though not the caches other processes evict.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from vs_vidur import scenario as bench_scenario  # noqa: E402

_QUICK = {
    "name": "quick", "seed": 7,
    "cluster": {"pools": [{"name": "main", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b", "parallelism": {"tp": 1},
                           "scheduler": {"kind": "vllm", "max_num_seqs": 256}}],
                "router": {"kind": "least-outstanding-tokens"}},
    "workload": {"arrivals": {"kind": "poisson", "rate": 16.0},
                 "lengths": {"kind": "lognormal", "prompt_median": 1000, "prompt_sigma": 0.8, "prompt_max": 6000,
                             "output_median": 150, "output_sigma": 0.9, "output_max": 1500},
                 "requests": 3000},
}


def _quick(count: int, requests: int, router: str = "round-robin") -> dict:
    sc = copy.deepcopy(_QUICK)
    sc["cluster"]["pools"][0]["count"] = count
    sc["cluster"]["router"]["kind"] = router
    sc["workload"]["arrivals"]["rate"] = 8.0 * count
    sc["workload"]["requests"] = requests
    return sc


def _split(prefill: int, decode: int, requests: int) -> dict:
    sc = copy.deepcopy(_QUICK)
    sc["cluster"]["engine"] = "fleetwise-torch"
    sc["cluster"]["pools"] = [
        {"name": "prompt", "count": prefill, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "prefill", "kv_transfer": "serialized"},
        {"name": "token", "count": decode, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "decode"},
    ]
    sc["cluster"]["router"]["kind"] = "round-robin"
    sc["workload"]["arrivals"]["rate"] = 8.0 * (prefill + decode)
    sc["workload"]["requests"] = requests
    return sc


def _colo(count: int, requests: int) -> dict:
    sc = _split(1, 1, requests)
    sc["cluster"]["pools"] = [{"name": "colo", "count": count, "gpu": "h100-sxm", "model": "llama-3-8b"}]
    sc["workload"]["arrivals"]["rate"] = 8.0 * count
    return sc


def _moe(offload: bool, requests: int, sampling: str | None = None) -> dict:
    routing = {"kind": "zipf", "zipf_exponent": 0.8, "locality": 0.3}
    if sampling is not None:  # per-iteration routing keeps no per-request memory: no locality
        routing = {"kind": "zipf", "zipf_exponent": 0.8, "sampling": sampling}
    experts = ({"placement": "dram", "routing": routing,
                "cache": {"policy": "lru", "experts_per_layer": 2}, "prefetch": {"accuracy": 0.9, "lead_layers": 1}}
               if offload else None)
    pool = {"name": "main", "count": 1, "gpu": "gh200", "model": "mixtral-8x7b",
            "scheduler": {"kind": "vllm", "max_num_seqs": 64, "max_num_batched_tokens": 16384}}
    if experts:
        pool["experts"] = experts
    return {"name": "moe", "seed": 3, "cluster": {"pools": [pool], "router": {"kind": "round-robin"}},
            "workload": {"arrivals": {"kind": "poisson", "rate": 4.0},
                         "lengths": {"kind": "lognormal", "prompt_median": 1000, "prompt_sigma": 0.4, "prompt_max": 4000,
                                     "output_median": 100, "output_sigma": 0.3, "output_max": 400},
                         "requests": requests}}


def _vidur(requests: int) -> dict:
    """bench_vs_vidur.py's scenario (benchmarks/vs_vidur/scenario.py): 4 Llama-2-70B TP2 x PP2 replicas, ShareGPT lengths."""
    return bench_scenario.scenario_dict(requests, 4, 4.0, 0, "round-robin", bench_scenario.sharegpt_lengths())


CASES = {
    "vidur20k": lambda: _vidur(20_000),
    "quickstart100k": lambda: dict(_quick(2, 100_000, "least-outstanding-tokens")),
    "scale4": lambda: _quick(4, 20_000),
    "scale1024": lambda: _quick(1024, 60_000),
    "lot1024": lambda: _quick(1024, 60_000, "least-outstanding-tokens"),
    "colo1024": lambda: _colo(1024, 30_000),
    "split128": lambda: _split(128, 128, 20_000),
    "split512": lambda: _split(512, 512, 30_000),
    "moe-dense": lambda: _moe(False, 600),
    "moe-offload": lambda: _moe(True, 600),
    "moe-offload-l0": lambda: _moe(True, 600, "per_token"),
    "moe-offload-agg": lambda: _moe(True, 600, "per_iteration"),
}


def child(name: str) -> None:
    """Runs case ``name`` here and prints its core time as one JSON line."""
    import fleetwise
    from fleetwise.workload import build_workload

    sim_mod = sys.modules["fleetwise.simulate"]
    spent = [0.0, 0.0]
    real = sim_mod._core.simulate

    def timed(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return real(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
            spent[1] += time.thread_time() - c

    class _Core:
        simulate = staticmethod(timed)
        SimControl = sim_mod._core.SimControl

    sim_mod._core = _Core
    d = CASES[name]()
    if os.environ.get("BENCH_CORE_REQUESTS"):
        d["workload"]["requests"] = int(os.environ["BENCH_CORE_REQUESTS"])
    sc = fleetwise.scenario_from_dict(d)
    wl = build_workload(sc.workload, sc.seed, None)
    res = fleetwise.simulate(sc, workload=wl)
    print("@@" + json.dumps({"core_s": spent[1] if os.environ.get("BENCH_CORE_CPU") else spent[0], "wall_s": spent[0], "cpu_s": spent[1], "requests": len(wl), "events": res.summary.get("events"),
                             "finished": res.summary["finished"], "core": fleetwise._core.__file__}))


def measure(name: str, pythonpath: str, pin: bool, requests: int | None = None) -> dict:
    """One fresh-process run of case ``name`` with ``pythonpath`` first on the path (``requests``
    in place of the case's request count, if given)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    # The tree first; what the caller had on the path (e.g. carried-in packages) after it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p))
    if requests is not None:
        env["BENCH_CORE_REQUESTS"] = str(requests)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("@@"))[2:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", help="another tree's python/ directory to alternate with")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--requests", type=int, help="override every case's request count")
    ap.add_argument("--interleave", action="store_true", help="run the cases in rounds (every case once per repeat) rather than case by case")
    ap.add_argument("--marginal", type=int, metavar="F", help="also run F times the requests; report the marginal us/request")
    ap.add_argument("--cpu-time", action="store_true", help="time the core by its thread's CPU time rather than wall time (less sensitive to other processes on a loaded machine)")
    a = ap.parse_args()
    if a.cpu_time:
        os.environ["BENCH_CORE_CPU"] = "1"
    if a.requests:
        os.environ["BENCH_CORE_REQUESTS"] = str(a.requests)
    if a.child:
        child(a.child)
        return 0
    this = str(REPO / "python")
    trees = [("this", this)] + ([("other", a.against)] if a.against else [])
    sizes: dict[str, list[int]] = {}
    for name in a.cases:
        base_n = a.requests or CASES[name]()["workload"]["requests"]
        sizes[name] = [base_n] + ([base_n * a.marginal] if a.marginal and a.marginal > 1 else [])
    runs: dict[tuple[str, int, str], list[dict]] = {}

    def one(name: str, n: int) -> None:
        for t, path in trees:
            runs.setdefault((name, n, t), []).append(measure(name, path, not a.no_pin, n))

    if a.interleave:  # every case once per round: a load change on the machine hits them all
        for _ in range(a.repeat):
            for name in a.cases:
                for n in sizes[name]:
                    one(name, n)
    for name in a.cases:
        med: dict[tuple[str, int], dict] = {}
        for n in sizes[name]:
            if not a.interleave:
                for _ in range(a.repeat):
                    one(name, n)
            line = f"{name:16s}" + (f" x{n // sizes[name][0]}" if len(sizes[name]) > 1 else "")
            for t, _ in trees:
                rs = sorted(runs[name, n, t], key=lambda r: r["core_s"])
                m = med[t, n] = rs[len(rs) // 2]
                events = m["events"] or 0
                line += f"  {t}: {m['core_s']:7.3f} s {m['core_s'] / m['requests'] * 1e6:8.2f} us/req {events / m['requests']:5.1f} events/req"
                line += f" {m['core_s'] / events * 1e6:5.2f} us/event" if events else ""
            if a.against:
                line += f"  other/this {med['other', n]['core_s'] / med['this', n]['core_s']:5.2f}x"
            print(line, flush=True)
        if len(sizes[name]) > 1:
            line = f"{name:16s} marginal"
            for t, _ in trees:
                lo, hi = med[t, sizes[name][0]], med[t, sizes[name][1]]
                line += f"  {t}: {(hi['core_s'] - lo['core_s']) / (hi['requests'] - lo['requests']) * 1e6:8.2f} us/req"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
