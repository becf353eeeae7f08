"""A run's results in ``vllm bench serve``'s result format, so that a simulated run and a measured
one compare with the same script.

The flat keys are vLLM's (milliseconds): ``mean_/median_/std_/p{N}_{ttft,tpot,itl,e2el}_ms``, with
``duration``, ``completed``, ``failed``, ``total_input_tokens``, ``total_output_tokens``,
``request_throughput``, ``output_throughput``, ``total_token_throughput`` and ``request_goodput``.
``duration`` is vLLM's ``benchmark_duration`` (``benchmark_duration_s``): from the benchmark's start
(simulated time 0) to the return of the last request, failed ones included; every per-second rate
here divides by it (docs/vllm-bench.md).
``request_goodput`` has vLLM's meaning: completed requests per second that met every SLO given
(``--goodput ttft:MS tpot:MS e2el:MS``; a request with one output token counts a TPOT of 0), at
this run's load — not DistServe's goodput, the highest rate at which a target fraction meets the
SLOs (``fleetwise goodput``). ``detailed`` adds vLLM's ``--save-detailed`` per-request lists
(``input_lens``, ``output_lens``, ``ttfts``, ``latencies``, ``start_times``, ``errors``); the
simulator keeps no per-token times, so ``itls`` is absent and the ITL figures come from its
streaming sketch (mean exact, percentiles within 0.5%, no standard deviation: ``std_itl_ms`` is
None).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from fleetwise.metrics.slo import SLO_COLUMNS
from fleetwise.metrics.table_reads import FINISHED, Table, aggregates, finished_column

DEFAULT_PERCENTILES = (99.0,)
"""vLLM's default ``--metric-percentiles``."""


def _stats(name: str, values: np.ndarray, percentiles) -> dict:
    """vLLM's mean/median/std/pN keys of ``values`` (seconds) in ms; zeros when empty, as vLLM.
    Reorders ``values`` (the caller's array of its own): the mean and standard deviation are
    taken first, in its order; the median and percentiles partition it in place (no copy of a
    10M-request column), their values independent of the order."""
    v = values if len(values) else np.zeros(1)
    mean, std = float(np.mean(v)), float(np.std(v))
    out = {f"mean_{name}_ms": mean * 1e3, f"median_{name}_ms": float(np.median(v, overwrite_input=True)) * 1e3, f"std_{name}_ms": std * 1e3}
    for p in percentiles:
        out[f"p{_word(p)}_{name}_ms"] = float(np.percentile(v, p, overwrite_input=True)) * 1e3
    return out


def _word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def benchmark_duration_s(requests: Table) -> float:
    """vLLM's ``benchmark_duration``, seconds: from the start of the benchmark (simulated time 0,
    before the first request is sent, as ``vllm bench serve`` waits out the first inter-arrival
    gap) to the moment the last request returned, whether it finished or failed. A finished
    request returns at its completion, a rejected one at its arrival (it is refused on arrival);
    0.0 when none returned. Not the summary's ``duration_s`` (first arrival to last completion)."""
    ends = aggregates(requests, done=pl.col("completion_ns").filter(FINISHED).max(),
                      rejected=pl.col("arrival_ns").filter(pl.col("status") == "rejected").max())
    last = max((int(t) for t in ends.values() if t is not None), default=0)
    return last / 1e9


def vllm_bench_result(requests: Table, summary: dict, percentiles=DEFAULT_PERCENTILES, goodput_ms: dict | None = None,
                      detailed: bool = False) -> dict:
    """The run as ``vllm bench serve --save-result`` writes it: ``requests`` and ``summary`` of a
    ``Result``; ``goodput_ms`` maps ``ttft``/``tpot``/``e2el`` to SLOs in ms (None: the scenario's
    SLO, if any, else no goodput; its other targets, such as ``scheduling_delay``, which vLLM's
    ``--goodput`` has no key for, count too, so that ``request_goodput`` counts the requests the
    summary's does). Rates are per second of ``benchmark_duration_s``, not of the summary's span."""
    duration = benchmark_duration_s(requests)
    beyond_vllm: dict[str, float] = {}  # the scenario's targets vLLM's --goodput cannot name
    if goodput_ms is None and summary.get("slo"):
        targets = summary["slo"]["targets"]
        goodput_ms = {k2: targets[k1] * 1e3 for k1, k2 in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el")) if k1 in targets}
        beyond_vllm = {k: v for k, v in targets.items() if k not in ("ttft", "tpot", "e2e")}
    counts = aggregates(requests, n=pl.len(), done=FINISHED.sum(), prompt=pl.col("prompt_tokens").filter(FINISHED).sum(),
                        output=pl.col("output_tokens").filter(FINISHED).sum())
    n_done = int(counts["done"])
    # One latency at a time (a 10M-request run holds one column, not four).
    ok = np.ones(n_done, dtype=bool) if goodput_ms or beyond_vllm else None
    for name, limit in beyond_vllm.items():  # e.g. scheduling_delay: as the summary's request_goodput counts it
        ok &= np.nan_to_num(finished_column(requests, SLO_COLUMNS[name])) <= limit
    several = finished_column(requests, "output_tokens") > 1  # TPOT: requests of more than one output token
    stats: dict[str, dict] = {}
    for key, column in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2el", "e2e_s")):
        values = finished_column(requests, column)
        if key == "tpot":  # 0 for the others in the goodput (vLLM), left out of the statistics
            np.nan_to_num(values, copy=False)
            values[~several] = 0.0
        if ok is not None and key in (goodput_ms or {}):
            ok &= values <= goodput_ms[key] / 1e3
        if key == "tpot":
            values = values[several]  # (the whole column released: one copy at a time)
        stats[key] = _stats(key, values, percentiles)
        del values
    good = None if ok is None else (int(ok.sum()) / duration if duration else 0.0)
    total_in, total_out = int(counts["prompt"] or 0), int(counts["output"] or 0)
    result = {
        "duration": duration,
        "completed": n_done,
        "failed": counts["n"] - n_done,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": n_done / duration if duration else 0.0,
        "request_goodput": good,
        "output_throughput": total_out / duration if duration else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration else 0.0,
    }
    result.update(stats["ttft"])
    result.update(stats["tpot"])
    itl = summary["itl_s"]
    no_gaps = itl.get("mean") is None  # every output one token: 0 ms, as vLLM's np.mean(itls or 0)

    def gap_ms(seconds: float | None) -> float | None:
        return 0.0 if no_gaps else _ms(seconds)

    result.update({"mean_itl_ms": gap_ms(itl.get("mean")), "median_itl_ms": gap_ms(itl.get("p50")), "std_itl_ms": None})
    for p in percentiles:
        key = f"p{_word(p)}"
        result[f"{key}_itl_ms"] = gap_ms(itl.get(key))
    result.update(stats["e2el"])
    if detailed:
        requests = requests.lazy().select("arrival_ns", "prompt_tokens", "generated_tokens", "ttft_s", "e2e_s", "status").collect()
        first = requests["arrival_ns"].min() if requests.height else 0
        fin = requests["status"] == "finished"
        result.update({
            "input_lens": requests["prompt_tokens"].to_list(),
            "output_lens": requests["generated_tokens"].to_list(),
            "ttfts": requests["ttft_s"].fill_null(0.0).to_list(),
            "latencies": requests["e2e_s"].fill_null(0.0).to_list(),
            "start_times": ((requests["arrival_ns"] - first) * 1e-9).to_list(),
            "errors": ["" if f else str(s) for f, s in zip(fin.to_list(), requests["status"].to_list())],
        })
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
