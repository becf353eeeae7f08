"""A request's state in the reference model and the paged KV cache it holds blocks of."""

from __future__ import annotations

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
        "instance", "status", "first_scheduled", "first_token", "completion", "preemptions", "split_chunks",
        "reservation_waits", "handoff_waits", "transfer_start", "transfer_end", "draft",
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
        self.first_scheduled: int | None = None  # when an iteration first included it
        self.first_token: int | None = None
        self.completion: int | None = None
        self.preemptions = 0
        self.split_chunks = 0  # prefill chunks that left part of the pending tokens for later
        self.reservation_waits = 0  # Orca admissions stopped at it for want of KV blocks
        self.handoff_waits = 0  # 1 if its handoff found no decode instance with room and waited
        self.transfer_start: int | None = None  # its KV flow to a decode instance
        self.transfer_end: int | None = None
        self.draft = 0  # draft tokens its decode proposes this step (speculative decoding)

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

    def __init__(self, total: int, block_size: int, window: int | None = None) -> None:
        """A cache of ``total`` blocks of ``block_size`` tokens, keeping 1% free on admission; a
        request of a model with a sliding attention ``window`` holds at most the window's blocks."""
        self.total = total
        self.block_size = block_size
        self.watermark = int(total * _WATERMARK_FRACTION)
        self.used = 0
        self.window_blocks = None if window is None else -(-window // block_size) + 1

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold ``tokens`` tokens (at most the window's ceil(window / block) + 1)."""
        blocks = -(-tokens // self.block_size)
        return blocks if self.window_blocks is None else min(blocks, self.window_blocks)

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


# One request's share of an iteration: (request, tokens, is_decode), in the order the scheduler
# adds them. Decodes compute the one token sampled last; everything else is a prefill chunk.
Item = tuple[ReferenceRequest, int, bool]
