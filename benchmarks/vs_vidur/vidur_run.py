"""Vidur on fleetwise's requests: the trace_replay CSV, the run (pinned, phases time-stamped from its
log, peak RSS from GNU time) and its latencies from ``request_metrics.csv``."""

from __future__ import annotations

import glob
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

from .scenario import MAX_TOTAL_TOKENS, RUN_VIDUR


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
    """Runs Vidur on the first ``n`` requests of ``scenario`` in ``outdir``; returns wall time, phases,
    peak RSS and latencies. Raises RuntimeError when Vidur fails or runs past ``timeout`` seconds."""
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
