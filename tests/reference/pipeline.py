"""Asynchronous pipeline parallelism in the reference model: an instance of ``pp`` stages keeps
up to ``pp`` batches in flight (vLLM's virtual engines), written from docs/pipeline-parallelism.md.

A batch forms when stage 1 is free and fewer than ``pp`` batches are in flight, from the running
requests not in flight: the first ``ceil(ready / free slots)`` of them in running order (the rest
are set aside for a later batch; if that share forms no batch, all ready requests are offered;
if nothing is in flight and still nothing runs, the newest running request is preempted by
recompute until a batch forms), plus whatever the scheduler admits from the waiting queue. Its
stage times come from the core's cost model (``CostModel.stage_ns``); everything else — which
requests a batch may take, the flow-shop recurrence over the stages, when tokens are applied — is
re-implemented here. The two timeouts of a batch (stage 1 free, batch done) are created when it
forms, in that order, as the core pushes its events.
"""

from __future__ import annotations

from collections import deque

from reference.requests import Item, ReferenceRequest


def pipeline_mode(parallelism: dict, pool: dict) -> str:
    """``async`` or ``sync``: the pool's ``pipeline`` setting, else async for pp > 1 unless
    ``microbatches``, offloaded weights, expert settings or swap preemption are set."""
    if parallelism.get("pipeline"):
        return parallelism["pipeline"]
    needs_sync = (parallelism.get("microbatches") is not None or pool.get("offload") is not None
                  or pool.get("experts") is not None or pool["scheduler"].get("preemption_mode") == "swap")
    return "async" if parallelism.get("pp", 1) > 1 and not needs_sync else "sync"


class ReferencePipeline:
    """The batches in flight on one instance's stages and when each stage is next free."""

    def __init__(self, inst, stages: int) -> None:
        """A pipeline of ``stages`` idle stages serving ``inst`` (a ``ReferenceInstance``)."""
        self.inst = inst
        self.stage_free = [0] * stages
        self.in_flight: deque[list[Item]] = deque()
        self.stage1_busy = False

    def blocked(self) -> bool:
        """Whether no batch can form before an event already due (stage 1 free, a batch done)."""
        return self.stage1_busy or len(self.in_flight) >= len(self.stage_free)

    def try_form(self) -> None:
        """Forms and launches the next batch if stage 1 is free, a slot is free and there is work."""
        inst, env = self.inst, self.inst.env
        if self.blocked():
            inst.busy = self.blocked()
            return
        flying = {id(req) for items in self.in_flight for req, _, _ in items}
        ready = [r for r in inst.running if id(r) not in flying]
        slots = len(self.stage_free) - len(self.in_flight)
        share = -(-len(ready) // slots)
        in_flight = [r for r in inst.running if id(r) in flying]
        items = self._form_without(in_flight + ready[share:])
        if not items and ready[share:]:
            items = self._form_without(in_flight)  # the share cannot run: every ready request may
        while not items and not self.in_flight and inst.running:
            # Deadlock breaker: nothing in flight, nothing runnable; preempt the newest running request.
            inst.requeue_victims([inst.preempt_newest()])
            items = inst.policy.form(inst)
        if not items:
            inst.busy = self.blocked()
            return
        for req, _, _ in items:
            if req.first_scheduled is None:
                req.first_scheduled = env.now
        stage_ns = inst.cost.stage_ns(
            prefills=[(n, r.computed, r.computed + n == r.known) for r, n, decode in items if not decode],
            decodes=[r.computed + 1 for r, _, decode in items if decode],
        )
        end = env.now
        for k, t in enumerate(stage_ns):
            end = max(end, self.stage_free[k]) + t
            self.stage_free[k] = end
        self.in_flight.append(items)
        self.stage1_busy = True
        inst.busy = True
        env.timeout(self.stage_free[0] - env.now).callbacks.append(self._stage1_free)
        env.timeout(end - env.now).callbacks.append(self._done)
        if inst.on_iteration_start is not None:
            inst.on_iteration_start(inst, items)

    def _form_without(self, parked: list[ReferenceRequest]) -> list[Item]:
        """The scheduler's batch with ``parked`` running requests set aside; afterwards the running
        list keeps its order (parked requests in their places, new admissions at the end)."""
        inst = self.inst
        if not parked:
            return inst.policy.form(inst)
        order = list(inst.running)
        parked_ids = {id(r) for r in parked}
        inst.running = [r for r in order if id(r) not in parked_ids]
        items = inst.policy.form(inst)
        still = {id(r) for r in inst.running} | parked_ids
        known = {id(r) for r in order}
        inst.running = [r for r in order if id(r) in still] + [r for r in inst.running if id(r) not in known]
        return items

    def _stage1_free(self, _event) -> None:
        """Stage 1 finished its batch: the next may form."""
        self.stage1_busy = False
        self.inst.busy = self.blocked()
        self.try_form()

    def _done(self, _event) -> None:
        """The oldest batch left the last stage: its tokens are applied, then the next may form."""
        inst = self.inst
        items = self.in_flight.popleft()
        inst.busy = False
        inst._apply(items)
        inst.busy = self.blocked()
        if inst.on_iteration_end is not None:
            inst.on_iteration_end(inst)
        self.try_form()
