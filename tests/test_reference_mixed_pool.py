"""Differential test of Splitwise's mixed pool: the Rust core against the SimPy reference
(``tests/reference/mixed_pool.py``, written from the rules in docs/seed-systems.md).

The cases are the random disaggregated ones of ``test_reference.py`` (one prefill instance, one or
two decode instances with small KV caches, slow shared NICs, tied arrivals, requests pinned to
iteration ends, rejections) with a mixed pool whose thresholds are low enough to trigger: prompts
lent to token instances, decodes kept on the prompt instance, or both; some cases send KV layer
by layer. Every request's instance, status, times, preemptions and mixed-pool service, and every
instance's role switches and time in the mixed pool must agree exactly.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import fleetwise
from reference import simulate_reference
from reference_cases import COLUMNS, make_disagg_scenario

MIXED_SEEDS = range(12)


def mixed_case(seed: int) -> tuple[dict, object]:
    """Random case ``seed`` with a mixed pool: prompt threshold only, token threshold only, or both."""
    scenario, workload = make_disagg_scenario(seed)
    rng = np.random.default_rng(9000 + seed)
    prompt = int(rng.integers(150, 1200))
    token = int(rng.integers(100, 1500))
    scenario["cluster"]["mixed_pool"] = [
        {"prompt_overload_tokens": prompt},
        {"token_overload_tokens": token},
        {"prompt_overload_tokens": prompt, "token_overload_tokens": token},
    ][seed % 3]
    if seed % 4 == 1:
        scenario["cluster"]["pools"][0].update(kv_transfer="layerwise", kv_transfer_latency=1e-4)
    return scenario, workload


def test_mixed_pool_matches_simpy_reference():
    """Every case agrees exactly with the reference; together they lend prompts to token
    instances, keep decodes on the prompt instance, switch instances in and out of the mixed pool
    more than once, and still reject and preempt."""
    totals = {"prompt_on_token_instance": 0, "decode_on_prompt_instance": 0, "switches": 0, "repeat_switches": 0, "rejected": 0}
    for seed in MIXED_SEEDS:
        scenario, workload = mixed_case(seed)
        res = fleetwise.simulate(scenario, workload=workload)
        core = res.requests.with_columns(
            pl.when(pl.col("status") == "finished").then(pl.col("preemptions")).otherwise(None).alias("preemptions")
        ).select([*COLUMNS, "mixed_pool"])
        stats: dict = {}
        ref = simulate_reference(scenario, workload, mixed_pool_stats=stats).select([*COLUMNS, "mixed_pool"])
        if not ref.equals(core):
            diff = ref.join(core, on="request_id", suffix="_core").filter(
                pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_core")) for c in [*COLUMNS[1:], "mixed_pool"])
            )
            pytest.fail(f"mixed pool seed {seed}: core and reference differ on {diff.height} requests:\n{diff.head(5)}")
        inst = res.instances
        core_stats = {i: (s, round(t * 1e9)) for i, s, t in zip(inst["instance"], inst["mixed_pool_role_switches"], inst["mixed_pool_s"])}
        assert {i: s for i, (s, _) in core_stats.items()} == {i: s for i, (s, _) in stats.items()}, seed
        for i, (_, ns) in stats.items():
            assert abs(core_stats[i][1] - ns) <= 1, (seed, i, core_stats[i], ns)  # ns through float seconds
        for kind in ("prompt_on_token_instance", "decode_on_prompt_instance"):
            totals[kind] += int((ref["mixed_pool"] == kind).sum())
        totals["switches"] += sum(s for s, _ in stats.values())
        totals["repeat_switches"] += sum(1 for s, _ in stats.values() if s > 1)
        totals["rejected"] += int((ref["status"] == "rejected").sum())
    assert all(v > 0 for v in totals.values()), totals
