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

This script is the command line; the scenario, the two simulators' runs and the report are in the
package ``benchmarks/vs_vidur/`` next to it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from vs_vidur import scenario as bench_scenario
from vs_vidur.fleetwise_run import child, median_run, run_child
from vs_vidur.report import markdown
from vs_vidur.scenario import HERE, LAYOUTS, scenario_dict, sharegpt_lengths
from vs_vidur.vidur_run import run_vidur


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
    bench_scenario.use_layout(a.parallelism)
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

    print(f"fleetwise: {a.requests:,} requests, {a.replicas} x {bench_scenario.LAYOUT} Llama-2-70B/A100, {total_qps:g} req/s", flush=True)
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
    med = median_run(runs)
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
