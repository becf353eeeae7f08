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
scheduler with serialized KV transfer (``ReferenceHandoffs``); the KV flows cross a re-implemented
max-min fair network (``reference.network``) whose wake-ups are SimPy timeouts created
exactly when the core pushes its ``Network`` events, so ties keep the core's order. Layer-wise
transfer and other schedulers in disaggregated pools raise ValueError.
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
from reference.network import ReferenceNetwork
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
        "instance", "status", "first_token", "completion", "preemptions", "split_chunks",
        "reservation_waits", "handoff_waits", "transfer_start", "transfer_end",
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
        self.split_chunks = 0  # prefill chunks that left part of the pending tokens for later
        self.reservation_waits = 0  # Orca admissions stopped at it for want of KV blocks
        self.handoff_waits = 0  # 1 if its handoff found no decode instance with room and waited
        self.transfer_start: int | None = None  # its KV flow to a decode instance
        self.transfer_end: int | None = None

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


def memory_limits(sched: dict) -> tuple[int, int]:
    """The ``(tokens, sequences)`` one iteration may hold under scheduler config ``sched`` (the
    core's JSON form), which size the activation reserve of the memory plan.

    vllm: its token budget; sarathi-serve: its token budget; sarathi: one chunk plus one decode per
    sequence; orca: the tokens it reserves per request (8192 when it reserves each request's own
    length). The sequence limit is ``max_num_seqs`` for all of them.
    """
    kind = sched["kind"]
    seqs = int(sched["max_num_seqs"])
    if kind == "vllm":
        return int(sched["max_num_batched_tokens"]), seqs
    if kind == "sarathi-serve":
        return int(sched["token_budget"]), seqs
    if kind == "sarathi":
        return int(sched["chunk_size"]) + seqs, seqs
    if kind == "orca":
        reserve = sched.get("reserve_tokens")
        return (8192 if reserve is None else int(reserve)), seqs
    raise ValueError(f"the reference model does not know the {kind!r} scheduler")


# One request's share of an iteration: (request, tokens, is_decode), in the order the scheduler
# adds them. Decodes compute the one token sampled last; everything else is a prefill chunk.
Item = tuple[ReferenceRequest, int, bool]


class ReferenceInstance:
    """One model replica: a SimPy process running iterations formed by its batch scheduler.

    The instance owns the queues (``waiting``: no KV held, in service order; ``running``: holding
    KV, oldest admission first) and the KV cache; the scheduler (``VllmPolicy``,
    ``ChunkedPolicy`` or ``OrcaPolicy``) admits, preempts and picks each iteration's tokens.
    """

    def __init__(self, env: simpy.Environment, index: int, pool: dict) -> None:
        """Builds instance ``index`` of ``pool`` (one pool entry of ``core_config``) and starts it."""
        self.env = env
        self.index = index
        self.cost = _core.CostModel(
            json.dumps(pool["model"]), json.dumps(pool["gpu"]), json.dumps(pool["calibration"]), pool["tp"]
        )
        if pool.get("prefix_caching"):
            raise ValueError("the reference model does not model prefix caching")
        sched = pool["scheduler"]
        self.role = pool.get("role", "mixed")
        if self.role != "mixed":
            if sched["kind"] != "vllm":
                raise ValueError(f"the reference model disaggregates only the vllm scheduler, not {sched['kind']!r}")
            if pool.get("kv_transfer", "serialized") != "serialized":
                raise ValueError("the reference model does not model layerwise KV transfer")
        self.pool = pool
        self.handoffs: list[ReferenceRequest] = []
        self.on_iteration_end = None  # the cluster's hook after every iteration's tokens are applied
        self.policy = make_policy(sched)
        self.max_context = int(pool["model"]["max_position_embeddings"])
        tokens, seqs = memory_limits(sched)
        plan = self.cost.memory_plan(json.dumps(pool["memory"]), tokens, seqs)
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
        """Whether ``req`` can never run here: too long for the model's context, refused by the
        scheduler's own rule, or more KV blocks at its peak (the last output token is never
        cached) than the cache holds beside its watermark."""
        if req.prompt + req.output > self.max_context:
            return True
        if self.policy.rejects(req):
            return True
        return self.kv.blocks_for(req.prompt + req.output - 1) + self.kv.watermark > self.kv.total

    def enqueue(self, req: ReferenceRequest) -> None:
        """Queues an admitted request and wakes the instance if it is idle and not already woken."""
        req.status = "waiting"
        self.waiting.append(req)
        self.outstanding_tokens += req.prompt
        self.wake()

    def wake(self) -> None:
        """Wakes the instance (a wake event at this instant) if it is idle and not already woken."""
        if not self.busy and not self.wake_pending:
            self.wake_pending = True
            self._wake.succeed()

    # --- disaggregation --------------------------------------------------------------------------

    def could_hold(self, peak_tokens: int) -> bool:
        """Whether a request of ``peak_tokens`` KV tokens could ever fit this cache."""
        return self.kv.blocks_for(peak_tokens) + self.kv.watermark <= self.kv.total

    def reserve(self, req: ReferenceRequest) -> int | None:
        """Takes the blocks of a prefilled request's known tokens (beside the watermark), if free."""
        need = self.kv.blocks_for(req.known)
        if self.kv.free < need + self.kv.watermark:
            return None
        self.kv.take(need)
        return need

    def release_handoff(self, req: ReferenceRequest) -> None:
        """Frees a handed-off request's blocks once its KV arrived; wakes an idle instance with
        requests waiting."""
        self.kv.give_back(req.blocks)
        req.blocks = 0
        if not self.busy and not self.wake_pending and self.waiting:
            self.wake_pending = True
            self._wake.succeed()

    def accept(self, req: ReferenceRequest, blocks: int) -> None:
        """Takes a prefilled request into ``blocks`` reserved blocks as a running decode."""
        req.status = "running"
        req.blocks = blocks
        self.running.append(req)
        self.outstanding_tokens += req.prompt + req.generated
        self.wake()

    # --- the serving process ---------------------------------------------------------------------

    def _serve(self):
        """Sleeps until woken, then runs iterations back to back while there is work."""
        while True:
            yield self._wake
            self._wake = self.env.event()
            self.wake_pending = False
            items = self.policy.form(self)
            while items:
                self.busy = True
                yield self.env.timeout(self._duration(items))
                self.busy = False
                self._apply(items)
                if self.on_iteration_end is not None:
                    self.on_iteration_end(self)
                items = self.policy.form(self)

    # --- helpers the schedulers share ------------------------------------------------------------

    def admit(self, req: ReferenceRequest, blocks: int) -> None:
        """Moves the front waiting request ``req`` to the end of the running list with ``blocks``
        fresh KV blocks."""
        assert self.waiting[0] is req and req.blocks == 0 and req.computed == 0
        self.waiting.popleft()
        self.kv.take(blocks)
        req.blocks = blocks
        req.status = "running"
        self.running.append(req)

    def grow(self, req: ReferenceRequest, tokens: int) -> bool:
        """Gives ``req`` the blocks that ``tokens`` more computed tokens need, if they are free
        (no watermark: the request is already running)."""
        missing = max(0, self.kv.blocks_for(req.computed + tokens) - req.blocks)
        if missing > self.kv.free:
            return False
        self.kv.take(missing)
        req.blocks += missing
        return True

    def preempt_newest(self) -> ReferenceRequest:
        """Preempts the most recently admitted running request by recompute: its KV is dropped
        and it will be prefilled again. The caller puts it back in the waiting queue."""
        req = self.running.pop()
        self.kv.give_back(req.blocks)
        req.blocks = 0
        req.computed = 0
        req.preemptions += 1
        req.status = "waiting"
        return req

    def requeue_victims(self, victims: list[ReferenceRequest]) -> None:
        """Puts requests preempted while forming a batch (newest first, as they were taken) at the
        front of the waiting queue, the oldest admission first."""
        for victim in victims:
            self.waiting.appendleft(victim)

    # --- running an iteration --------------------------------------------------------------------

    def _duration(self, items: list[Item]) -> int:
        """The iteration's duration in integer ns, from the core's cost model. A chunk of ``n``
        tokens after ``computed`` cached ones is ``(n, computed, samples)``; a decode is its
        context including the token it computes."""
        return self.cost.iteration_ns(
            prefills=[(n, r.computed, r.computed + n == r.known) for r, n, decode in items if not decode],
            decodes=[r.computed + 1 for r, _, decode in items if decode],
        )

    def _apply(self, items: list[Item]) -> None:
        """Applies a finished iteration: computed tokens, samples, first tokens and completions."""
        now = self.env.now
        for req, n, _ in items:
            req.computed += n
            if req.computed != req.known:
                req.split_chunks += 1
                continue
            req.generated += 1
            self.outstanding_tokens += 1
            if req.generated == 1:
                req.first_token = now
            if req.generated == 1 and self.role == "prefill" and req.output > 1:
                # Handed off: it leaves the running list but keeps its blocks until the KV arrives.
                req.status = "handoff"
                self.outstanding_tokens -= req.prompt + req.generated
                self.handoffs.append(req)
                continue
            if req.generated == req.output:
                self.kv.give_back(req.blocks)
                req.blocks = 0
                req.status = "finished"
                req.completion = now
                self.outstanding_tokens -= req.prompt + req.generated
        self.running = [r for r in self.running if r.status == "running"]


def is_decoding(req: ReferenceRequest) -> bool:
    """Whether ``req``'s only pending token is the one it sampled last (so it decodes). A request
    that has sampled nothing yet, or was preempted and recomputes, prefills instead."""
    return req.generated > 0 and req.pending == 1


def make_policy(sched: dict):
    """The scheduler of the core's JSON config ``sched``."""
    kind = sched["kind"]
    if kind == "vllm":
        return VllmPolicy(int(sched["max_num_seqs"]), int(sched["max_num_batched_tokens"]))
    if kind == "sarathi-serve":
        return ChunkedPolicy(int(sched["max_num_seqs"]), budget=int(sched["token_budget"]), chunk=None)
    if kind == "sarathi":
        return ChunkedPolicy(int(sched["max_num_seqs"]), budget=None, chunk=int(sched["chunk_size"]))
    if kind == "orca":
        reserve = sched.get("reserve_tokens")
        return OrcaPolicy(int(sched["max_num_seqs"]), None if reserve is None else int(reserve))
    raise ValueError(f"the reference model does not know the {kind!r} scheduler")


class VllmPolicy:
    """vLLM-style continuous batching.

    Each iteration either prefills the waiting requests it can admit (front first, while the
    sequence limit, the token budget and the KV cache with its watermark allow) or, when none can
    be admitted, decodes one token of every running request, preempting the most recently admitted
    running request by recompute whenever a decode needs a KV block that is not free.
    """

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        """A scheduler with these limits."""
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens

    def rejects(self, req: ReferenceRequest) -> bool:
        """A prompt over the token budget can never be prefilled."""
        return req.prompt > self.max_num_batched_tokens

    def form(self, inst: ReferenceInstance) -> list[Item]:
        """The next iteration; empty when there is nothing to run."""
        prefills = self._admit(inst)
        if prefills:
            return prefills
        return self._grow(inst)

    def _admit(self, inst: ReferenceInstance) -> list[Item]:
        """Admits waiting requests from the front for a prefill iteration."""
        admitted: list[Item] = []
        budget_used = 0
        while inst.waiting:
            req = inst.waiting[0]
            tokens = req.pending
            if len(inst.running) >= self.max_num_seqs:
                break
            # The first admission ignores the budget: a recomputed request may exceed it.
            if admitted and budget_used + tokens > self.max_num_batched_tokens:
                break
            blocks = inst.kv.blocks_for(tokens)
            if inst.kv.free < blocks + inst.kv.watermark:
                break
            inst.admit(req, blocks)
            budget_used += tokens
            admitted.append((req, tokens, False))
        return admitted

    def _grow(self, inst: ReferenceInstance) -> list[Item]:
        """Gives every running request, oldest admission first, the KV it needs to decode one
        token, preempting the newest running request while a needed block is missing."""
        decodes: list[Item] = []
        victims: list[ReferenceRequest] = []
        for req in list(inst.running):
            if req.status != "running":
                break  # preempted as a victim of an older request's growth
            while req.status == "running" and not inst.grow(req, 1):
                victims.append(inst.preempt_newest())
            if req.status != "running":
                break  # it preempted itself: later requests were preempted before it
            decodes.append((req, 1, True))
        inst.requeue_victims(victims)
        return decodes


class ChunkedPolicy:
    """Chunked prefill with decodes first: Sarathi-Serve (``budget``) or Sarathi (``chunk``).

    Every iteration first decodes one token of every running request that is decoding, in running
    order, preempting the newest running request by recompute while one of them lacks a KV block
    (a request that preempts itself ends the decode pass; the victims go back to the waiting
    front, oldest first). Then come prefill chunks: Sarathi-Serve fills the token budget left
    after the decodes with as many chunks as fit; Sarathi takes at most one chunk of at most
    ``chunk`` tokens, whatever the decodes. Chunks go first to running requests still
    prefilling, in running order (a chunk of ``min(pending, tokens left)``; a request whose chunk's
    blocks are not free is skipped), then to admissions from the waiting front (while fewer than
    ``max_num_seqs`` requests run and the chunk's blocks fit beside the watermark; the first that
    does not fit stops admission). Nothing is rejected by the scheduler itself.
    """

    def __init__(self, max_num_seqs: int, budget: int | None, chunk: int | None) -> None:
        """Sarathi-Serve with a per-iteration token ``budget``, or Sarathi with a ``chunk`` size."""
        self.max_num_seqs = max_num_seqs
        self.budget = budget
        self.chunk = chunk

    def rejects(self, req: ReferenceRequest) -> bool:
        """Chunking fits every prompt into the budget: nothing to reject here."""
        return False

    def form(self, inst: ReferenceInstance) -> list[Item]:
        """The next iteration; empty when there is nothing to run."""
        items = self._decodes(inst)
        if self.budget is not None:
            tokens_left, chunks_left = max(0, self.budget - len(items)), None
        else:
            tokens_left, chunks_left = self.chunk, 1
        items += self._chunks(inst, tokens_left, chunks_left)
        return items

    def _decodes(self, inst: ReferenceInstance) -> list[Item]:
        """One token of every decoding running request, preempting the newest when KV runs out."""
        decodes: list[Item] = []
        victims: list[ReferenceRequest] = []
        for req in list(inst.running):
            if req.status != "running":
                break  # preempted as a victim of an older request's decode
            if not is_decoding(req):
                continue
            while req.status == "running" and not inst.grow(req, 1):
                victims.append(inst.preempt_newest())
            if req.status != "running":
                break  # it preempted itself: every later request went before it
            decodes.append((req, 1, True))
        inst.requeue_victims(victims)
        return decodes

    def _chunks(self, inst: ReferenceInstance, tokens_left: int, chunks_left: int | None) -> list[Item]:
        """Prefill chunks within ``tokens_left`` tokens and ``chunks_left`` chunks (None: any)."""
        chunks: list[Item] = []

        def room() -> bool:
            return tokens_left > 0 and (chunks_left is None or len(chunks) < chunks_left)

        for req in list(inst.running):
            if not room():
                break
            if is_decoding(req):
                continue
            n = min(req.pending, tokens_left)
            if not inst.grow(req, n):
                continue  # its chunk's blocks are not free: skipped this iteration
            chunks.append((req, n, False))
            tokens_left -= n
        while room() and inst.waiting and len(inst.running) < self.max_num_seqs:
            req = inst.waiting[0]
            n = min(req.pending, tokens_left)
            blocks = inst.kv.blocks_for(n)
            if inst.kv.free < blocks + inst.kv.watermark:
                break
            inst.admit(req, blocks)
            chunks.append((req, n, False))
            tokens_left -= n
        return chunks


class OrcaPolicy:
    """Orca iteration-level batching with KV reserved per request.

    Admission takes waiting requests from the front while fewer than ``max_num_seqs`` run and the
    blocks of the request's reservation (``reserve`` tokens, or its own ``prompt + output - 1``
    when None) are free beside the watermark; the whole reservation is allocated at once, so a
    running request never needs another block and nothing is preempted. Every iteration runs every
    running request, in running order, for all its pending tokens: whole prompts and single decodes
    side by side. A request longer than the reservation is rejected.
    """

    def __init__(self, max_num_seqs: int, reserve: int | None) -> None:
        """A scheduler admitting up to ``max_num_seqs`` requests, reserving ``reserve`` tokens each."""
        self.max_num_seqs = max_num_seqs
        self.reserve = reserve

    def _reservation(self, req: ReferenceRequest) -> int:
        return req.prompt + req.output - 1 if self.reserve is None else self.reserve

    def rejects(self, req: ReferenceRequest) -> bool:
        """A request whose KV outgrows the fixed reservation can never finish."""
        return self.reserve is not None and req.prompt + req.output - 1 > self.reserve

    def form(self, inst: ReferenceInstance) -> list[Item]:
        """The next iteration; empty when nothing runs."""
        while inst.waiting and len(inst.running) < self.max_num_seqs:
            req = inst.waiting[0]
            blocks = inst.kv.blocks_for(self._reservation(req))
            if inst.kv.free < blocks + inst.kv.watermark:
                req.reservation_waits += 1
                break
            inst.admit(req, blocks)
        return [(req, req.pending, req.generated > 0) for req in inst.running]


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


class ReferenceHandoffs:
    """Moves requests prefilled on prefill instances to decode instances (serialized KV transfer).

    After a prefill instance's iteration ends, each request it handed off, in order, goes to the
    decode instance with the fewest outstanding tokens (lowest index on ties) that can reserve its
    blocks; its KV (``prompt`` tokens at the tp=1 KV size) then flows over the prefill instance's
    ``kv_out`` link and the decode instance's ``kv_in`` link. When the flow completes the prefill
    instance frees the blocks and the decode instance takes the request as a running decode.
    Handoffs that found no room wait in order and are retried after every decode iteration.

    Network wake-ups are SimPy timeouts created when the core pushes its ``Network`` event, so
    their eids follow the core's push order; a wake-up whose version is stale does nothing.
    """

    def __init__(self, env: simpy.Environment, instances: list[ReferenceInstance]) -> None:
        """Builds each instance's KV links (``kv_out`` with latency, ``kv_in`` without)."""
        self.env = env
        self.instances = instances
        self.decoders = [inst for inst in instances if inst.role == "decode"]
        links: list[tuple[float, float]] = []
        for inst in instances:
            pool, gpu = inst.pool, inst.pool["gpu"]
            gpus = int(pool["tp"]) * int(pool.get("pp") or 1)
            if pool.get("kv_link", "nic") == "nvlink":
                bw, lat = gpu["link_bandwidth"], gpu["link_latency"]
            elif gpu.get("nic_bandwidth", 0.0) > 0.0:
                bw, lat = gpu["nic_bandwidth"], gpu["nic_latency"]
            else:
                bw, lat = max(gpu.get("host_link_bandwidth", 0.0), gpu["link_bandwidth"]), gpu["host_link_latency"]
            links.append((bw * gpus, lat))  # kv_out: link 2 * index
            links.append((bw * gpus, 0.0))  # kv_in: link 2 * index + 1
        self.net = ReferenceNetwork(links)
        self.scheduled: int | None = None
        self.owner: dict[int, tuple[ReferenceRequest, ReferenceInstance, int]] = {}
        self.waiting: deque[ReferenceRequest] = deque()
        for inst in instances:
            inst.on_iteration_end = self.end_iteration

    def end_iteration(self, inst: ReferenceInstance) -> None:
        """Dispatches the requests ``inst`` just handed off; retries waiting ones after a decode."""
        handed, inst.handoffs = inst.handoffs, []
        for req in handed:
            if not self.dispatch(req):
                req.handoff_waits += 1
                self.waiting.append(req)
        if inst.role == "decode":
            while self.waiting and self.dispatch(self.waiting[0]):
                self.waiting.popleft()

    def dispatch(self, req: ReferenceRequest) -> bool:
        """Reserves a decode instance for ``req`` and starts its KV flow; False when none has room."""
        for dec in sorted(self.decoders, key=lambda d: (d.outstanding_tokens, d.index)):
            blocks = dec.reserve(req)
            if blocks is None:
                continue
            src = self.instances[req.instance]
            nbytes = req.prompt * src.kv_bytes_per_token
            fid = self.net.start_flow(self.env.now, [2 * src.index, 2 * dec.index + 1], max(nbytes, 1))
            self.owner[fid] = (req, dec, blocks)
            req.transfer_start = self.env.now
            self._reschedule()
            return True
        return False

    def _reschedule(self) -> None:
        version = self.net.version
        if self.scheduled == version:
            return
        t = self.net.next_event()
        if t is not None:
            assert t >= self.env.now
            event = self.env.timeout(t - self.env.now)
            event.callbacks.append(lambda _event, v=version: self._network(v))
            self.scheduled = version

    def _network(self, version: int) -> None:
        """A network wake-up: if current, runs the network and completes the finished handoffs."""
        if version != self.net.version:
            return
        now = self.env.now
        done = self.net.advance(now)
        self.scheduled = None
        self._reschedule()
        for fid, _end in done:
            req, dec, blocks = self.owner.pop(fid)
            req.transfer_end = now
            self.instances[req.instance].release_handoff(req)
            req.instance = dec.index
            dec.accept(req, blocks)


def _arrival(env: simpy.Environment, router: ReferenceRouter, req: ReferenceRequest, decoders: list[ReferenceInstance]):
    """The life of a request up to its admission: wait for the arrival, route, queue or reject
    (a prefill instance also rejects a request that no decode instance could ever hold)."""
    yield env.timeout(req.arrival)
    inst = router.route(req)
    req.instance = inst.index
    if inst.rejects(req) or (
        inst.role == "prefill" and not any(d.could_hold(req.prompt + req.output - 1) for d in decoders)
    ):
        req.status = "rejected"
    else:
        inst.enqueue(req)



def simulate_reference(
    scenario: Scenario | dict | str | Path, workload: Workload | None = None, details: bool = False
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
    off). Raises ValueError for a router other than ``round-robin`` and ``least-outstanding-tokens``, an unknown scheduler or prefix
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
            instances.append(ReferenceInstance(env, len(instances), pool))
    entry = [inst for inst in instances if inst.role != "decode"]
    decoders = [inst for inst in instances if inst.role == "decode"]
    if not entry:
        raise ValueError("every pool has role decode")
    if any(inst.role == "prefill" for inst in instances):
        if not decoders:
            raise ValueError("a pool has role prefill but none has role decode")
        for inst in instances:
            pool = inst.pool
            inst.kv_bytes_per_token = _core.CostModel(
                json.dumps(pool["model"]), json.dumps(pool["gpu"]), json.dumps(pool["calibration"]), 1
            ).kv_bytes_per_token()
        ReferenceHandoffs(env, instances)
    router = ReferenceRouter(config["router"]["kind"], entry)
    requests = [
        ReferenceRequest(i, int(a), int(p), int(o))
        for i, (a, p, o) in enumerate(zip(workload.arrival_ns, workload.prompt_tokens, workload.output_tokens))
    ]
    for req in requests:
        env.process(_arrival(env, router, req, decoders))
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
            "first_token_ns": [r.first_token for r in requests],
            "completion_ns": [r.completion for r in requests],
            "preemptions": [r.preemptions if ok else None for r, ok in zip(requests, served)],
        },
        schema={
            "request_id": pl.Int64, "instance": pl.Int64, "status": pl.String,
            "first_token_ns": pl.Int64, "completion_ns": pl.Int64, "preemptions": pl.Int64,
        },
    )
    if details:
        frame = frame.with_columns(
            pl.Series("split_chunks", [r.split_chunks for r in requests], dtype=pl.Int64),
            pl.Series("reservation_waits", [r.reservation_waits for r in requests], dtype=pl.Int64),
            pl.Series("handoff_waits", [r.handoff_waits for r in requests], dtype=pl.Int64),
            pl.Series("transfer_start_ns", [r.transfer_start for r in requests], dtype=pl.Int64),
            pl.Series("transfer_end_ns", [r.transfer_end for r in requests], dtype=pl.Int64),
        )
    return frame
