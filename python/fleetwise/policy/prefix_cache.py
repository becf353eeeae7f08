"""Prefix cache policies: which idle cached prompt prefix to evict when KV blocks are needed.

The engine keeps the prefix cache itself (vLLM's automatic prefix caching; the simulator's
block-hash cache): entries a running request references are never evicted, and the policy is asked
only to choose among the idle ones. Each entry is one block hash of the prompt (chained, so equal
hashes mean equal prefixes).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True, slots=True)
class CachedPrefixView:
    """An idle cached prefix entry."""

    hash: int
    last_use: int
    """When it was last released, as a counter of cache events (larger is more recent)."""
    hits: int
    """Requests that found it cached."""


@runtime_checkable
class PrefixCachePolicy(Protocol):
    """Chooses the idle prefix entry to evict."""

    def victim(self, idle: Sequence[CachedPrefixView]) -> int:
        """The hash of the entry to evict; ``idle`` is least recently released first, never empty."""
        ...


class LruPrefixCache:
    """Least recently used first (vLLM's and the simulator's default)."""

    def victim(self, idle):
        """The least recently released entry."""
        return min(idle, key=lambda e: e.last_use).hash


class LfuPrefixCache:
    """Fewest hits first, ties to the least recently used: keeps popular system prompts longer."""

    def victim(self, idle):
        """The entry with the fewest hits (then the oldest)."""
        return min(idle, key=lambda e: (e.hits, e.last_use)).hash


class PrefixCacheBridge:
    """Calls a PrefixCachePolicy for the core; ``label`` names it in messages, ``clock`` notes
    each call (for the per-call time limit)."""

    def __init__(self, policy, label: str = "the prefix cache policy", clock=None):
        from fleetwise.policy.watchdog import CallClock

        self.policy = policy
        self.label = label
        self.clock = clock or CallClock()
        self._what = f"{label}: victim()"

    def victim(self, rows: Sequence) -> int:
        """The core's ``IdlePrefixRow``s (hash, last_use, hits) in, the hash to evict out."""
        from fleetwise.policy.bridge import PolicyAnswerError

        clock = self.clock
        clock.calls += 1
        clock.busy = self._what
        try:
            h = self.policy.victim([CachedPrefixView(r.hash, r.last_use, r.hits) for r in rows])
            # Checking the answer may run the policy's own code (an int subclass's methods): still
            # under the per-call time limit.
            if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 0 <= int(h) < 2**64:
                raise PolicyAnswerError(f"must return the hash (an int) of one of the idle entries, got {h!r}"[:300])
            h = int(h)
        finally:
            clock.busy = None
        # Checked here, against the core's own rows (the policy may have changed its list), so that
        # the error names the policy and its instance.
        if not any(r.hash == h for r in rows):
            raise PolicyAnswerError(f"chose to evict {h}, which is not one of the {len(rows)} idle entries it was offered")
        return h
