"""The Markdown report of a benchmark result (the dict the entry script writes as JSON)."""

from __future__ import annotations

from . import scenario
from .scenario import MAX_BATCHED_TOKENS, MAX_NUM_SEQS, MAX_TOTAL_TOKENS


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
    """The report: setup, speed and memory, the memory check and (when Vidur ran) the latencies."""
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
        f"Models: fleetwise Llama-2-70B on 4 x A100-80GB-SXM per replica as {scenario.LAYOUT}, "
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
