"""The router's approximate prefix index: which prompt prefixes it has sent to which endpoint.

Like vllm-router's cache-aware policy (and llm-d's approximate prefix scorer), the router does
not ask engines what they cache; it remembers what it sent. A prompt is cut into blocks of
``block_chars`` characters and each block gets a chained hash (``fleetwise.serve.text.prefix_hashes``);
an endpoint "has" a prefix when it was sent a prompt with the same leading hashes. The matched
length is reported in approximate tokens (``block_chars / CHARS_PER_TOKEN`` per block). Each
endpoint keeps at most ``capacity_blocks`` hashes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from fleetwise.serve.text import CHARS_PER_TOKEN


class PrefixIndex:
    """Per-endpoint LRU sets of chained prompt-block hashes."""

    def __init__(self, endpoints: int, block_chars: int = 64, capacity_blocks: int = 1 << 20):
        if block_chars < 1:
            raise ValueError("block_chars must be at least 1")
        self.block_chars = block_chars
        self.block_tokens = max(block_chars // CHARS_PER_TOKEN, 1)
        self.capacity = capacity_blocks
        self.sets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(endpoints)]

    def matched_blocks(self, endpoint: int, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` that ``endpoint`` was sent before."""
        s = self.sets[endpoint]
        n = 0
        for h in hashes:
            if h not in s:
                break
            n += 1
        return n

    def cached_tokens(self, endpoint: int, hashes: Sequence[int]) -> int:
        """Approximate prompt tokens ``endpoint`` probably has cached."""
        return self.matched_blocks(endpoint, hashes) * self.block_tokens

    def insert(self, endpoint: int, hashes: Sequence[int]) -> None:
        """Records that ``endpoint`` was sent a prompt with these block hashes."""
        s = self.sets[endpoint]
        for h in hashes:
            if h in s:
                s.move_to_end(h)
            else:
                s[h] = None
        while len(s) > self.capacity:
            s.popitem(last=False)
