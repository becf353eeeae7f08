"""Shared-prefix groups: which requests (or sessions) start with which shared system prompt."""

from __future__ import annotations

import numpy as np

from fleetwise.workload.config import PrefixGroups


def assign_prefix_groups(n: int, cfg: PrefixGroups, rng: np.random.Generator) -> np.ndarray:
    """The shared-prefix group of each of ``n`` requests (or sessions): an int64 array holding a
    group in ``0 .. groups - 1`` with probability ``fraction`` (groups chosen uniformly), else -1.

    Both draws (membership, group) are made for every entry, so changing ``fraction`` does not
    change which group a member gets.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    member = rng.random(n) < cfg.fraction
    group = rng.integers(0, cfg.groups, size=n, dtype=np.int64)
    return np.where(member, group, np.int64(-1))


def prefix_blocks(cfg: PrefixGroups) -> int:
    """Blocks each shared prefix occupies: ``ceil(prefix_tokens / block_tokens)``."""
    return -(-cfg.prefix_tokens // cfg.block_tokens)
