"""Prompt lengths and KV-block hashes of requests built from sessions and shared prefixes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetwise.config.limits import MAX_HASH_ENTRIES


@dataclass(frozen=True)
class ComposedPrompts:
    """Prompts composed by ``compose_prompts``, one entry per request in session-major order."""

    prompt_tokens: np.ndarray
    """Full prompt length of each request (int64), shared prefix and earlier turns included."""
    session_hashes: np.ndarray
    """Every session's block-hash sequence, concatenated (int64)."""
    hash_start: np.ndarray
    """Where each request's hashes start in ``session_hashes`` (its session's first block)."""
    hash_count: np.ndarray
    """How many hashes each request has: ``ceil(prompt_tokens / block_tokens)``."""

    def hash_lists(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``(offsets, values)`` of the hash lists of ``rows`` (default: all requests), in
        that order: request ``rows[i]``'s hashes are ``values[offsets[i]:offsets[i + 1]]``."""
        start, count = self.hash_start, self.hash_count
        if rows is not None:
            start, count = start[rows], count[rows]
        offsets = np.zeros(len(count) + 1, dtype=np.int64)
        np.cumsum(count, out=offsets[1:])
        source = np.repeat(start - offsets[:-1], count) + np.arange(offsets[-1], dtype=np.int64)
        return offsets, self.session_hashes[source]


def compose_prompts(
    turns: np.ndarray,
    new_tokens: np.ndarray,
    output_tokens: np.ndarray,
    block_tokens: int,
    groups: np.ndarray | None = None,
    prefix_tokens: int = 0,
    group_count: int = 0,
    max_blocks: int | None = None,
) -> ComposedPrompts:
    """Compose the prompts of sessions of requests.

    Requests come session by session (session ``s`` has ``turns[s] >= 1`` consecutive entries, in
    turn order). A first turn's prompt is its ``new_tokens``, plus ``prefix_tokens`` when its
    session's ``groups`` entry is a group (not -1); turn ``j > 1``'s prompt is turn ``j - 1``'s
    prompt + output + its own ``new_tokens``.

    Each session owns one sequence of block hashes, ``ceil(final prompt / block_tokens)`` long, and
    each turn's ``hash_ids`` are its first ``ceil(prompt / block_tokens)`` entries, so a turn's
    hashes extend the previous turn's. In a session of group ``g`` the first ``P =
    ceil(prefix_tokens / block_tokens)`` entries are ``g * P, ..., g * P + P - 1`` (shared by the
    group); every other entry is a hash used by no other session (numbered from
    ``group_count * P`` up).

    ``max_blocks`` (when given) caps every request's ``hash_ids`` at that many entries: the hashes
    of the tokens past it are not built (a caller passes the longest context any model serves, in
    blocks, as a longer request can never run). Raises ``ConfigError`` before allocating them when
    all requests together would need more than ``MAX_HASH_ENTRIES`` hashes.
    """
    turns = np.asarray(turns, dtype=np.int64)
    new_tokens = np.asarray(new_tokens, dtype=np.int64)
    output_tokens = np.asarray(output_tokens, dtype=np.int64)
    if np.any(turns < 1):
        raise ValueError("every session needs at least one turn")
    n, sessions = int(turns.sum()), len(turns)
    if len(new_tokens) != n or len(output_tokens) != n:
        raise ValueError(f"{len(new_tokens)} lengths for {n} requests")
    session = np.repeat(np.arange(sessions), turns)
    first = np.cumsum(turns) - turns
    last = first + turns - 1
    head = np.zeros(n, dtype=bool)
    head[first] = True

    increment = new_tokens.copy()
    previous_output = np.concatenate([[0], output_tokens[:-1]]).astype(np.int64)
    increment[~head] += previous_output[~head]
    shared_blocks = np.zeros(sessions, dtype=np.int64)
    prefix_block_count = -(-prefix_tokens // block_tokens) if groups is not None else 0
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        grouped = groups >= 0
        increment[first] += np.where(grouped, prefix_tokens, 0)
        shared_blocks = np.where(grouped, prefix_block_count, 0)
    total = np.cumsum(increment)
    prompt = total - (total[first] - increment[first])[session]

    blocks = -(-prompt // block_tokens)
    if max_blocks is not None:
        blocks = np.minimum(blocks, max_blocks)
        shared_blocks = np.minimum(shared_blocks, max_blocks)
    session_blocks = blocks[last]
    _check_hash_budget(int(blocks.sum()), int(session_blocks.sum()), block_tokens)
    unique_blocks = session_blocks - shared_blocks
    unique_base = group_count * prefix_block_count + np.cumsum(unique_blocks) - unique_blocks
    session_offset = np.cumsum(session_blocks) - session_blocks
    owner = np.repeat(np.arange(sessions), session_blocks)
    position = np.arange(int(session_blocks.sum()), dtype=np.int64) - session_offset[owner]
    shared = shared_blocks[owner]
    group_of = groups[owner] if groups is not None else np.zeros_like(owner)
    group_base = group_of * prefix_block_count
    session_hashes = np.where(
        position < shared, group_base + position, unique_base[owner] + position - shared
    )

    return ComposedPrompts(
        prompt_tokens=prompt,
        session_hashes=session_hashes,
        hash_start=session_offset[session],
        hash_count=blocks,
    )


def _check_hash_budget(request_hashes: int, session_hashes: int, block_tokens: int) -> None:
    """``ConfigError`` when the hash lists would hold more than ``MAX_HASH_ENTRIES`` entries."""
    need = max(request_hashes, session_hashes)
    if need <= MAX_HASH_ENTRIES:
        return
    from fleetwise.errors import ConfigError

    raise ConfigError(
        f"workload: the prompts' prefix-block hashes (hash_ids, one per {block_tokens} tokens of "
        f"every prompt) would need {need:,} entries ({need * 8 / 2**30:.1f} GiB); at most "
        f"{MAX_HASH_ENTRIES:,} are allowed: lower workload.requests, the prompt lengths, "
        "prefixes.prefix_tokens or sessions.turns_mean, or raise block_tokens"
    )
