"""``fleetwise run``: simulate one scenario, print its summary, write its results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from fleetwise.cli.app import app, out, err
from fleetwise.cli.options import float_option
from fleetwise.cli.format import _num, _summary_table, _default_dir, _length_rows_line, _trace_rows_line, error_text


def _error_bars_line(bars: dict | None) -> str:
    """One line with each latency's p50 and p90 range within the profile's calibration error."""
    if bars is None:
        return "error bars: the engine profile records no calibration residuals; no band"
    ms = lambda v: f"{v * 1e3:.1f}"  # noqa: E731
    parts = [f"{m[:-2].upper()} p50 [{ms(bars[m]['p50'][0])}, {ms(bars[m]['p50'][1])}] p90 [{ms(bars[m]['p90'][0])}, {ms(bars[m]['p90'][1])}] ms"
             for m in ("ttft_s", "tpot_s", "e2e_s") if bars.get(m) and bars[m]["p50"] is not None]
    if "slo_attainment" in bars:
        lo, hi = bars["slo_attainment"]
        parts.append(f"SLO attainment [{lo:.1%}, {hi:.1%}]")
    return f"error bars (iteration times within ±{bars['relative_error']:.1%}, the profile's calibration error): " + "; ".join(parts)


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="Scenario YAML file."),
    set_: List[str] = typer.Option([], "--set", help="Override a value: PATH=VALUE (e.g. cluster.pools.0.count=8). Repeatable."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for requests.parquet and summary.json (default runs/<name>)."),
    iterations: bool = typer.Option(False, "--iterations", help="Also write one row per iteration (iterations.parquet)."),
    policy_timeout: float = float_option(60.0, "--policy-timeout", min=0.001, max=86400.0, help="Most seconds one call into a Python policy may take (up to a day); a longer call stops the run (exit 2)."),
    error_bars: bool = typer.Option(False, "--error-bars", help="Also run with iteration times x (1 -/+ r), r the engine profile's calibration error, and report each latency's range (docs/engines.md)."),
    vllm_bench_detailed: bool = typer.Option(False, "--vllm-bench-detailed", help="Add vllm bench serve's --save-detailed per-request lists to vllm-bench.json."),
) -> None:
    """Simulate SCENARIO, print a summary table and write the results (vllm-bench.json: the same in
    vllm bench serve's result format)."""
    from fleetwise.config.load import load_scenario
    from rich.markup import escape

    from fleetwise.errors import FleetwiseError
    from fleetwise.result import check_output_dir, write_stopped
    from fleetwise.simulate import simulate

    sc = load_scenario(scenario, set_)
    out_dir = check_output_dir(output or _default_dir("runs", sc.name))  # a bad -o fails before simulating
    bars = None
    try:
        if error_bars:
            from fleetwise.error_bars import with_error_bars

            result, bars = with_error_bars(sc, lambda s: simulate(s, record_iterations=iterations, progress=True, policy_timeout=policy_timeout))
            if bars is not None:
                result.summary["error_bars"] = bars
        else:
            result = simulate(sc, record_iterations=iterations, progress=True, policy_timeout=policy_timeout)
    except KeyboardInterrupt:
        err.print("interrupted: the simulation was cancelled; nothing was written")
        sys.exit(130)
    except FleetwiseError as e:
        kept = getattr(e, "requests", None)
        if kept is None:
            raise
        d = write_stopped(out_dir, kept, sc.name, f"{type(e).__name__}: {e}")
        err.print(f"[bold red]error:[/] {escape(error_text(e))}", highlight=False, markup=True)
        err.print(f"the run stopped: {int((kept['status'] == 'finished').sum())} of {kept.height} requests had finished; they are written to {d}/ (the rest have status 'unfinished')", highlight=False, markup=False)
        sys.exit(2)
    s = result.summary
    out.print(_summary_table(s))
    out.print("engine: " + ", ".join(f"{pool} {eng}" for pool, eng in s["engines"].items()) + " (docs/engines.md says what each profile was measured on)", highlight=False)
    if error_bars:
        out.print(_error_bars_line(bars), highlight=False)
    if "trace_rows" in s:
        out.print(_trace_rows_line(s["trace_rows"]))
    if "length_rows" in s:
        out.print(_length_rows_line(s["length_rows"], sc.workload.lengths.path), highlight=False, markup=False)
    tp = s["throughput"]
    out.print(f"throughput: {tp['requests_per_s']:.2f} req/s, {tp['output_tokens_per_s']:.0f} output tok/s; preemptions: {s['preemptions']}; rejected: {s['rejected']}")
    if "energy" in s and s["energy"]["joules"] > 0:
        e, c = s["energy"], s["cost"]
        out.print(f"energy: {e['joules'] / 3.6e6:.2f} kWh, {_num(e['joules_per_output_token'], '.2f')} J/output token, {_num(e['average_watts_per_gpu'], '.0f')} W/GPU; cost: ${c['dollars']:.2f} ({_num(c['dollars_per_million_output_tokens'], '.2f')} $/M output tokens)")
    if "experts" in s:
        x = s["experts"]
        hit = "n/a (all in HBM)" if x["hit_rate"] is None else f"{x['hit_rate']:.1%}"
        out.print(f"experts: hit rate {hit}, {x['fetched_bytes_per_token'] / 1e6:.1f} MB fetched/token, stall {x['stall_ms_per_iteration']:.2f} ms/iteration, {x['experts_activated_per_iteration']:.1f} experts activated/iteration, HBM {x['hbm_expert_gib_per_gpu']:.1f} GiB/GPU ({x['hbm_saved_gib_per_gpu']:.1f} GiB saved)")
    if "mixed_pool" in s:
        m = s["mixed_pool"]
        out.print(f"mixed pool: {m['prompts_on_token_instances']} prompts on token instances, {m['decodes_on_prompt_instances']} decodes on prompt instances, {m['role_switches']} role switches, " + ", ".join(f"{pool} {sec:.1f} instance-s mixed" for pool, sec in m["mixed_instance_seconds"].items()), highlight=False)
    if "speculative" in s:
        x = s["speculative"]
        per = ", ".join(_num(a, ".2f") for a in x["per_position_acceptance_rate"])
        by_class = "" if "per_class_acceptance_rate" not in x else ", by class [" + ", ".join(_num(a, ".1%") for a in x["per_class_acceptance_rate"]) + "]"
        out.print(f"speculative decoding: acceptance rate {_num(x['acceptance_rate'], '.1%')}, mean acceptance length {_num(x['mean_acceptance_length'], '.2f')} tokens/step, per position [{per}]{by_class}, {x['num_drafts']} drafts")
    if "slo" in s and s["slo"]["attainment"] is not None:
        out.print(f"SLO attainment {s['slo']['targets']}: {s['slo']['attainment']:.1%}")
    for r in s.get("rejections", []):
        out.print(f"rejected {r['count']} request(s), e.g.: {escape(r['reason'])}", highlight=False)
    d = result.write(out_dir, vllm_bench_detailed=vllm_bench_detailed)
    out.print(f"results written to {d}/")
    if s["finished"] == 0:
        why = f"; most often: {s['rejections'][0]['reason']}" if s.get("rejections") else ""
        message = f"no request finished ({s['rejected']} of {s['requests']} rejected{why}): there is no latency to report"
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        sys.exit(2)
