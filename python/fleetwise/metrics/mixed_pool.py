"""Splitwise's mixed pool in a run's results: which requests it served and how long each machine
spent in it (docs/seed-systems.md)."""

from __future__ import annotations

from typing import TypedDict

import polars as pl

from fleetwise.metrics.table_reads import Table, aggregates, column_names


class MixedPoolSummary(TypedDict):
    """The summary's ``mixed_pool`` entry."""

    prompts_on_token_instances: int
    """Requests whose prompt ran on a decode (token) instance, which then decoded them."""
    decodes_on_prompt_instances: int
    """Requests that kept decoding on the prefill (prompt) instance that ran their prompt."""
    role_switches: int
    """Times an instance joined the mixed pool, over all instances."""
    mixed_instance_seconds: dict[str, float]
    """Instance-seconds spent in the mixed pool, per pool."""


def instance_columns(stats: dict | None) -> dict:
    """An instance's mixed-pool columns (``mixed_pool_role_switches``, ``mixed_pool_s``,
    ``mixed_pool_foreign_requests``) from its core report; none without a mixed pool."""
    if stats is None:
        return {}
    return {"mixed_pool_role_switches": stats["role_switches"], "mixed_pool_s": stats["mixed_ns"] * 1e-9, "mixed_pool_foreign_requests": stats["foreign_requests"]}


def mixed_pool_summary(requests: Table, instances: pl.DataFrame) -> MixedPoolSummary | None:
    """The mixed pool's share of the run; None when the cluster has none."""
    if "mixed_pool" not in column_names(requests) or "mixed_pool_s" not in instances.columns:
        return None
    per_pool = instances.group_by("pool", maintain_order=True).agg(pl.col("mixed_pool_s").sum())
    moved = aggregates(requests, prompts=(pl.col("mixed_pool") == "prompt_on_token_instance").sum(),
                       decodes=(pl.col("mixed_pool") == "decode_on_prompt_instance").sum())
    return {
        "prompts_on_token_instances": int(moved["prompts"]),
        "decodes_on_prompt_instances": int(moved["decodes"]),
        "role_switches": int(instances["mixed_pool_role_switches"].sum()),
        "mixed_instance_seconds": dict(zip(per_pool["pool"].to_list(), per_pool["mixed_pool_s"].to_list())),
    }
