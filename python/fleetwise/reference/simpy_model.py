"""A SimPy model of a serving cluster, written from the core's documented rules.

Every instance is a SimPy process that sleeps until woken, then runs iterations back to back until
it has nothing to run; every request is a process that sleeps until its arrival and hands itself to
the router. Only the iteration cost (``CostModel.iteration_ns``) and the KV block count
(``CostModel.memory_plan``) come from the Rust core; queues, admission, KV accounting, preemption,
token accounting and routing are re-implemented here.

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
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import polars as pl
import simpy

from fleetwise import _core
from fleetwise.cluster import core_config
from fleetwise.config.load import as_scenario
from fleetwise.config.scenario import Scenario
from fleetwise.workload import Workload, build_workload

# vLLM keeps 1% of the KV blocks free when admitting a request, so that running requests can grow.
_WATERMARK_FRACTION = 0.01


class ReferenceRequest:
    """One request's state: its token accounting, KV blocks and recorded times.

    ``computed`` tokens have their KV cached; once all ``prompt + generated`` known tokens are
    computed, the iteration samples the next output token. A preemption by recompute drops
    ``computed`` to 0 and frees the blocks, so prompt and generated tokens are prefilled again.
    """

    __slots__ = (
        "index", "arrival", "prompt", "output", "computed", "generated", "blocks",
        "instance", "status", "first_token", "completion", "preemptions",
    )

    def __init__(self, index: int, arrival: int, prompt: int, output: int) -> None:
        """A request that has not arrived yet."""
        self.index = index
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.instance: int | None = None
        self.status = "pending"
        self.first_token: int | None = None
        self.completion: int | None = None
        self.preemptions = 0

    @property
    def known(self) -> int:
        """Tokens known so far: the prompt and the output generated."""
        return self.prompt + self.generated

    @property
    def pending(self) -> int:
        """Tokens to compute before the next sample."""
        return self.known - self.computed


class KvCache:
    """Counts the paged KV blocks of one instance (blocks are interchangeable)."""

    def __init__(self, total: int, block_size: int) -> None:
        """A cache of ``total`` blocks of ``block_size`` tokens, keeping 1% free on admission."""
        self.total = total
        self.block_size = block_size
        self.watermark = int(total * _WATERMARK_FRACTION)
        self.used = 0

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    @property
    def free(self) -> int:
        """Blocks not held by any request."""
        return self.total - self.used

    def take(self, blocks: int) -> None:
        """Hands out ``blocks`` blocks; they must be free."""
        if blocks > self.free:
            raise AssertionError(f"KV over-allocation: {blocks} blocks asked, {self.free} free")
        self.used += blocks

    def give_back(self, blocks: int) -> None:
        """Returns ``blocks`` blocks."""
        if blocks > self.used:
            raise AssertionError(f"returning {blocks} KV blocks, only {self.used} in use")
        self.used -= blocks


class ReferenceInstance:
    """One model replica: a SimPy process running vLLM-style continuous batching.

    Each iteration either prefills the waiting requests it can admit (front first, while the
    sequence limit, the token budget and the KV cache with its watermark allow) or, when none can
    be admitted, decodes one token of every running request, preempting the most recently admitted
    running request by recompute whenever a decode needs a KV block that is not free.
    """

    def __init__(self, env: simpy.Environment, index: int, pool: dict) -> None:
        """Builds instance ``index`` of ``pool`` (one pool entry of ``core_config``) and starts it."""
        self.env = env
        self.index = index
        self.cost = _core.CostModel(
            json.dumps(pool["model"]), json.dumps(pool["gpu"]), json.dumps(pool["calibration"]), pool["tp"]
        )
        sched = pool["scheduler"]
        if sched["kind"] != "vllm":
            raise ValueError(f"the reference model only knows the vllm scheduler, not {sched['kind']!r}")
        self.max_num_seqs = int(sched["max_num_seqs"])
        self.max_num_batched_tokens = int(sched["max_num_batched_tokens"])
        self.max_context = int(pool["model"]["max_position_embeddings"])
        plan = self.cost.memory_plan(json.dumps(pool["memory"]), self.max_num_batched_tokens, self.max_num_seqs)
        self.kv = KvCache(int(plan["num_blocks"]), int(plan["block_size"]))
        self.waiting: deque[ReferenceRequest] = deque()
        self.running: list[ReferenceRequest] = []
        self.outstanding_tokens = 0
        self.busy = False
        self.wake_pending = False
        self._wake = env.event()
        env.process(self._serve())

    # --- arrival side ----------------------------------------------------------------------------

    def rejects(self, req: ReferenceRequest) -> bool:
        """Whether ``req`` can never run here: too long for the model's context, a prompt over the
        token budget, or more KV blocks at its peak (the last output token is never cached) than
        the cache holds beside its watermark."""
        if req.prompt + req.output > self.max_context:
            return True
        if req.prompt > self.max_num_batched_tokens:
            return True
        return self.kv.blocks_for(req.prompt + req.output - 1) + self.kv.watermark > self.kv.total

    def enqueue(self, req: ReferenceRequest) -> None:
        """Queues an admitted request and wakes the instance if it is idle and not already woken."""
        req.status = "waiting"
        self.waiting.append(req)
        self.outstanding_tokens += req.prompt
        if not self.busy and not self.wake_pending:
            self.wake_pending = True
            self._wake.succeed()

    # --- the serving process ---------------------------------------------------------------------

    def _serve(self):
        """Sleeps until woken, then runs iterations back to back while there is work."""
        while True:
            yield self._wake
            self._wake = self.env.event()
            self.wake_pending = False
            batch = self._form_batch()
            while batch is not None:
                prefills, decodes = batch
                self.busy = True
                yield self.env.timeout(self._duration(prefills, decodes))
                self.busy = False
                self._apply([r for r, _ in prefills] + decodes, [n for _, n in prefills] + [1] * len(decodes))
                batch = self._form_batch()

    def _form_batch(self):
        """The next iteration as ``(prefills, decodes)``: prefills are ``(request, tokens)`` and
        decodes requests; None when there is nothing to run."""
        prefills = self._admit()
        if prefills:
            return prefills, []
        decodes = self._grow()
        return ([], decodes) if decodes else None

    def _admit(self) -> list[tuple[ReferenceRequest, int]]:
        """Admits waiting requests from the front for a prefill iteration."""
        admitted: list[tuple[ReferenceRequest, int]] = []
        budget_used = 0
        while self.waiting:
            req = self.waiting[0]
            tokens = req.pending
            if len(self.running) >= self.max_num_seqs:
                break
            # The first admission ignores the budget: a recomputed request may exceed it.
            if admitted and budget_used + tokens > self.max_num_batched_tokens:
                break
            blocks = self.kv.blocks_for(tokens)
            if self.kv.free < blocks + self.kv.watermark:
                break
            self.waiting.popleft()
            self.kv.take(blocks)
            req.blocks = blocks
            req.status = "running"
            self.running.append(req)
            budget_used += tokens
            admitted.append((req, tokens))
        return admitted

    def _grow(self) -> list[ReferenceRequest]:
        """Gives every running request, oldest admission first, the KV it needs to decode one
        token, preempting the newest running request while a needed block is missing."""
        decodes: list[ReferenceRequest] = []
        victims: list[ReferenceRequest] = []
        for req in list(self.running):
            if req.status != "running":
                break  # preempted as a victim of an older request's growth
            missing = max(0, self.kv.blocks_for(req.computed + 1) - req.blocks)
            while self.kv.free < missing and req.status == "running":
                victim = self.running.pop()
                self._preempt(victim)
                victims.append(victim)
            if req.status != "running":
                break  # it preempted itself: later requests were preempted before it
            self.kv.take(missing)
            req.blocks += missing
            decodes.append(req)
        # Victims were taken newest first; the oldest ends up at the front of the waiting queue.
        for victim in victims:
            self.waiting.appendleft(victim)
        return decodes

    def _preempt(self, req: ReferenceRequest) -> None:
        """Preempts ``req`` by recompute: its KV is dropped and will be prefilled again."""
        self.kv.give_back(req.blocks)
        req.blocks = 0
        req.computed = 0
        req.preemptions += 1
        req.status = "waiting"

    def _duration(self, prefills: list[tuple[ReferenceRequest, int]], decodes: list[ReferenceRequest]) -> int:
        """The iteration's duration in integer ns, from the core's cost model."""
        return self.cost.iteration_ns(
            prefills=[(n, r.computed, r.computed + n == r.known) for r, n in prefills],
            decodes=[r.computed + 1 for r in decodes],
        )

    def _apply(self, reqs: list[ReferenceRequest], tokens: list[int]) -> None:
        """Applies a finished iteration: computed tokens, samples, first tokens and completions."""
        now = self.env.now
        for req, n in zip(reqs, tokens):
            req.computed += n
            if req.computed != req.known:
                continue
            req.generated += 1
            self.outstanding_tokens += 1
            if req.generated == 1:
                req.first_token = now
            if req.generated == req.output:
                self.kv.give_back(req.blocks)
                req.blocks = 0
                req.status = "finished"
                req.completion = now
                self.outstanding_tokens -= req.prompt + req.generated
        self.running = [r for r in self.running if r.status == "running"]


class ReferenceRouter:
    """Chooses an instance for each arriving request: ``round-robin`` or
    ``least-outstanding-tokens`` (fewest outstanding tokens, lowest index on ties)."""

    def __init__(self, kind: str, instances: list[ReferenceInstance]) -> None:
        """A router of ``kind`` over ``instances``; ``random`` is not modelled (it draws from the
        core's own random stream), so it raises ValueError."""
        if kind not in ("round-robin", "least-outstanding-tokens"):
            raise ValueError(f"the reference model does not reproduce the {kind!r} router")
        self.kind = kind
        self.instances = instances
        self._next = 0

    def route(self, req: ReferenceRequest) -> ReferenceInstance:
        """The instance that gets ``req``."""
        if self.kind == "round-robin":
            inst = self.instances[self._next]
            self._next = (self._next + 1) % len(self.instances)
            return inst
        return min(self.instances, key=lambda inst: (inst.outstanding_tokens, inst.index))


def _arrival(env: simpy.Environment, router: ReferenceRouter, req: ReferenceRequest):
    """The life of a request up to its admission: wait for the arrival, route, queue or reject."""
    yield env.timeout(req.arrival)
    inst = router.route(req)
    req.instance = inst.index
    if inst.rejects(req):
        req.status = "rejected"
    else:
        inst.enqueue(req)



def simulate_reference(scenario: Scenario | dict | str | Path, workload: Workload | None = None) -> pl.DataFrame:
    """Replays ``workload`` (default: the scenario's own) on ``scenario``'s cluster in SimPy.

    Returns one row per request, in request order: ``request_id``, ``instance`` (the instance it
    was routed to, also for rejected requests), ``status`` (``finished`` or ``rejected``),
    ``first_token_ns``, ``completion_ns`` and ``preemptions`` (the last three null for rejected
    requests). Raises ValueError for the ``random`` router or a scheduler other than ``vllm``, and
    RuntimeError if a request never finishes.
    """
    sc = as_scenario(scenario)
    if workload is None:
        workload = build_workload(sc.workload, sc.seed, Path(sc._base_dir) if sc._base_dir else None)
    config = core_config(sc)

    env = simpy.Environment(initial_time=0)
    instances: list[ReferenceInstance] = []
    for pool in config["pools"]:
        for _ in range(pool["count"]):
            instances.append(ReferenceInstance(env, len(instances), pool))
    router = ReferenceRouter(config["router"]["kind"], instances)
    requests = [
        ReferenceRequest(i, int(a), int(p), int(o))
        for i, (a, p, o) in enumerate(zip(workload.arrival_ns, workload.prompt_tokens, workload.output_tokens))
    ]
    for req in requests:
        env.process(_arrival(env, router, req))
    env.run()

    stuck = [r for r in requests if r.status not in ("finished", "rejected")]
    if stuck:
        r = stuck[0]
        raise RuntimeError(f"request {r.index} never finished ({r.status}, {r.generated} of {r.output} tokens)")
    served = [r.status == "finished" for r in requests]
    return pl.DataFrame(
        {
            "request_id": np.arange(len(requests), dtype=np.int64),
            "instance": [r.instance for r in requests],
            "status": [r.status for r in requests],
            "first_token_ns": [r.first_token for r in requests],
            "completion_ns": [r.completion for r in requests],
            "preemptions": [r.preemptions if ok else None for r, ok in zip(requests, served)],
        },
        schema={
            "request_id": pl.Int64, "instance": pl.Int64, "status": pl.String,
            "first_token_ns": pl.Int64, "completion_ns": pl.Int64, "preemptions": pl.Int64,
        },
    )
