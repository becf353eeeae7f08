"""What a policy answers: a route for a request, a plan for one scheduling step.

Decisions say *what* should happen in which order; the engine that applies them (the simulator's
instance, vLLM's scheduler) keeps its own invariants — a plan never makes a batch exceed the KV
cache, because the engine allocates blocks itself and stops where they run out.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Hashable, Sequence


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes.

    ``instance`` is the endpoint that generates the output (and computes the prompt too when
    ``prefill`` is None). With prefill/decode disaggregation ``prefill`` names the endpoint that
    computes the prompt and hands its KV cache to ``instance`` — llm-d's decode target plus its
    prefill header, vLLM's ``kv_transfer_params`` handshake. Both are indices into the endpoint
    list the router was given.
    """

    instance: int
    prefill: int | None = None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """How one iteration is formed, applied with vLLM's scheduling loop.

    1. Running requests, in ``running_order``, each take ``min(pending tokens, budget left,
       max_prefill_chunk)`` tokens while the budget lasts. When a request's KV does not fit, running
       requests are preempted (by recompute) in ``victim_order`` until it fits or it is the victim
       itself.
    2. If nothing was preempted, waiting requests are admitted in ``waiting_order`` while fewer than
       ``max_num_seqs`` run, budget is left and their KV fits; the first that does not fit stops
       admission.

    ``None`` keeps the engine's order: running in admission order, waiting in queue order,
    victims newest admission first. An order may list a subset; unlisted requests follow in the
    engine's order. ``max_prefill_chunk`` None lets a prompt take the whole remaining budget.
    """

    token_budget: int
    max_num_seqs: int
    running_order: Sequence[Hashable] | None = None
    waiting_order: Sequence[Hashable] | None = None
    victim_order: Sequence[Hashable] | None = None
    max_prefill_chunk: int | None = None

    def __post_init__(self) -> None:
        for name in ("token_budget", "max_num_seqs", "max_prefill_chunk"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) and not (value is None and name == "max_prefill_chunk"):
                raise TypeError(f"{name} must be an int{' or None' if name == 'max_prefill_chunk' else ''}, got {value!r}"[:300])
        if self.token_budget < 1:
            raise ValueError(f"token_budget must be at least 1, got {self.token_budget}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_prefill_chunk is not None and self.max_prefill_chunk < 1:
            raise ValueError(f"max_prefill_chunk must be at least 1 or None, got {self.max_prefill_chunk}")


def ordered(ids: Sequence[Hashable], preferred: Sequence[Hashable] | None) -> list[Hashable]:
    """``ids`` rearranged so the ones in ``preferred`` come first in its order, the rest after in theirs."""
    if preferred is None:
        return list(ids)
    present = set(ids)
    head = [i for i in dict.fromkeys(preferred) if i in present]
    seen = set(head)
    return head + [i for i in ids if i not in seen]
