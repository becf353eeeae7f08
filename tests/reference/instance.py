"""One model replica of the reference model: a SimPy process running the iterations its batch
scheduler forms, with its queues and KV cache."""

from __future__ import annotations

import json
from collections import deque

import simpy

from fleetwise.cost import cost_model
from reference.pipeline import ReferencePipeline, pipeline_mode
from reference.requests import Item, KvCache, ReferenceRequest
from reference.schedulers import make_policy, memory_limits
from reference.speculative import ReferenceSpeculation


class ReferenceInstance:
    """One model replica: a SimPy process running iterations formed by its batch scheduler.

    The instance owns the queues (``waiting``: no KV held, in service order; ``running``: holding
    KV, oldest admission first) and the KV cache; the scheduler (``VllmPolicy``,
    ``ChunkedPolicy`` or ``OrcaPolicy``) admits, preempts and picks each iteration's tokens.
    """

    def __init__(self, env: simpy.Environment, index: int, pool: dict, seed: int = 0, named_classes: list | None = None) -> None:
        """Builds instance ``index`` of ``pool`` (one pool entry of ``core_config``) in the run
        seeded with ``seed`` (``named_classes``: the workload's acceptance class of each request,
        None where drawn) and starts it."""
        self.env = env
        self.index = index
        par = pool["parallelism"]
        self.cost = cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], tp=par["tp"], pp=par.get("pp", 1),
                               microbatches=par.get("microbatches"), gpus_per_node=par.get("gpus_per_node", 8), quantization=pool.get("quantization"))
        self.pipeline = ReferencePipeline(self, par["pp"]) if pipeline_mode(par, pool) == "async" else None
        if pool.get("prefix_caching"):
            raise ValueError("the reference model does not model prefix caching")
        sched = pool["scheduler"]
        self.role = pool.get("role", "mixed")
        if self.role != "mixed":
            if sched["kind"] != "vllm":
                raise ValueError(f"the reference model disaggregates only the vllm scheduler, not {sched['kind']!r}")
        self.pool = pool
        self.handoffs: list[ReferenceRequest] = []
        self.on_iteration_end = None  # the cluster's hook after every iteration's tokens are applied
        self.on_iteration_start = None  # the cluster's hook once an iteration is under way (layer-wise KV)
        self.max_context = int(pool["model"]["max_position_embeddings"])
        self.policy = make_policy(sched, self.max_context)
        tokens, seqs = memory_limits(sched, self.max_context)
        plan = self.cost.memory_plan(json.dumps(pool["memory"]), tokens, seqs)
        self.speculation = None if pool.get("speculative") is None else ReferenceSpeculation(pool, seed, named_classes)
        if self.speculation is not None:
            plan["num_blocks"] = self.speculation.num_blocks(plan)
        self.accepted: list[int] = []
        self.kv = KvCache(int(plan["num_blocks"]), int(plan["block_size"]), pool["model"].get("sliding_window"))
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
        """Sleeps until woken, then runs iterations back to back while there is work (with an
        asynchronous pipeline: forms a batch; the pipeline's callbacks form the next ones)."""
        while True:
            yield self._wake
            self._wake = self.env.event()
            self.wake_pending = False
            if self.pipeline is not None:
                self.pipeline.try_form()
                continue
            items = self.policy.form(self)
            while items:
                self.busy = True
                for req, _, _ in items:
                    if req.first_scheduled is None:
                        req.first_scheduled = self.env.now
                if self.speculation is not None:
                    self.accepted = self.speculation.plan(self, items)
                    end = self.env.timeout(self.speculation.duration(self.cost, items))
                else:
                    end = self.env.timeout(self._duration(items))
                if self.on_iteration_start is not None:
                    self.on_iteration_start(self, items)
                yield end
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
        for i, (req, n, _) in enumerate(items):
            req.computed += n
            if req.computed != req.known:
                req.split_chunks += 1
                continue
            extra = self.accepted[i] if self.speculation is not None else 0  # accepted draft tokens
            req.computed += extra
            req.generated += 1 + extra
            self.outstanding_tokens += 1 + extra
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
