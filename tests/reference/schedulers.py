"""The reference model's batch schedulers, written from the core's documented rules: vLLM-style
continuous batching (``VllmPolicy``), Sarathi-Serve and Sarathi chunked prefill (``ChunkedPolicy``)
and Orca (``OrcaPolicy``). Each forms an instance's next iteration as a list of ``Item``s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference.requests import Item, ReferenceRequest

if TYPE_CHECKING:
    from reference.instance import ReferenceInstance


def orca_reserve_tokens(sched: dict, context_tokens: int) -> int | None:
    """Tokens an Orca scheduler config ``sched`` reserves per request for a model of
    ``context_tokens``: the whole context for ``reserve: max-len`` (the default), None (each
    request's own length) for ``oracle``."""
    return context_tokens if sched.get("reserve", "max-len") == "max-len" else None


def memory_limits(sched: dict, context_tokens: int) -> tuple[int, int]:
    """The ``(tokens, sequences)`` one iteration may hold under scheduler config ``sched`` (the
    core's JSON form) for a model of ``context_tokens``, which size the activation reserve of the
    memory plan.

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
        reserve = orca_reserve_tokens(sched, context_tokens)
        return (8192 if reserve is None else int(reserve)), seqs
    raise ValueError(f"the reference model does not know the {kind!r} scheduler")


def is_decoding(req: ReferenceRequest) -> bool:
    """Whether ``req``'s only pending token is the one it sampled last (so it decodes). A request
    that has sampled nothing yet, or was preempted and recomputes, prefills instead."""
    return req.generated > 0 and req.pending == 1


def make_policy(sched: dict, context_tokens: int):
    """The scheduler of the core's JSON config ``sched``, for a model of ``context_tokens``."""
    kind = sched["kind"]
    if kind == "vllm":
        return VllmPolicy(int(sched["max_num_seqs"]), int(sched["max_num_batched_tokens"]))
    if kind == "sarathi-serve":
        return ChunkedPolicy(int(sched["max_num_seqs"]), budget=int(sched["token_budget"]), chunk=None)
    if kind == "sarathi":
        return ChunkedPolicy(int(sched["max_num_seqs"]), budget=None, chunk=int(sched["chunk_size"]))
    if kind == "orca":
        reserve = orca_reserve_tokens(sched, context_tokens)
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
        decodes = self._grow(inst)
        if inst.speculation is not None:  # drafts within the budget left after the decodes
            inst.speculation.grant(inst, decodes, self.max_num_batched_tokens - len(decodes))
        return decodes

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
    prefilling, in running order (a chunk of ``min(pending, tokens left)``, its blocks allocated
    at admission), then to admissions from the waiting front (while fewer than ``max_num_seqs``
    requests run and the whole prompt's blocks fit beside the watermark, as Sarathi-Serve's block
    manager allocates them; the first that does not fit stops admission). Nothing is rejected by
    the scheduler itself.
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
        # Speculating decodes verify 1 + their draft tokens: Sarathi-Serve's budget counts them.
        drafts = 0
        if inst.speculation is not None:
            drafts = inst.speculation.grant(inst, items, None if self.budget is None else max(0, self.budget - len(items)))
        if self.budget is not None:
            tokens_left, chunks_left = max(0, self.budget - len(items) - drafts), None
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
            blocks = inst.kv.blocks_for(req.pending)  # the whole prompt's blocks at admission
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
        items = [(req, req.pending, req.generated > 0) for req in inst.running]
        if inst.speculation is not None:
            inst.speculation.grant(inst, items, None)
        return items
