"""Latency metrics and the run summary, defined as vLLM's ``bench serve`` defines them.

TTFT = first token - arrival; E2E = last token - arrival; TPOT = (E2E - TTFT) / (output - 1) for
requests with more than one output token; ITL = gaps between consecutive tokens of a request
(percentiles from the core's streaming sketch, relative error 0.5%).

A metric that has no value (no request finished, no token generated) is ``None`` in the summary,
``null`` in summary.json: never NaN, which is not JSON.
"""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl

PERCENTILES = (50, 90, 99)


def distribution(values: np.ndarray) -> dict[str, float | None]:
    """Mean and p50/p90/p99 of ``values`` (None when empty)."""
    if len(values) == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    qs = np.percentile(values, PERCENTILES)
    return {"mean": float(np.mean(values)), **{f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)}}


def slo_attainment(requests: pl.DataFrame, slo) -> dict | None:
    """Fraction of all requests that finished meeting every target of ``slo`` (rejected ones miss
    it); None when there is no SLO, attainment None when it has no target or there are no requests."""
    if slo is None:
        return None
    done = requests.filter(pl.col("status") == "finished")
    ok = pl.lit(True)
    targets = {}
    for name, col in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2e", "e2e_s")):
        limit = getattr(slo, name)
        if limit is not None:
            targets[name] = limit
            ok = ok & (pl.col(col).fill_null(0.0) <= limit)
    if not targets or requests.height == 0:
        return {"targets": targets, "attainment": None}
    if done.height == 0:
        return {"targets": targets, "attainment": 0.0}
    met = done.select(ok.alias("ok"))["ok"].sum()
    return {"targets": targets, "attainment": met / requests.height}


def energy_and_cost(requests: pl.DataFrame, instances: pl.DataFrame, wall_seconds: float) -> dict:
    """Energy (all GPUs, busy and idle, over the run) and rental cost, per token.

    ``instances`` needs columns gpus, energy_joules and price_per_hour; ``wall_seconds`` is the
    length of the run (GPUs are paid for the whole of it).
    """
    done = requests.filter(pl.col("status") == "finished")
    out_tok = int(done["output_tokens"].sum()) if done.height else 0
    all_tok = out_tok + (int(done["prompt_tokens"].sum()) if done.height else 0)
    joules = float(instances["energy_joules"].sum())
    gpus = int(instances["gpus"].sum())
    gpu_hours = gpus * wall_seconds / 3600.0
    dollars = float((instances["gpus"] * instances["price_per_hour"]).sum()) * wall_seconds / 3600.0
    per = lambda x, n: x / n if n else None
    return {
        "energy": {
            "joules": joules,
            "joules_per_output_token": per(joules, out_tok),
            "average_watts_per_gpu": per(joules, gpus * wall_seconds),
        },
        "cost": {
            "gpu_hours": gpu_hours,
            "dollars": dollars,
            "dollars_per_million_output_tokens": per(dollars * 1e6, out_tok),
            "dollars_per_million_tokens": per(dollars * 1e6, all_tok),
        },
    }


def expert_summary(instances: pl.DataFrame) -> dict | None:
    """Mixture-of-experts counters over all instances with expert settings (bytes are per GPU)."""
    if "expert_lookups" not in instances.columns:
        return None
    x = instances.filter(pl.col("expert_iterations").is_not_null())
    if x.height == 0:
        return None

    def total(col: str) -> float:
        return float(x[col].sum())

    looked, iters, tokens = total("expert_lookups"), total("expert_iterations"), total("expert_tokens")
    fetched = total("expert_demand_bytes") + total("expert_prefetch_bytes")
    return {
        "hit_rate": (total("expert_hits") + total("expert_prefetch_hits")) / looked if looked else None,
        "cache_hit_rate": total("expert_hits") / looked if looked else None,
        "prefetch_hit_rate": total("expert_prefetch_hits") / looked if looked else None,
        "fetched_bytes_per_token": fetched / tokens if tokens else 0.0,
        "wasted_prefetch_bytes": total("expert_wasted_prefetch_bytes"),
        "stall_ms_per_iteration": total("expert_stall_ns") / iters * 1e-6 if iters else 0.0,
        "experts_activated_per_iteration": total("expert_activated") / iters if iters else 0.0,
        "load_imbalance": total("expert_imbalance_sum") / total("expert_imbalance_layers") if total("expert_imbalance_layers") else None,
        "hbm_expert_gib_per_gpu": float(x["expert_hbm_bytes"].mean()) / 2**30,
        "hbm_saved_gib_per_gpu": float(x["expert_hbm_saved_bytes"].mean()) / 2**30,
    }


def rejection_reasons(reasons: list[str | None], limit: int = 5) -> list[dict]:
    """The most common reasons requests were rejected: ``[{"reason", "count"}]``, most frequent
    first (reasons differing only in their numbers count together; the first one seen is shown)."""
    groups: dict[str, list] = {}
    for r in reasons:
        if r is None:
            continue
        g = groups.setdefault(re.sub(r"\d+", "N", r), [r, 0])
        g[1] += 1
    ranked = sorted(groups.values(), key=lambda g: -g[1])
    return [{"reason": r, "count": n} for r, n in ranked[:limit]]


def _json_safe(x):
    """``x`` with every non-finite float replaced by None (summary.json is strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summarize(requests: pl.DataFrame, itl: dict, slo=None, instances: pl.DataFrame | None = None, wall_seconds: float = 0.0) -> dict:
    """The run summary: counts, throughput, latency distributions, SLO attainment, energy, cost."""
    done = requests.filter(pl.col("status") == "finished")
    n_done = done.height
    first_arrival = requests["arrival_ns"].min() if requests.height else 0
    last_done = done["completion_ns"].max() if n_done else first_arrival
    span = max((last_done - first_arrival) * 1e-9, 1e-12) if n_done else 0.0
    out_tokens = int(done["output_tokens"].sum()) if n_done else 0
    in_tokens = int(done["prompt_tokens"].sum()) if n_done else 0
    summary = {
        "requests": requests.height,
        "finished": n_done,
        "rejected": int((requests["status"] == "rejected").sum()),
        "duration_s": span,
        "throughput": {
            "requests_per_s": n_done / span if span else 0.0,
            "output_tokens_per_s": out_tokens / span if span else 0.0,
            "total_tokens_per_s": (in_tokens + out_tokens) / span if span else 0.0,
        },
        "ttft_s": distribution(done["ttft_s"].to_numpy()),
        "tpot_s": distribution(done["tpot_s"].drop_nulls().to_numpy()),
        "itl_s": {"mean": itl["mean"], "p50": itl["p50"], "p90": itl["p90"], "p99": itl["p99"]},
        "e2e_s": distribution(done["e2e_s"].to_numpy()),
        "preemptions": int(requests["preemptions"].sum()),
    }
    if instances is not None and wall_seconds > 0:
        summary.update(energy_and_cost(requests, instances, wall_seconds))
    if instances is not None and "prefix_lookup_tokens" in instances.columns and int(instances["prefix_lookup_tokens"].sum()) > 0:
        hits, looked = int(instances["prefix_hit_tokens"].sum()), int(instances["prefix_lookup_tokens"].sum())
        summary["prefix_cache"] = {"hit_tokens": hits, "lookup_tokens": looked, "hit_rate": hits / looked}
    experts = expert_summary(instances) if instances is not None else None
    if experts is not None:
        summary["experts"] = experts
    slo_part = slo_attainment(requests, slo)
    if slo_part is not None:
        summary["slo"] = slo_part
    if "reject_reason" in requests.columns and summary["rejected"]:
        summary["rejections"] = rejection_reasons(requests["reject_reason"].to_list())
    return _json_safe(summary)
