#!/usr/bin/env python3
"""Speed benchmark: fleetwise against Vidur on the same requests.

What it runs
------------
* **fleetwise**: Llama-2-70B on A100-80GB-SXM, TP2 x 2 pipeline stages per instance (Vidur's own
  layout; ``--parallelism tp4`` runs TP4 instead), ``--replicas`` instances behind a round-robin
  router (Vidur's default global scheduler), vLLM-style batching with Vidur's vLLM defaults
  (max 128 sequences, 4096 batched tokens), Poisson arrivals at ``replicas * qps-per-replica``,
  ShareGPT lengths (``sharegpt_8k_lengths_llama2tok.csv``, rows with prompt + output > 4096 dropped).
  Each run is a fresh Python process pinned to one core (``taskset -c 0``); the wall time of
  ``fleetwise.simulate()`` is measured without imports, the workload build separately, and the peak
  RSS is that process's ``ru_maxrss``.
* **memory check**: the same request count with constant lengths (prompt 512, outputs 100 and 1000,
  then more) on the same cluster: peak RSS must not grow with the number of decode tokens.
* **Vidur** (``../shared/peers/vidur/run_vidur.sh``, PyPI vidur 0.0.26, random-forest predictors trained
  on the public Llama-2-70B/A100 profile, TP2 x PP2, vllm scheduler): it replays *exactly the requests
  fleetwise simulated* (arrival times and lengths written to a trace CSV for Vidur's ``trace_replay``
  generator), pinned to the same core. Vidur's own ``synthetic`` generator with the ShareGPT length
  file cannot be used past 30,731 requests: its trace length generator runs out of rows and the
  generator crashes on ``None.arrived_at``. Wall time includes the script's startup; the phases
  (startup and request loading / event loop / metrics output) are separated by time-stamping Vidur's
  log lines as they arrive. Peak RSS from GNU ``/usr/bin/time -v``.

Usage::

    python benchmarks/bench_vs_vidur.py                       # 100k requests, 4 replicas, 1 QPS each
    python benchmarks/bench_vs_vidur.py --skip-vidur          # fleetwise only
    python benchmarks/bench_vs_vidur.py --vidur-requests 10000  # Vidur on the first 10k, extrapolated

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/vs_vidur``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
SHAREGPT = SHARED / "traces" / "sharegpt_8k_lengths_llama2tok.csv"
RUN_VIDUR = SHARED / "peers" / "vidur" / "run_vidur.sh"
MAX_TOTAL_TOKENS = 4096
# Vidur's vllm scheduler defaults (vidur 0.0.26): batch_size_cap 128, max_tokens_in_batch 4096.
MAX_NUM_SEQS = 128
MAX_BATCHED_TOKENS = 4096


# --------------------------------------------------------------------------------------------------
# scenario
# --------------------------------------------------------------------------------------------------


LAYOUTS = {"tp2pp2": ({"tp": 2, "pp": 2}, "TP2 x PP2"), "tp4": ({"tp": 4}, "TP4")}
PARALLELISM, LAYOUT = LAYOUTS["tp2pp2"]

def scenario_dict(requests: int, replicas: int, qps: float, seed: int, router: str, lengths: dict) -> dict:
    return {
        "name": "bench-vs-vidur",
        "seed": seed,
        "cluster": {
            "pools": [
                {
                    "name": "main",
                    "count": replicas,
                    "gpu": "a100-80gb-sxm",
                    "model": "llama-2-70b",
                    "parallelism": PARALLELISM,
                    "scheduler": {
                        "kind": "vllm",
                        "max_num_seqs": MAX_NUM_SEQS,
                        "max_num_batched_tokens": MAX_BATCHED_TOKENS,
                    },
                }
            ],
            "router": {"kind": router},
        },
        "workload": {
            "arrivals": {"kind": "poisson", "rate": qps},
            "lengths": lengths,
            "requests": requests,
        },
    }


def sharegpt_lengths() -> dict:
    return {"kind": "file", "path": str(SHAREGPT), "max_total_tokens": MAX_TOTAL_TOKENS}


# --------------------------------------------------------------------------------------------------
# child: one measured fleetwise run in a fresh process
# --------------------------------------------------------------------------------------------------


def _vm(key: str) -> float:
    """VmRSS / VmHWM of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> None:
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
        def wrapper(*a, **k):
            s = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - s

        return wrapper

    class _Core:
        simulate = staticmethod(timed("rust_core", sim_mod._core.simulate))
        SimControl = sim_mod._core.SimControl

    sim_mod._core = _Core
    sim_mod.core_config = timed("core_config", sim_mod.core_config)
    sim_mod._requests_frame = timed("requests_frame", sim_mod._requests_frame)
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
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
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


# --------------------------------------------------------------------------------------------------
# Vidur
# --------------------------------------------------------------------------------------------------


def write_vidur_trace(path: Path, n: int, scenario: dict) -> dict:
    """Writes fleetwise's first ``n`` requests as a Vidur trace_replay CSV; returns their stats."""
    import numpy as np
    import polars as pl

    import fleetwise
    from fleetwise.workload import build_workload

    sc = fleetwise.scenario_from_dict(scenario)
    wl = build_workload(sc.workload, sc.seed, None)
    arr = wl.arrival_ns[:n]
    # Vidur's trace_replay filters on Date == 2023-08-21 and reads Time in seconds.
    pl.DataFrame(
        {
            "Date": ["2023-08-21"] * n,
            "Time": (arr - 0) / 1e9,
            "PromptTokenCount": wl.prompt_tokens[:n],
            "CompletionTokenCount": wl.output_tokens[:n],
        }
    ).write_csv(path, float_precision=9)
    return {
        "n": n,
        "mean_prompt": float(np.mean(wl.prompt_tokens[:n])),
        "mean_output": float(np.mean(wl.output_tokens[:n])),
        "decode_tokens": int(np.sum(wl.output_tokens[:n])),
        "last_arrival_s": float(arr[-1] / 1e9),
    }


_PHASES = {
    "sim_start": re.compile(r"Starting simulation"),
    "sim_end": re.compile(r"Simulation ended at"),
    "metrics_written": re.compile(r"Metrics written"),
}


def run_vidur(n: int, replicas: int, qps: float, scenario: dict, outdir: Path, pin: bool, timeout: float) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    trace = outdir / "fleetwise_requests_trace.csv"
    wl_stats = write_vidur_trace(trace, n, scenario)
    metrics_dir = outdir / "vidur_out"
    if metrics_dir.exists():
        shutil.rmtree(metrics_dir)
    timefile = outdir / "time_v.txt"
    cmd = [
        "bash", str(RUN_VIDUR), str(metrics_dir), str(n), str(replicas), f"{qps:g}", "vllm",
        "--request_generator_config_type", "trace_replay",
        "--trace_request_generator_config_trace_file", str(trace),
        "--trace_request_generator_config_prefill_scale_factor", "1",
        "--trace_request_generator_config_decode_scale_factor", "1",
        "--trace_request_generator_config_time_scale_factor", "1",
        "--trace_request_generator_config_max_tokens", str(MAX_TOTAL_TOKENS),
        "--global_scheduler_config_type", "round_robin",
    ]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        cmd = [str(gnu_time), "-v", "-o", str(timefile), *cmd]
    marks: dict[str, float] = {}
    log_path = outdir / "vidur.log"
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert p.stdout is not None
        for line in p.stdout:
            now = time.perf_counter() - t0
            log.write(f"[{now:9.3f}] {line}")
            for k, rx in _PHASES.items():
                if k not in marks and rx.search(line):
                    marks[k] = now
            if now > timeout:
                p.kill()
                raise RuntimeError(f"Vidur ran past {timeout} s; log in {log_path}")
        rc = p.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"Vidur failed ({rc}); log in {log_path}")
    peak_kib = None
    if timefile.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timefile.read_text())
        peak_kib = int(m.group(1)) if m else None
    if peak_kib is None:  # RUSAGE_CHILDREN is the largest descendant waited for so far
        peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, ru_before)
    out = {
        "n": n,
        "wall_s": wall,
        "startup_s": marks.get("sim_start"),
        "event_loop_s": (marks["sim_end"] - marks["sim_start"]) if {"sim_start", "sim_end"} <= marks.keys() else None,
        "output_s": (marks["metrics_written"] - marks["sim_end"]) if {"sim_end", "metrics_written"} <= marks.keys() else None,
        "peak_rss_mib": peak_kib / 1024,
        "log": str(log_path),
        "workload": wl_stats,
    }
    out["wall_excl_startup_s"] = wall - out["startup_s"] if out["startup_s"] is not None else None
    out.update(vidur_latencies(metrics_dir))
    return out


def vidur_latencies(metrics_dir: Path) -> dict:
    """TTFT/TPOT/E2E like ../shared/peers/vidur/summarize.py, from request_metrics.csv."""
    import polars as pl

    files = sorted(glob.glob(f"{metrics_dir}/**/request_metrics.csv", recursive=True), key=os.path.getmtime)
    if not files:
        return {"metrics_error": f"no request_metrics.csv under {metrics_dir}"}
    df = pl.read_csv(files[-1])
    cols = {
        "ttft_s": "prefill_e2e_time",
        "tpot_s": "decode_time_execution_plus_preemption_normalized",
        "e2e_s": "request_e2e_time",
        "sched_delay_s": "request_scheduling_delay",
    }
    out: dict = {"metrics_file": files[-1], "requests_in_metrics": df.height}
    for k, c in cols.items():
        if c in df.columns:
            s = df[c].cast(pl.Float64)
            # pandas' default quantile interpolation is linear, as is numpy's percentile (fleetwise).
            out[k] = {
                "mean": s.mean(),
                **{f"p{p}": s.quantile(p / 100, interpolation="linear") for p in (50, 90, 99)},
            }
    for name in ("request_num_prefill_tokens", "request_num_decode_tokens"):
        if name in df.columns:
            out[f"mean_{name}"] = df[name].mean()
    if "request_num_restarts" in df.columns:
        out["restarts"] = int(df["request_num_restarts"].sum())
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["t_simulate_s"])[len(runs) // 2]


def _fmt(x, nd=3):
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{nd}g}" if abs(x) < 1 else f"{x:,.{nd - 1}f}" if abs(x) < 100 else f"{x:,.1f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(res: dict) -> str:
    cfg = res["config"]
    fw = res["fleetwise"]["median"]
    L = []
    L.append("# fleetwise vs Vidur: simulation speed")
    L.append("")
    L.append(
        f"Measured {res['date']} on {res['host']['cpu']} ({res['host']['cores']} cores), Python {res['host']['python']}; "
        f"every simulator pinned to one core (`taskset -c 0`: {cfg['pinned']})."
    )
    L.append("")
    L.append(
        f"Workload: {cfg['requests']:,} requests, Poisson at {cfg['total_qps']:g} req/s "
        f"({cfg['replicas']} replicas x {cfg['qps_per_replica']:g}), ShareGPT lengths "
        f"(`sharegpt_8k_lengths_llama2tok.csv`, prompt + output <= {MAX_TOTAL_TOKENS}; mean prompt "
        f"{fw['mean_prompt']:.0f}, mean output {fw['mean_output']:.0f} tokens), seed {cfg['seed']}. "
        f"Vidur replays exactly the requests fleetwise simulated (its `trace_replay` generator fed "
        f"fleetwise's arrival times and lengths)."
    )
    L.append("")
    L.append(
        f"Models: fleetwise Llama-2-70B on 4 x A100-80GB-SXM per replica as {LAYOUT}, "
        "calibrated roofline cost model; Vidur Llama-2-70B on A100 as TP2 x 2 pipeline stages, "
        "random-forest predictors on the public profile. Both: vLLM-style batching, at most "
        f"{MAX_NUM_SEQS} sequences and {MAX_BATCHED_TOKENS} tokens per batch, round-robin routing."
    )
    L.append("")
    L.append("## Speed and memory")
    L.append("")
    v = res.get("vidur")
    L.append("| | fleetwise | Vidur |")
    L.append("|---|---:|---:|")
    if v and "error" not in v:
        extrap = v["n"] != cfg["requests"]
        vn = f"{v['n']:,}" + (" (extrapolated per request below)" if extrap else "")
        L.append(f"| requests simulated | {fw['n']:,} | {vn} |")
        L.append(
            f"| wall time, simulate / whole process (s) | {fw['t_simulate_s']:.2f} / {fw['t_process_s']:.2f} | "
            f"{v['wall_excl_startup_s']:.1f} / {v['wall_s']:.1f} |"
        )
        if extrap:
            L.append(
                f"| wall time for {cfg['requests']:,} requests, extrapolated (s) | | "
                f"{v['extrapolated']['wall_excl_startup_s']:.0f} / {v['extrapolated']['wall_s']:.0f} |"
            )
        L.append(
            f"| simulated requests per wall-second | {res['speed']['fleetwise_req_per_s']:,.0f} | "
            f"{res['speed']['vidur_req_per_s']:,.0f} |"
        )
        L.append(f"| peak RSS (MiB) | {fw['peak_rss_mib']:.0f} | {v['peak_rss_mib']:.0f} |")
        L.append("")
        L.append(
            f"**Speed ratio fleetwise / Vidur: {res['speed']['ratio']:,.0f}x** "
            f"(simulate() call against Vidur's wall time less its startup and request loading); "
            f"{res['speed']['ratio_whole_process']:,.0f}x comparing whole processes (interpreter start, "
            f"imports and workload build included on both sides)."
        )
        L.append("")
        L.append(
            f"Vidur's phases: startup and request loading {v['startup_s']:.1f} s, event loop "
            f"{v['event_loop_s']:.1f} s, writing metrics {v['output_s']:.1f} s."
        )
    else:
        L.append(f"| requests simulated | {fw['n']:,} | not run |")
        L.append(f"| wall time, simulate / whole process (s) | {fw['t_simulate_s']:.2f} / {fw['t_process_s']:.2f} | |")
        L.append(f"| simulated requests per wall-second | {res['speed']['fleetwise_req_per_s']:,.0f} | |")
        L.append(f"| peak RSS (MiB) | {fw['peak_rss_mib']:.0f} | |")
        if v and "error" in v:
            L.append("")
            L.append(f"Vidur failed: {v['error']}")
    L.append("")
    runs = res["fleetwise"]["runs"]
    L.append(
        f"fleetwise, median of {len(runs)} fresh processes (simulate() times: "
        + ", ".join(f"{r['t_simulate_s']:.2f}" for r in runs)
        + f" s). In the median run: workload build {fw['t_build_workload_s']:.2f} s, imports "
        f"{fw['t_import_s']:.2f} s; inside simulate(): "
        + ", ".join(f"{k} {v2:.3f} s" for k, v2 in sorted(fw["phases_s"].items(), key=lambda kv: -kv[1]))
        + f"; {fw['decode_tokens']:,} decode tokens, {fw['events']:,} events; RSS after imports "
        f"{fw['rss_after_import_mib']:.0f} MiB. Target: 100,000 requests in under 5 s on one core: "
        f"**{'met' if res['targets']['under_5s_per_100k'] else 'NOT met'}** "
        f"({res['targets']['sim_s_per_100k']:.2f} s per 100k)"
        + (f"; at least 100x Vidur: **{'met' if res['targets']['ratio_ge_100'] else 'NOT met'}**." if "ratio_ge_100" in res["targets"] else ".")
    )
    L.append("")
    mc = res.get("memory_check")
    if mc:
        L.append("## Memory against decode tokens")
        L.append("")
        L.append(
            f"{mc['requests']:,} requests, constant prompt {mc['prompt']} tokens, same cluster and arrival rate; "
            "only the output length changes."
        )
        L.append("")
        L.append("| output tokens / request | decode tokens simulated | simulate() (s) | peak RSS (MiB) | RSS after imports (MiB) |")
        L.append("|---:|---:|---:|---:|---:|")
        for r in mc["runs"]:
            L.append(
                f"| {r['output']:,} | {r['decode_tokens']:,} | {r['t_simulate_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['rss_after_import_mib']:.0f} |"
            )
        L.append("")
        L.append(
            f"Peak RSS changes by {mc['rss_growth_mib']:+.0f} MiB while decode tokens grow "
            f"{mc['decode_growth']:.0f}x: memory {'does not grow' if mc['flat'] else 'GROWS'} with decode tokens."
        )
        L.append("")
    if v and "error" not in v and "ttft_s" in v:
        L.append("## Latencies (informational: different cost models)")
        L.append("")
        L.append(
            "fleetwise TPOT is (E2E - TTFT) / (output - 1); Vidur's is "
            "`decode_time_execution_plus_preemption_normalized`; Vidur's TTFT is `prefill_e2e_time`."
            + (f" Vidur figures are over its {v['n']:,} requests (the first of fleetwise's)." if v["n"] != cfg["requests"] else "")
        )
        L.append("")
        L.append("| metric | fleetwise mean | p50 | p90 | p99 | Vidur mean | p50 | p90 | p99 |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in ("ttft_s", "tpot_s", "e2e_s"):
            a, b = fw[k], v[k]
            L.append(
                f"| {k} | " + " | ".join(_fmt(a[q]) for q in ("mean", "p50", "p90", "p99")) + " | "
                + " | ".join(_fmt(b[q]) for q in ("mean", "p50", "p90", "p99")) + " |"
            )
        L.append("")
        L.append(
            f"fleetwise: {fw['finished']:,} finished, {fw['rejected']:,} rejected, {fw['preemptions']:,} preemptions, "
            f"simulated span {fw['duration_s']:,.0f} s, {fw['throughput']['output_tokens_per_s']:,.0f} output tok/s."
            + (f" Vidur: {v.get('restarts', 0):,} restarts." if "restarts" in v else "")
        )
        L.append("")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--qps-per-replica", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--router", default="round-robin", choices=["round-robin", "least-outstanding-tokens", "random"])
    ap.add_argument("--parallelism", default="tp2pp2", choices=sorted(LAYOUTS), help="fleetwise's layout per replica (Vidur's is TP2 x PP2)")
    ap.add_argument("--repeat", type=int, default=3, help="fleetwise runs (fresh processes); the median is reported")
    ap.add_argument("--memcheck-requests", type=int, default=None, help="requests in the memory check (default --requests)")
    ap.add_argument("--memcheck-outputs", default="100,1000,3000", help="output lengths of the memory check (prompt 512)")
    ap.add_argument("--skip-memcheck", action="store_true")
    ap.add_argument("--skip-vidur", action="store_true")
    ap.add_argument("--vidur-requests", type=int, default=None, help="run Vidur on the first N requests and extrapolate (default --requests)")
    ap.add_argument("--vidur-outdir", default=None, help="Vidur's output directory (default: a temporary directory, removed afterwards)")
    ap.add_argument("--vidur-timeout", type=float, default=3600)
    ap.add_argument("--reuse-vidur", default=None, help="take the 'vidur' section of this earlier result JSON instead of running Vidur")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    ap.add_argument("--out", default=str(HERE / "results" / "vs_vidur"), help="output prefix: writes PREFIX.json and PREFIX.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    global PARALLELISM, LAYOUT
    PARALLELISM, LAYOUT = LAYOUTS[a.parallelism]
    if a.child is not None:
        child(json.loads(a.child))
        return

    pin = not a.no_pin and shutil.which("taskset") is not None
    total_qps = a.replicas * a.qps_per_replica
    scenario = scenario_dict(a.requests, a.replicas, total_qps, a.seed, a.router, sharegpt_lengths())
    res: dict = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": {
            "requests": a.requests,
            "replicas": a.replicas,
            "qps_per_replica": a.qps_per_replica,
            "total_qps": total_qps,
            "seed": a.seed,
            "router": a.router,
            "pinned": pin,
            "scenario": scenario,
        },
    }

    print(f"fleetwise: {a.requests:,} requests, {a.replicas} x {LAYOUT} Llama-2-70B/A100, {total_qps:g} req/s", flush=True)
    runs = []
    for i in range(a.repeat):
        r = run_child({"scenario": scenario}, pin)
        runs.append(r)
        print(
            f"  run {i + 1}: simulate {r['t_simulate_s']:.2f} s ({r['n'] / r['t_simulate_s']:,.0f} req/s), "
            f"build {r['t_build_workload_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"phases {{{', '.join(f'{k}: {v:.2f}' for k, v in r['phases_s'].items())}}}",
            flush=True,
        )
    med = _median_run(runs)
    res["fleetwise"] = {"median": med, "runs": [{k: r[k] for k in ("t_simulate_s", "t_build_workload_s", "t_process_s", "peak_rss_mib", "phases_s")} for r in runs]}
    fw_rate = med["n"] / med["t_simulate_s"]
    res["speed"] = {"fleetwise_req_per_s": fw_rate}
    sim_per_100k = med["t_simulate_s"] * 100_000 / med["n"]
    res["targets"] = {"sim_s_per_100k": sim_per_100k, "under_5s_per_100k": sim_per_100k < 5.0}
    if med["rejected"] or med["unfinished"]:
        print(f"  WARNING: {med['rejected']} rejected, {med['unfinished']} unfinished requests", flush=True)

    if not a.skip_memcheck:
        n_mc = a.memcheck_requests or a.requests
        outs = [int(x) for x in a.memcheck_outputs.split(",")]
        mruns = []
        print(f"memory check: {n_mc:,} requests, prompt 512, outputs {outs}", flush=True)
        for o in outs:
            sc = scenario_dict(n_mc, a.replicas, total_qps, a.seed, a.router, {"kind": "constant", "prompt": 512, "output": o})
            r = run_child({"scenario": sc}, pin)
            mruns.append({"output": o, **{k: r[k] for k in ("decode_tokens", "t_simulate_s", "peak_rss_mib", "rss_after_import_mib", "rss_after_build_mib", "events", "preemptions", "rejected", "finished", "duration_s")}})
            print(f"  output {o}: {r['decode_tokens']:,} decode tokens, simulate {r['t_simulate_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['events']:,} events", flush=True)
        growth = mruns[-1]["peak_rss_mib"] - mruns[0]["peak_rss_mib"]
        res["memory_check"] = {
            "requests": n_mc,
            "prompt": 512,
            "runs": mruns,
            "rss_growth_mib": growth,
            "decode_growth": mruns[-1]["decode_tokens"] / mruns[0]["decode_tokens"],
            # "flat": under 5% of the smaller peak or 10 MiB, whichever is larger
            "flat": growth < max(10.0, 0.05 * mruns[0]["peak_rss_mib"]),
        }

    vidur = None
    if a.reuse_vidur:
        prev = json.loads(Path(a.reuse_vidur).read_text())
        vidur = prev.get("vidur")
        if vidur:
            pc = prev["config"]
            if (pc["replicas"], pc["total_qps"], pc["seed"]) != (a.replicas, total_qps, a.seed):
                sys.exit("--reuse-vidur: the earlier result has a different replicas/QPS/seed")
            vidur = dict(vidur, reused_from=str(a.reuse_vidur))
    elif not a.skip_vidur:
        nv = a.vidur_requests or a.requests
        tmp = None
        outdir = Path(a.vidur_outdir) if a.vidur_outdir else Path(tmp := tempfile.mkdtemp(prefix="fleetwise-vidur-bench-"))
        print(f"Vidur: {nv:,} requests (output in {outdir}) ...", flush=True)
        try:
            vidur = run_vidur(nv, a.replicas, total_qps, scenario, outdir, pin, a.vidur_timeout)
        except Exception as err:  # noqa: BLE001 - reported in the results
            vidur = {"error": str(err)}
        finally:
            if tmp and vidur and "error" not in vidur:
                shutil.rmtree(tmp, ignore_errors=True)
                vidur["log"] = vidur["metrics_file"] = "(temporary, removed)"
        print(f"  {json.dumps({k: vidur.get(k) for k in ('wall_s', 'startup_s', 'event_loop_s', 'output_s', 'peak_rss_mib', 'error')})}", flush=True)
    if vidur and "error" not in vidur:
        res["vidur"] = vidur
        scale = a.requests / vidur["n"]
        if scale != 1:
            vidur["extrapolated"] = {
                "requests": a.requests,
                "wall_s": vidur["startup_s"] + (vidur["wall_s"] - vidur["startup_s"]) * scale,
                "wall_excl_startup_s": vidur["wall_excl_startup_s"] * scale,
                "method": "per-request linear: startup once, the rest scaled by the request count",
            }
        v_rate = vidur["n"] / vidur["wall_excl_startup_s"]
        res["speed"]["vidur_req_per_s"] = v_rate
        res["speed"]["vidur_req_per_s_whole_process"] = vidur["n"] / vidur["wall_s"]
        res["speed"]["ratio"] = fw_rate / v_rate
        fw_whole = med["n"] / med["t_process_s"]
        v_whole_100k = vidur.get("extrapolated", {}).get("wall_s", vidur["wall_s"])
        res["speed"]["ratio_whole_process"] = v_whole_100k / (med["t_process_s"] * a.requests / med["n"])
        res["speed"]["fleetwise_req_per_s_whole_process"] = fw_whole
        res["targets"]["ratio_ge_100"] = res["speed"]["ratio"] >= 100
    elif vidur:
        res["vidur"] = vidur

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
