"""Energy and rental cost of a run, per token."""

from __future__ import annotations

from typing import TypedDict

import polars as pl

from fleetwise.metrics.table_reads import FINISHED, Table, aggregates


class EnergySummary(TypedDict):
    """The summary's ``energy`` entry."""

    joules: float
    joules_per_output_token: float | None
    average_watts_per_gpu: float | None


class CostSummary(TypedDict):
    """The summary's ``cost`` entry."""

    gpu_hours: float
    dollars: float
    dollars_per_million_output_tokens: float | None
    dollars_per_million_tokens: float | None


def energy_and_cost(requests: Table, instances: pl.DataFrame, wall_seconds: float) -> dict:
    """``{"energy": EnergySummary, "cost": CostSummary}``: energy (all GPUs, busy and idle, over the
    run) and rental cost, per token.

    ``instances`` needs columns gpus, energy_joules and price_per_hour; ``wall_seconds`` is the
    length of the run (GPUs are paid for the whole of it).
    """
    sums = aggregates(requests, out=pl.col("output_tokens").filter(FINISHED).sum(), prompt=pl.col("prompt_tokens").filter(FINISHED).sum())
    out_tok = int(sums["out"] or 0)
    all_tok = out_tok + int(sums["prompt"] or 0)
    joules = float(instances["energy_joules"].sum())
    gpus = int(instances["gpus"].sum())
    gpu_hours = gpus * wall_seconds / 3600.0
    dollars = float((instances["gpus"] * instances["price_per_hour"]).sum()) * wall_seconds / 3600.0
    per = lambda x, n: x / n if n else None
    energy: EnergySummary = {
        "joules": joules,
        "joules_per_output_token": per(joules, out_tok),
        "average_watts_per_gpu": per(joules, gpus * wall_seconds),
    }
    cost: CostSummary = {
        "gpu_hours": gpu_hours,
        "dollars": dollars,
        "dollars_per_million_output_tokens": per(dollars * 1e6, out_tok),
        "dollars_per_million_tokens": per(dollars * 1e6, all_tok),
    }
    return {"energy": energy, "cost": cost}
