"""One measured fleetwise run: a fresh Python process (the entry script with ``--child``), pinned to
one core, timing imports, workload build and the phases of ``fleetwise.simulate()``, with its RSS."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time

from .scenario import HERE, REPO

ENTRY = HERE / "bench_vs_vidur.py"


def _vm(key: str) -> float:
    """VmRSS / VmHWM of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_into(spent: dict[str, float], name: str, fn):
    """``fn`` wrapped so that each call adds its wall time to ``spent[name]`` (seconds)."""

    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - s

    return wrapper


def child(spec: dict) -> None:
    """Runs ``spec["scenario"]`` in this process and prints its measurements as one ``@@RESULT@@`` line."""
    t0 = time.perf_counter()
    import numpy as np

    import fleetwise
    from fleetwise.workload import build_workload

    sim_mod = sys.modules["fleetwise.simulate"]
    t_import = time.perf_counter() - t0
    rss_after_import = _vm("VmRSS")

    # Time the phases of simulate() by wrapping the module-level functions it calls.
    phases: dict[str, float] = {}

    def timed(name, fn):
        return timed_into(phases, name, fn)

    class _Core:
        simulate = staticmethod(timed("rust_core", sim_mod._core.simulate))
        SimControl = sim_mod._core.SimControl

    sim_mod._core = _Core
    sim_mod.core_config = timed("core_config", sim_mod.core_config)
    sim_mod.compact_requests = timed("requests_frame", sim_mod.compact_requests)
    sim_mod.summarize = timed("summarize", sim_mod.summarize)
    sim_mod._instances_frame = timed("instances_frame", sim_mod._instances_frame)

    t = time.perf_counter()
    sc = fleetwise.scenario_from_dict(spec["scenario"])
    t_validate = time.perf_counter() - t
    t = time.perf_counter()
    wl = build_workload(sc.workload, sc.seed, None)
    t_build = time.perf_counter() - t
    rss_after_build = _vm("VmRSS")

    t = time.perf_counter()
    res = fleetwise.simulate(sc, workload=wl)
    t_sim = time.perf_counter() - t

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    req = res.requests
    s = res.summary
    fin = req.filter(req["status"] == "finished")
    out = {
        "n": len(wl),
        "t_import_s": t_import,
        "t_validate_s": t_validate,
        "t_build_workload_s": t_build,
        "t_simulate_s": t_sim,
        "phases_s": phases,
        "rss_after_import_mib": rss_after_import,
        "rss_after_build_mib": rss_after_build,
        "peak_rss_mib": peak_rss,
        "prompt_tokens": int(np.sum(wl.prompt_tokens)),
        "decode_tokens": int(np.sum(wl.output_tokens)),
        "decode_tokens_finished": int(fin["output_tokens"].sum()),
        "finished": s["finished"],
        "rejected": s["rejected"],
        "unfinished": int((req["status"] == "unfinished").sum()),
        "preemptions": s["preemptions"],
        "events": s.get("events"),
        "duration_s": s["duration_s"],
        "throughput": s["throughput"],
        "ttft_s": s["ttft_s"],
        "tpot_s": s["tpot_s"],
        "e2e_s": s["e2e_s"],
        "itl_s": s["itl_s"],
        "max_ttft_s": float(fin["ttft_s"].max()) if fin.height else None,
        "max_e2e_s": float(fin["e2e_s"].max()) if fin.height else None,
        "mean_prompt": float(np.mean(wl.prompt_tokens)),
        "mean_output": float(np.mean(wl.output_tokens)),
        "instances": res.instances.to_dicts(),
    }
    print("@@RESULT@@" + json.dumps(out, default=float))


def run_child(spec: dict, pin: bool) -> dict:
    """Runs :func:`child` in a fresh process (pinned to core 0 when ``pin``); returns its measurements."""
    cmd = [sys.executable, str(ENTRY), "--child", json.dumps(spec)]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"fleetwise child failed ({p.returncode}):\n{p.stderr[-4000:]}")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@"))
    out = json.loads(line[len("@@RESULT@@"):])
    out["t_process_s"] = wall
    return out


def median_run(runs: list[dict]) -> dict:
    """The run with the median simulate() time (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["t_simulate_s"])[len(runs) // 2]
