"""Batch schedulers as plans: each step a policy answers with a :class:`StepPlan`.

The engine runs vLLM v1's scheduling loop with the plan (see :class:`StepPlan`): the simulator's
``vllm-v1`` scheduler in Rust, or vLLM itself through ``fleetwise.integrations.vllm_scheduler``.
The policy decides the budget, the limits and the orders; the engine keeps its KV and prefix-cache
invariants. Policies are plain Python objects with a ``plan`` method.
"""

from __future__ import annotations

import math
import numbers
from typing import Protocol, runtime_checkable

from fleetwise.policy.decisions import StepPlan
from fleetwise.policy.views import StepView


@runtime_checkable
class BatchScheduler(Protocol):
    """Plans each iteration of one engine instance."""

    def plan(self, step: StepView) -> StepPlan:
        """The plan for the next iteration, given the instance's queues and KV cache."""
        ...


def _count(name: str, value, allow_none: bool = False):
    """A built-in scheduler's parameter ``value`` as an int in ``1..=u32 max`` (None when allowed);
    ValueError naming the parameter otherwise (a float, a bool, text), so that a bad parameter
    fails when the policy is created rather than at its first step."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 2**32 - 1:
        raise ValueError(f"{name} must be a whole number from 1 to {2**32 - 1}{' or None' if allow_none else ''}, got {value!r}"[:300])
    return int(value)


class Fcfs:
    """vLLM's default: first come, first served, fixed limits (the simulator's ``vllm-v1``)."""

    def __init__(self, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, max_prefill_chunk: int | None = None):
        self.limits = StepPlan(token_budget=_count("max_num_batched_tokens", max_num_batched_tokens), max_num_seqs=_count("max_num_seqs", max_num_seqs),
                               max_prefill_chunk=_count("max_prefill_chunk", max_prefill_chunk, allow_none=True))

    def plan(self, step: StepView) -> StepPlan:
        """The same plan every step."""
        return self.limits


class ShortestPromptFirst:
    """Admits the waiting request with the fewest tokens left to prefill first (SJF on prompts),
    and preempts the running request with the most tokens to recompute last.

    Live under any load: a request that has waited ``max_wait_s`` seconds since it arrived is
    *aged* — aged requests are admitted before every other, oldest first, and preempted only after
    every other — so a long prompt is never overtaken forever by a stream of shorter ones.
    """

    def __init__(self, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, max_prefill_chunk: int | None = None, max_wait_s: float = 60.0):
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, numbers.Real) or not max_wait_s > 0 or math.isnan(max_wait_s):
            raise ValueError(f"max_wait_s must be a positive number of seconds, got {max_wait_s!r}")
        self.max_num_seqs = _count("max_num_seqs", max_num_seqs)
        self.max_num_batched_tokens = _count("max_num_batched_tokens", max_num_batched_tokens)
        self.max_prefill_chunk = _count("max_prefill_chunk", max_prefill_chunk, allow_none=True)
        self.max_wait_s = max_wait_s

    def plan(self, step: StepView) -> StepPlan:
        """Aged requests first (oldest first), then the rest by prompt length (ties by arrival);
        victims with the least KV first, aged ones last."""
        aged_before = step.now - self.max_wait_s
        waiting = sorted(step.waiting, key=lambda r: (0, r.arrival, 0, str(r.id)) if r.arrival <= aged_before else (1, r.pending_tokens, r.arrival, str(r.id)))
        victims = sorted(step.running, key=lambda r: (r.arrival <= aged_before, r.computed_tokens, -r.arrival, str(r.id)))
        return StepPlan(
            token_budget=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
            waiting_order=[r.id for r in waiting],
            victim_order=[r.id for r in victims],
            max_prefill_chunk=self.max_prefill_chunk,
        )


class DecodeBudget:
    """Sarathi-Serve-style stall-free batching as a plan: a fixed token budget per step, decodes
    first (running order puts decoding requests ahead of partial prefills), prompt chunks capped."""

    def __init__(self, max_num_seqs: int = 256, token_budget: int = 512, max_prefill_chunk: int | None = None):
        self.max_num_seqs = _count("max_num_seqs", max_num_seqs)
        self.token_budget = _count("token_budget", token_budget)
        self.max_prefill_chunk = _count("max_prefill_chunk", max_prefill_chunk, allow_none=True)

    def plan(self, step: StepView) -> StepPlan:
        """Decoding requests take budget before prompts still in prefill."""
        running = sorted(step.running, key=lambda r: 0 if r.is_decoding else 1)
        return StepPlan(token_budget=self.token_budget, max_num_seqs=self.max_num_seqs, running_order=[r.id for r in running], max_prefill_chunk=self.max_prefill_chunk)
