"""Turning a ``WorkloadConfig`` into a ``Workload``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.workload._files import resolve_path
from fleetwise.workload.mooncake import MOONCAKE_BLOCK_TOKENS
from fleetwise.workload.arrivals import generate_arrivals
from fleetwise.workload.blocks import compose_prompts
from fleetwise.workload.config import FileLengths, FitLengths, GeneratedArrivals, TraceArrivals, WorkloadConfig
from fleetwise.workload.hash_lists import lists_from_offsets
from fleetwise.workload.lengths import sample_lengths
from fleetwise.workload.prefixes import assign_prefix_groups
from fleetwise.workload.requests import Workload
from fleetwise.workload.sessions import session_arrivals, session_turns
from fleetwise.workload.traces import replay_frame

__all__ = ["Workload", "build_workload"]

# Sub-stream keys of np.random.default_rng([seed, key]): each purpose draws from its own stream, so
# changing one aspect of the workload never moves the others. Never reuse a key for a new purpose.
_ARRIVAL_STREAM = 1
"""Arrival times (of requests, or of session starts with ``sessions``)."""
_LENGTH_STREAM = 2
"""Prompt and output lengths (new tokens per turn, with ``sessions``)."""
_PREFIX_STREAM = 3
"""Shared-prefix group membership and choice."""
_TURNS_STREAM = 4
"""Number of turns per session."""
_THINK_STREAM = 5
"""Think times between the turns of a session."""


def _rng(seed: int, key: int) -> np.random.Generator:
    return np.random.default_rng([seed, key])


def build_workload(
    cfg: WorkloadConfig, seed: int, base_dir: Path | None = None, context_tokens: int | None = None
) -> Workload:
    """Generate (synthetic arrivals) or load (trace arrivals) the requests ``cfg`` describes.

    ``seed`` makes the result deterministic; each purpose draws from its own stream
    ``np.random.default_rng([seed, key])``: arrivals key 1, lengths 2, prefix groups 3, session
    turn counts 4, think times 5. Relative file paths are resolved against ``base_dir`` (the
    scenario file's directory) first, then the current directory; a file found in neither raises
    ``ConfigError``. A malformed file raises ``TraceError``.

    With ``sessions``, the arrival process gives the sessions' first turns and the workload is
    sorted by arrival (stable), so a session's turns are interleaved with other sessions'.
    ``hash_ids`` are set when the trace has them or ``prefixes`` / ``sessions`` is given;
    ``session_id`` when the trace has it or ``sessions`` is given.

    ``context_tokens`` (the longest context any model of the cluster serves) bounds the work and
    memory spent on prompt structure: a request's generated ``hash_ids`` cover at most its first
    ``context_tokens`` tokens, since a longer request can never run. Whatever it is, generated
    hashes beyond ``MAX_HASH_ENTRIES`` in all raise ``ConfigError`` before they are allocated.
    Running out of memory (``MemoryError``: ``requests`` near ``MAX_REQUESTS`` on a small machine)
    raises ``ConfigError`` naming the field that sets the size, not a traceback.
    """
    try:
        return _build(cfg, seed, base_dir, context_tokens)
    except MemoryError:
        pass  # leave the handler first, so that the arrays it was building are freed
    from fleetwise.errors import ConfigError

    if isinstance(cfg.arrivals, TraceArrivals):
        field, what = "workload.arrivals.path", f"the trace {cfg.arrivals.path}"
        hint = "replay fewer of its rows (workload.requests, workload.arrivals.duration_s)"
    else:
        field, what = "workload.requests", f"{cfg.requests:,} requests"
        hint = "lower workload.requests"
    raise ConfigError(f"{field}: building {what} ran out of memory; {hint}")


def _build(
    cfg: WorkloadConfig, seed: int, base_dir: Path | None, context_tokens: int | None
) -> Workload:
    """``build_workload`` itself (which turns its ``MemoryError`` into a ``ConfigError``)."""
    arrivals = cfg.arrivals
    if isinstance(arrivals, TraceArrivals):
        return _replay_trace(cfg, arrivals, seed, base_dir, context_tokens)
    if not isinstance(arrivals, GeneratedArrivals):
        raise TypeError(f"unknown arrival process {type(arrivals).__name__}")
    assert cfg.lengths is not None and cfg.requests is not None  # enforced by WorkloadConfig
    n = cfg.requests
    if cfg.sessions is not None:
        turns = session_turns(n, cfg.sessions.turns_mean, _rng(seed, _TURNS_STREAM))
    else:
        turns = np.ones(n, dtype=np.int64)
    starts = generate_arrivals(arrivals, len(turns), _rng(seed, _ARRIVAL_STREAM))
    length_rows: dict[str, int] | None = {} if isinstance(cfg.lengths, (FileLengths, FitLengths)) else None
    new_tokens, output = sample_lengths(cfg.lengths, n, _rng(seed, _LENGTH_STREAM), base_dir, length_rows)
    if cfg.sessions is None and cfg.prefixes is None:
        return Workload(arrival_ns=starts, prompt_tokens=new_tokens, output_tokens=output, length_rows=length_rows)

    if cfg.sessions is not None:
        arrival = session_arrivals(
            starts, turns, cfg.sessions.think_time_s, _rng(seed, _THINK_STREAM)
        )
    else:
        arrival = starts
    with_sessions = cfg.sessions is not None
    workload = _compose(cfg, seed, arrival, turns, new_tokens, output, with_sessions, context_tokens)
    return dataclasses.replace(workload, length_rows=length_rows)


def _compose(
    cfg: WorkloadConfig,
    seed: int,
    arrival: np.ndarray,
    turns: np.ndarray,
    new_tokens: np.ndarray,
    output: np.ndarray,
    with_sessions: bool,
    context_tokens: int | None = None,
) -> Workload:
    """Build prompts and hashes for requests given session by session, then sort by arrival."""
    prefixes = cfg.prefixes
    block_tokens = (cfg.sessions or prefixes).block_tokens  # equal when both are set
    groups = None
    if prefixes is not None:
        groups = assign_prefix_groups(len(turns), prefixes, _rng(seed, _PREFIX_STREAM))
    composed = compose_prompts(
        turns,
        new_tokens,
        output,
        block_tokens,
        groups=groups,
        prefix_tokens=prefixes.prefix_tokens if prefixes else 0,
        group_count=prefixes.groups if prefixes else 0,
        max_blocks=None if context_tokens is None else -(-context_tokens // block_tokens),
    )
    longest = int(composed.prompt_tokens.max()) if len(composed.prompt_tokens) else 0
    if longest > MAX_TOKENS:
        from fleetwise.errors import ConfigError

        grows = "sessions (each turn resends the conversation so far)" if with_sessions else "prefixes"
        raise ConfigError(
            f"workload: with {grows} a prompt reaches {longest:,} tokens; at most {MAX_TOKENS:,} "
            "are allowed: lower sessions.turns_mean, the lengths or prefixes.prefix_tokens"
        )
    order = np.argsort(arrival, kind="stable")
    offsets, values = composed.hash_lists(order)
    session = np.repeat(np.arange(len(turns), dtype=np.int64), turns)
    return Workload(
        arrival_ns=arrival[order],
        prompt_tokens=composed.prompt_tokens[order],
        output_tokens=output[order],
        hash_ids=lists_from_offsets(offsets, values),
        session_id=session[order] if with_sessions else None,
        hash_block_tokens=block_tokens,
    )


def _replay_trace(
    cfg: WorkloadConfig,
    arrivals: TraceArrivals,
    seed: int,
    base_dir: Path | None,
    context_tokens: int | None = None,
) -> Workload:
    path = resolve_path(arrivals.path, base_dir, "workload.arrivals.path")
    selection: dict[str, int] = {}
    frame = replay_frame(arrivals, path, cfg.requests, selection)
    arrival = frame["arrival_ns"].to_numpy()
    prompt = frame["prompt_tokens"].to_numpy()
    output = frame["output_tokens"].to_numpy()
    session_id = frame["session_id"].to_numpy() if "session_id" in frame.columns else None
    classes = frame["acceptance_class"] if "acceptance_class" in frame.columns else None
    if "hash_ids" not in frame.columns and arrivals.hash_block_tokens is not None:  # a setting that would do nothing
        from fleetwise.errors import ConfigError

        raise ConfigError(f"workload.arrivals.hash_block_tokens: the trace {path} has no hash_ids column, so there are no prefix blocks to size; leave it out")
    if cfg.prefixes is not None:
        if "hash_ids" in frame.columns:
            from fleetwise.errors import ConfigError

            raise ConfigError(
                f"workload.prefixes: prefixes cannot be added to the trace {path}: it has its own "
                "hash_ids; remove workload.prefixes"
            )
        workload = _compose(
            cfg, seed, arrival, np.ones(len(arrival), dtype=np.int64), prompt, output, False,
            context_tokens,
        )
        return dataclasses.replace(
            workload,
            session_id=session_id if session_id is not None else workload.session_id,
            acceptance_class=classes,
            selection=selection,
        )
    hash_ids: pl.Series | None = frame["hash_ids"] if "hash_ids" in frame.columns else None
    block = arrivals.hash_block_tokens or (MOONCAKE_BLOCK_TOKENS if arrivals.format == "mooncake" else None)
    return Workload(
        arrival_ns=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        hash_ids=hash_ids,
        session_id=session_id,
        hash_block_tokens=block if hash_ids is not None else None,
        acceptance_class=classes,
        selection=selection,
    )
