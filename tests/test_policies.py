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


def _sched(num_blocks, max_seqs=8, max_tokens=2048, block_size=16, watermark=0):
    from fleetwise.policy.builtin import make_scheduler

    return make_scheduler({"kind": "vllm", "max_num_seqs": max_seqs, "max_num_batched_tokens": max_tokens}, num_blocks, block_size, watermark)


def test_vllm_scheduler_prefills_first_within_token_budget():
    s = _sched(1000, max_tokens=1000)
    for rid, p in ((10, 400), (11, 500), (12, 300)):
        s.add(rid, p, 5)
    assert s.schedule() == [(10, 400), (11, 500)]  # 300 more would pass 1000
    s.complete()
    assert s.schedule() == [(12, 300)]  # the waiting prefill goes before the decodes
    s.complete()
    assert s.schedule() == [(10, 1), (11, 1), (12, 1)]
    assert s.used_blocks() == 26 + 32 + 19  # ceil(401/16) + ceil(501/16) + ceil(301/16)


def test_vllm_scheduler_preempts_newest_and_requeues_it_first():
    # Two 16-token prompts fill 2 of 3 blocks; at the first decode both need a second block and
    # only one is free: request 1 gets it, request 2 (newest) preempts itself.
    s = _sched(3)
    s.add(1, 16, 10)
    s.add(2, 16, 10)
    assert s.schedule() == [(1, 16), (2, 16)]
    assert s.complete() == [(1, False), (2, False)]
    assert s.schedule() == [(1, 1)]
    assert s.preempted() == 1
    assert s.waiting() == [2] and s.running() == [1]
    assert s.used_blocks() == 2
    s.complete()
    # Request 2 must recompute 17 tokens (2 blocks); only 1 is free, so request 1 decodes alone.
    assert s.schedule() == [(1, 1)]
    # Run request 1 to completion, then request 2 is re-admitted with its prompt and its token.
    while s.running() == [1]:
        s.complete()
        batch = s.schedule()
    assert batch == [(2, 17)]


def test_scheduler_object_reproduces_simulator_iterations():
    """Driving the Rust scheduler object by hand gives the simulator's batches, step for step."""
    import numpy as np

    from fleetwise.policy.builtin import make_scheduler
    from fleetwise.workload import Workload

    rng = np.random.default_rng(5)
    n = 60
    prompts, outputs = rng.integers(50, 1500, n), rng.integers(1, 200, n)
    cfg = {"kind": "vllm", "max_num_seqs": 16, "max_num_batched_tokens": 4096}
    sc = small_scenario()
    sc["cluster"]["pools"][0].update(count=1, scheduler=cfg)
    wl = Workload(arrival_ns=np.zeros(n, dtype=np.int64), prompt_tokens=prompts.astype(np.int64), output_tokens=outputs.astype(np.int64))
    r = fleetwise.simulate(sc, workload=wl, record_iterations=True)
    s = make_scheduler(cfg, int(r.instances["num_blocks"][0]), 16)
    for i in range(n):
        s.add(i, int(prompts[i]), int(outputs[i]))
    steps = []
    while batch := s.schedule():
        steps.append((sum(t for _, t in batch if t > 1), sum(1 for _, t in batch if t == 1)))
        s.complete()
    sim = list(zip(r.iterations["prefill_tokens"].to_list(), r.iterations["decode_seqs"].to_list()))
    assert steps == sim
