"""Built-in Rust policies exposed as Python objects make the same decisions the simulator makes."""

from __future__ import annotations

import json

import polars as pl

import fleetwise
from fleetwise import _core

from conftest import small_scenario


def test_round_robin_router_object():
    r = _core.Router(json.dumps({"kind": "round-robin"}), 3)
    assert [r.route(10, [0, 0, 0]) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_outstanding_tokens_router_object():
    r = _core.Router(json.dumps({"kind": "least-outstanding-tokens"}), 3)
    assert r.route(10, [500, 20, 300]) == 1
    assert r.route(10, [20, 20, 300]) == 0


def test_round_robin_in_simulation_alternates_instances():
    sc = small_scenario()
    sc["cluster"]["router"] = {"kind": "round-robin"}
    sc["cluster"]["pools"][0]["count"] = 3
    inst = fleetwise.simulate(sc).requests["instance"].to_list()
    assert inst == [i % 3 for i in range(len(inst))]


def test_least_outstanding_tokens_beats_round_robin_on_alternating_lengths():
    # Long and short prompts alternate: round-robin sends every long prompt to instance 0, while
    # least-outstanding-tokens spreads the tokens and so the queueing.
    import numpy as np

    from fleetwise.workload import Workload

    n = 400
    wl = Workload(
        arrival_ns=np.arange(n, dtype=np.int64) * 40_000_000,
        prompt_tokens=np.where(np.arange(n) % 2 == 0, 6000, 100).astype(np.int64),
        output_tokens=np.full(n, 150, dtype=np.int64),
    )

    def run(kind):
        sc = small_scenario()
        sc["cluster"]["router"] = {"kind": kind}
        return fleetwise.simulate(sc, workload=wl)

    rr, lot = run("round-robin"), run("least-outstanding-tokens")
    rr_split = rr.requests.group_by("instance").agg(pl.col("prompt_tokens").sum()).sort("instance")["prompt_tokens"].to_list()
    lot_split = lot.requests.group_by("instance").agg(pl.col("prompt_tokens").sum()).sort("instance")["prompt_tokens"].to_list()
    assert rr_split == [200 * 6000, 200 * 100]
    assert max(lot_split) / min(lot_split) < 1.5
    assert lot.summary["ttft_s"]["p90"] < 0.5 * rr.summary["ttft_s"]["p90"]
    assert lot.summary["e2e_s"]["mean"] < rr.summary["e2e_s"]["mean"]
