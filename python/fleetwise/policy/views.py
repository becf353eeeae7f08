"""What a policy sees: read-only views of requests, endpoints and one scheduling step.

The simulator builds these from its own state and a real engine (vLLM, ``fleetwise serve-router``)
from its own, so one policy object runs unchanged in both. Views are frozen: a policy reads them
and answers with a decision (``fleetwise.policy.decisions``); it never changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Literal

Role = Literal["mixed", "prefill", "decode"]
"""What an endpoint serves: both phases, prompts only, or generation only (disaggregation)."""


@dataclass(frozen=True, slots=True)
class RequestView:
    """One request as a policy sees it.

    ``id`` is the engine's own identifier (the request index in the simulator, the request id
    string in vLLM). Token counts follow vLLM: ``computed_tokens`` have KV in the cache (prompt and
    generated tokens together), so the tokens still to compute before the next sample are
    ``prompt_tokens + generated_tokens - computed_tokens``.
    """

    id: Hashable
    prompt_tokens: int
    max_output_tokens: int
    """The output limit (a trace's output length in the simulator, ``max_tokens`` in an engine)."""
    computed_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens found in the prefix cache on admission."""
    arrival: float = 0.0
    """Arrival time in seconds (simulated time, or the engine's clock)."""
    preemptions: int = 0
    prefix_hashes: tuple[int, ...] = ()
    """Hashes of the prompt's leading blocks, chained (each covers everything before it)."""

    @property
    def pending_tokens(self) -> int:
        """Tokens to compute before this request samples its next token."""
        return max(self.prompt_tokens + self.generated_tokens - self.computed_tokens, 0)

    @property
    def is_decoding(self) -> bool:
        """Whether the prompt is fully computed and each step adds one token."""
        return self.generated_tokens > 0 and self.pending_tokens <= 1


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One serving instance (a simulated instance, or a real engine behind a router)."""

    index: int
    """Position in the endpoint list the router was given; decisions refer to it."""
    name: str = ""
    """``pool/i`` in the simulator, ``host:port`` in a real router."""
    role: Role = "mixed"
    outstanding_tokens: int = 0
    """Prompt plus generated tokens of unfinished requests sent to it."""
    waiting: int = 0
    """Requests queued for admission."""
    running: int = 0
    """Requests holding KV."""
    kv_usage: float = 0.0
    """Fraction of its KV cache in use, 0 to 1."""
    cached_prefix_tokens: int = 0
    """Prompt tokens of the request being routed that this endpoint (probably) has cached."""


@dataclass(frozen=True, slots=True)
class StepView:
    """The state a batch scheduler plans one iteration from.

    ``waiting`` is in queue order (preempted requests first, as engines re-queue them);
    ``running`` in admission order (oldest first).
    """

    waiting: tuple[RequestView, ...]
    running: tuple[RequestView, ...]
    free_blocks: int
    total_blocks: int
    block_size: int
    step: int = 0
    """Iterations this instance has run before this one."""
    now: float = 0.0
    requests: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_id = {r.id: r for r in self.waiting}
        by_id.update((r.id, r) for r in self.running)
        object.__setattr__(self, "requests", by_id)
