"""What a policy sees: read-only views of requests, endpoints and one scheduling step.

The simulator builds these from its own state and a real engine (vLLM, ``fleetwise serve-router``)
from its own, so one policy object runs unchanged in both. Views are frozen: a policy reads them
and answers with a decision (``fleetwise.policy.decisions``); it never changes them.
"""

from __future__ import annotations

from typing import Hashable, Literal, NamedTuple

Role = Literal["mixed", "prefill", "decode"]
"""What an endpoint serves: both phases, prompts only, or generation only (disaggregation)."""


class RequestView(NamedTuple):
    """One request as a policy sees it (an immutable named tuple: cheap to build each step).

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
    """Prompt tokens held in the prefix cache that the request references: those found on
    admission, then (in the simulator) its own as its prefill caches them."""
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


class EndpointView(NamedTuple):
    """One serving instance (a simulated instance, or a real engine behind a router); an immutable
    named tuple."""

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


class StepView:
    """The state a batch scheduler plans one iteration from.

    ``waiting`` is in queue order (preempted requests first, as engines re-queue them);
    ``running`` in admission order (oldest first). Read-only. An engine may hand over plain rows
    (:meth:`from_rows`): the request views are then built only if the policy reads them, so a
    policy that plans from counts alone costs next to nothing per step.
    """

    __slots__ = ("_waiting", "_running", "_rows", "_requests", "free_blocks", "total_blocks", "block_size", "step", "now")

    def __init__(self, waiting: tuple = (), running: tuple = (), free_blocks: int = 0, total_blocks: int = 0, block_size: int = 16, step: int = 0, now: float = 0.0):
        self._waiting, self._running, self._rows, self._requests = tuple(waiting), tuple(running), None, None
        self.free_blocks, self.total_blocks, self.block_size, self.step = free_blocks, total_blocks, block_size, step
        self.now = now
        """The engine's clock in seconds (simulated time in the simulator), same clock as ``arrival``."""

    @classmethod
    def from_rows(cls, make, waiting_rows, running_rows, free_blocks: int, total_blocks: int, block_size: int, step: int, now: float = 0.0) -> "StepView":
        """A view whose requests ``make(row)`` builds on first access."""
        v = cls((), (), free_blocks, total_blocks, block_size, step, now)
        v._rows = (make, waiting_rows, running_rows)
        v._waiting = v._running = None
        return v

    def _build(self) -> None:
        make, w, r = self._rows
        self._waiting, self._running, self._rows = tuple(map(make, w)), tuple(map(make, r)), None

    @property
    def waiting(self) -> tuple[RequestView, ...]:
        """Requests without KV, in queue order."""
        if self._waiting is None:
            self._build()
        return self._waiting

    @property
    def running(self) -> tuple[RequestView, ...]:
        """Requests holding KV, oldest admission first."""
        if self._running is None:
            self._build()
        return self._running

    @property
    def num_waiting(self) -> int:
        """How many requests wait (without building their views)."""
        return len(self._rows[1]) if self._rows is not None else len(self._waiting)

    @property
    def num_running(self) -> int:
        """How many requests run (without building their views)."""
        return len(self._rows[2]) if self._rows is not None else len(self._running)

    @property
    def requests(self) -> dict:
        """Every request of the view by id."""
        if self._requests is None:
            by_id = {r.id: r for r in self.waiting}
            by_id.update((r.id, r) for r in self.running)
            self._requests = by_id
        return self._requests

    def _key(self):
        return (self.waiting, self.running, self.free_blocks, self.total_blocks, self.block_size, self.step)

    def __eq__(self, other) -> bool:
        return isinstance(other, StepView) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"StepView(waiting={self.num_waiting}, running={self.num_running}, free_blocks={self.free_blocks}, total_blocks={self.total_blocks}, block_size={self.block_size}, step={self.step}, now={self.now})"
