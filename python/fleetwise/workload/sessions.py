"""Multi-turn sessions: how many turns each session has and when its later turns arrive."""

from __future__ import annotations

import math

import numpy as np

from fleetwise.config.limits import MAX_TIME_NS


def session_turns(n: int, turns_mean: float, rng: np.random.Generator) -> np.ndarray:
    """The number of turns of each session, for ``n`` requests in all (int64, sums to ``n``).

    Turn counts are geometric on ``1, 2, ...`` with mean ``turns_mean`` (success probability
    ``1 / turns_mean``), drawn in batches until they cover ``n`` requests; the last session is cut
    short to make the total exactly ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (math.isfinite(turns_mean) and turns_mean >= 1):
        raise ValueError(f"turns_mean must be a finite number >= 1, got {turns_mean}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    p = 1.0 / turns_mean
    batch = math.ceil(n / turns_mean) + 16
    parts: list[np.ndarray] = []
    total = 0
    while total < n:
        draw = rng.geometric(p, size=batch).astype(np.int64)
        parts.append(draw)
        total += int(draw.sum())
    turns = np.concatenate(parts)
    ends = np.cumsum(turns)
    count = int(np.searchsorted(ends, n)) + 1  # sessions needed to reach n requests
    turns = turns[:count]
    turns[-1] -= int(ends[count - 1]) - n
    return turns


def session_arrivals(
    starts_ns: np.ndarray, turns: np.ndarray, think_time_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrival times (int64 ns) of every turn, session by session (session ``s``'s turns are
    consecutive entries, in turn order; the result is not sorted across sessions).

    Session ``s``'s first turn arrives at ``starts_ns[s]``; each later turn arrives an exponential
    think time with mean ``think_time_s`` after the previous turn's arrival (open loop: the previous
    turn's completion is not awaited). One think time is drawn per request (first turns' draws are
    unused), so the draws do not depend on how requests split into sessions.
    """
    starts_ns = np.asarray(starts_ns, dtype=np.int64)
    turns = np.asarray(turns, dtype=np.int64)
    if len(starts_ns) != len(turns):
        raise ValueError(f"{len(starts_ns)} session starts for {len(turns)} sessions")
    if not (math.isfinite(think_time_s) and think_time_s >= 0):
        raise ValueError(f"think_time_s must be a finite number >= 0, got {think_time_s}")
    n = int(turns.sum())
    session = np.repeat(np.arange(len(turns)), turns)
    first = np.cumsum(turns) - turns  # index of each session's first turn
    think_ns = rng.exponential(scale=think_time_s * 1e9, size=n)
    think_ns[first[turns > 0]] = 0.0
    elapsed = np.cumsum(think_ns)
    # Segmented cumulative sum: subtract what had elapsed before the session's first turn.
    since_start = elapsed - elapsed[first[session]]
    if n and not (starts_ns[session] + since_start <= MAX_TIME_NS).all():
        from fleetwise.errors import ConfigError

        raise ConfigError(
            f"workload.sessions.think_time_s: turns {think_time_s:g} s apart arrive past the "
            f"{MAX_TIME_NS / 1e9:.3g} s the simulator's clock allows; lower think_time_s or turns_mean"
        )
    return starts_ns[session] + np.rint(since_start).astype(np.int64)
