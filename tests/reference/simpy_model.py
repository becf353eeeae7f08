"""A SimPy model of a serving cluster, written from the core's documented rules.

Every instance is a SimPy process that sleeps until woken, then runs iterations back to back until
it has nothing to run; every request is a process that sleeps until its arrival and hands itself to
the router. Only the iteration cost (``CostModel.iteration_ns``) and the KV block count
(``CostModel.memory_plan``) come from the Rust core; queues, admission, KV accounting, preemption,
token accounting and routing are re-implemented here, for the ``vllm``, ``sarathi-serve``,
``sarathi`` and ``orca`` batch schedulers (``VllmPolicy``, ``ChunkedPolicy``, ``OrcaPolicy``).

Time is integer nanoseconds (``simpy.Environment(initial_time=0)`` and integer delays only).

How simultaneous events are ordered. SimPy processes events by ``(time, priority, eid)``, where
``eid`` counts the events scheduled so far, and every event here has NORMAL priority except the
processes' start-up events. All processes are created before the run: instances first, then
requests in request order, so at time 0 their URGENT start-up events run first and every request
schedules its arrival timeout before any other timed event exists. Hence at any instant:

* arrivals run before every wake and iteration end of that instant (their eids are the lowest),
  and among themselves in request order;
* an arrival that finds its instance idle schedules a wake (``Event.succeed``) at the same instant;
  it gets a fresh eid, so it runs after every other arrival of that instant, and simultaneous
  arrivals share the instance's first iteration;
* an iteration that ends exactly when a request arrives sees that request already queued (and a
  router choosing at that instant sees the loads from before the iteration's tokens are applied);
* the next iteration starts in the same callback that ends the previous one.

This is the core's rule (arrivals at time t precede its heap events at t; heap events at equal
times run in push order), reached here through SimPy's own tie-breaking.

Disaggregated clusters (pools with role ``prefill`` and ``decode``) are modelled for the ``vllm``
scheduler with serialized or layer-wise KV transfer (``ReferenceHandoffs``); the KV flows cross a
re-implemented max-min fair network (``reference.network``) whose wake-ups are SimPy timeouts created
exactly when the core pushes its ``Network`` events, so ties keep the core's order. Other schedulers
in disaggregated pools raise ValueError.

Layout: ``requests`` (a request's state, the KV cache), ``schedulers`` (the batch schedulers),
``instance`` (a replica's SimPy process), ``routing``, ``handoffs``, ``network`` and ``mixed_pool``
(disaggregation, Splitwise's mixed pool); this module wires them into one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import simpy

from fleetwise.cluster import core_config
from fleetwise.config.load import as_scenario
from fleetwise.config.scenario import Scenario
from fleetwise.cost import cost_model
from fleetwise.workload import Workload, build_workload
from reference.handoffs import ReferenceHandoffs
from reference.instance import ReferenceInstance
from reference.mixed_pool import ReferenceMixedPool
from reference.requests import ReferenceRequest
from reference.routing import ReferenceRouter


def _arrival(env: simpy.Environment, router: ReferenceRouter, req: ReferenceRequest, decoders: list[ReferenceInstance], mixed: ReferenceMixedPool | None):
    """The life of a request up to its admission: wait for the arrival, route (an overloaded
    prompt pool's mixed pool may take it instead), queue or reject (a prefill instance also
    rejects a request that no decode instance could ever hold)."""
    yield env.timeout(req.arrival)
    inst = router.route(req)
    inst = (mixed.prompt_target(req) if mixed is not None else None) or inst
    req.instance = inst.index
    if inst.rejects(req) or (
        inst.role == "prefill" and not any(d.could_hold(req.prompt + req.output - 1) for d in decoders)
    ):
        req.status = "rejected"
    else:
        inst.enqueue(req)



def simulate_reference(
    scenario: Scenario | dict | str | Path, workload: Workload | None = None, details: bool = False,
    mixed_pool_stats: dict | None = None,
) -> pl.DataFrame:
    """Replays ``workload`` (default: the scenario's own) on ``scenario``'s cluster in SimPy.

    Returns one row per request, in request order: ``request_id``, ``instance`` (the instance it
    was routed to, also for rejected requests; the decode instance for a handed-off request), ``status`` (``finished`` or ``rejected``),
    ``first_token_ns``, ``completion_ns`` and ``preemptions`` (the last three null for rejected
    requests). With ``details``, more columns count, per request, its prefill chunks that did
    not end its prefill (``split_chunks``) and the Orca admissions that stopped at it because its
    reservation's blocks were not free (``reservation_waits``), and, for disaggregated clusters,
    whether its handoff first found no decode room and waited (``handoff_waits``, 0 or 1) and when
    its KV flow started and ended (``transfer_start_ns``, ``transfer_end_ns``; null if never handed
    off). With Splitwise's mixed pool (``cluster.mixed_pool``) a ``mixed_pool`` column says how it
    served each request (``none``, ``prompt_on_token_instance``, ``decode_on_prompt_instance``)
    and ``mixed_pool_stats``, if given, receives each instance's ``(role_switches, mixed_ns)``.
    Raises ValueError for a router other than ``round-robin`` and ``least-outstanding-tokens``, an unknown scheduler or prefix
    caching, and RuntimeError if a request never finishes.
    """
    sc = as_scenario(scenario)
    if workload is None:
        workload = build_workload(sc.workload, sc.seed, Path(sc._base_dir) if sc._base_dir else None)
    config = core_config(sc)

    env = simpy.Environment(initial_time=0)
    instances: list[ReferenceInstance] = []
    for pool in config["pools"]:
        for _ in range(pool["count"]):
            named = None if workload.acceptance_class is None else workload.acceptance_class.to_list()
            instances.append(ReferenceInstance(env, len(instances), pool, config["seed"], named))
    entry = [inst for inst in instances if inst.role != "decode"]
    decoders = [inst for inst in instances if inst.role == "decode"]
    if not entry:
        raise ValueError("every pool has role decode")
    if any(inst.role == "prefill" for inst in instances):
        if not decoders:
            raise ValueError("a pool has role prefill but none has role decode")
        for inst in instances:
            pool = inst.pool
            inst.kv_bytes_per_token = cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], quantization=pool.get("quantization")).kv_bytes_per_token()
        mixed = ReferenceMixedPool(config["mixed_pool"], instances) if config.get("mixed_pool") else None
        ReferenceHandoffs(env, instances, mixed)
    elif config.get("mixed_pool"):
        raise ValueError("a mixed pool needs prefill and decode pools")
    else:
        mixed = None
    router = ReferenceRouter(config["router"]["kind"], entry)
    requests = [
        ReferenceRequest(i, int(a), int(p), int(o))
        for i, (a, p, o) in enumerate(zip(workload.arrival_ns, workload.prompt_tokens, workload.output_tokens))
    ]
    for req in requests:
        env.process(_arrival(env, router, req, decoders, mixed))
    env.run()

    stuck = [r for r in requests if r.status not in ("finished", "rejected")]
    if stuck:
        r = stuck[0]
        raise RuntimeError(f"request {r.index} never finished ({r.status}, {r.generated} of {r.output} tokens)")
    served = [r.status == "finished" for r in requests]
    frame = pl.DataFrame(
        {
            "request_id": np.arange(len(requests), dtype=np.int64),
            "instance": [r.instance for r in requests],
            "status": [r.status for r in requests],
            "first_scheduled_ns": [r.first_scheduled for r in requests],
            "first_token_ns": [r.first_token for r in requests],
            "completion_ns": [r.completion for r in requests],
            "preemptions": [r.preemptions if ok else None for r, ok in zip(requests, served)],
        },
        schema={
            "request_id": pl.Int64, "instance": pl.Int64, "status": pl.String,
            "first_scheduled_ns": pl.Int64, "first_token_ns": pl.Int64, "completion_ns": pl.Int64, "preemptions": pl.Int64,
        },
    )
    if mixed is not None:
        frame = frame.with_columns(pl.Series("mixed_pool", [mixed.service.get(r.index, "none") for r in requests], dtype=pl.String))
        if mixed_pool_stats is not None:
            mixed_pool_stats.update({i.index: (mixed.role_switches[i.index], mixed.mixed_ns[i.index]) for i in instances})
    if details:
        frame = frame.with_columns(
            pl.Series("split_chunks", [r.split_chunks for r in requests], dtype=pl.Int64),
            pl.Series("reservation_waits", [r.reservation_waits for r in requests], dtype=pl.Int64),
            pl.Series("handoff_waits", [r.handoff_waits for r in requests], dtype=pl.Int64),
            pl.Series("transfer_start_ns", [r.transfer_start for r in requests], dtype=pl.Int64),
            pl.Series("transfer_end_ns", [r.transfer_end for r in requests], dtype=pl.Int64),
        )
    return frame
