"""``Workload``: the requests of one simulation as column arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from fleetwise.workload.hash_lists import as_hash_lists, offsets_and_values


@dataclass(frozen=True, eq=False)
class Workload:
    """The requests of one simulation: equal-length, read-only columns, one entry per request, in
    arrival order (request ``i`` is entry ``i``).

    ``arrival_ns``, ``prompt_tokens`` and ``output_tokens`` are what the simulator core consumes.
    ``hash_ids`` and ``session_id`` describe prompt sharing (for prefix caching); they are kept on
    the Python side and are ``None`` when the source has no such information. ``acceptance_class``
    names each request's class of speculative acceptance (``speculative.acceptance_classes``).
    """

    arrival_ns: np.ndarray
    """Arrival time of each request in nanoseconds, non-decreasing (int64)."""
    prompt_tokens: np.ndarray
    """Prompt (prefill) length of each request in tokens, >= 1 (int64)."""
    output_tokens: np.ndarray
    """Output (decode) length of each request in tokens, >= 1 (int64)."""
    hash_ids: pl.Series | Sequence | None = None
    """The hashes of each request's prompt KV blocks, in prompt order: equal hashes at the same
    position mean a shareable prefix. Stored as a polars ``List(Int64)`` series named
    ``hash_ids`` (a sequence of integer lists or numpy arrays is converted). ``None``: unknown."""
    session_id: np.ndarray | None = None
    """The multi-turn session each request belongs to (int64, -1 for a request in no session).
    ``None``: the source has no sessions."""
    acceptance_class: pl.Series | Sequence | None = None
    """The speculative-decoding acceptance class of each request, by name: the ``name`` of one of
    each speculating pool's ``acceptance_classes`` (``class i`` for the i-th, 0-based, of a class
    without a name), or null to draw it by the classes' shares. Stored as a polars ``String``
    series named ``acceptance_class``. ``None``: every request's class is drawn."""
    hash_block_tokens: int | None = None
    """Tokens each entry of ``hash_ids`` covers (512 in Mooncake traces; the generators'
    ``block_tokens``). ``None``: unknown, which prefix caching refuses."""
    selection: Mapping[str, int] | None = None
    """For a replayed trace: ``rows_read`` and how many rows each filter left out on purpose
    (``outside_window``, ``max_prompt_tokens``, ..., ``beyond_requests``, BurstGPT's ``failed``)
    and ``replayed``. ``None``: not a trace."""
    length_rows: Mapping[str, int] | None = None
    """For lengths sampled from or fitted to a file: ``rows_read``, how many rows were left out on
    purpose by reason (a vLLM bench result's or BurstGPT's ``failed``, ..., ``max_total_tokens``)
    and ``kept``. ``None``: no length file."""

    def __post_init__(self) -> None:
        for name in ("arrival_ns", "prompt_tokens", "output_tokens"):
            object.__setattr__(self, name, _int64_column(name, getattr(self, name)))
        n = len(self.arrival_ns)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError(
                "Workload arrays differ in length: "
                f"arrival_ns {n}, prompt_tokens {len(self.prompt_tokens)}, "
                f"output_tokens {len(self.output_tokens)}"
            )
        if n > 1 and bool(np.any(np.diff(self.arrival_ns) < 0)):
            raise ValueError("Workload.arrival_ns must be non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("Workload token counts must be >= 1")
        if self.hash_ids is not None:
            object.__setattr__(self, "hash_ids", as_hash_lists(self.hash_ids, n))
        if self.session_id is not None:
            session = _int64_column("session_id", self.session_id)
            if len(session) != n:
                raise ValueError(f"Workload.session_id has {len(session)} entries for {n} requests")
            if n and session.min() < -1:
                raise ValueError("Workload.session_id must be >= 0, or -1 for no session")
            object.__setattr__(self, "session_id", session)
        if self.acceptance_class is not None:
            names = self.acceptance_class
            if not isinstance(names, pl.Series):
                try:
                    names = pl.Series("acceptance_class", list(names), dtype=pl.String)
                except (TypeError, pl.exceptions.PolarsError):
                    raise ValueError("Workload.acceptance_class must be strings (class names) or None") from None
            if names.dtype not in (pl.String, pl.Categorical, pl.Enum, pl.Null):
                raise ValueError(f"Workload.acceptance_class must be strings (class names) or null, got {names.dtype}")
            if len(names) != n:
                raise ValueError(f"Workload.acceptance_class has {len(names)} entries for {n} requests")
            object.__setattr__(self, "acceptance_class", names.cast(pl.String).alias("acceptance_class"))

    def __len__(self) -> int:
        """The number of requests."""
        return len(self.arrival_ns)

    def hash_offsets_and_values(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``hash_ids`` in compressed form, or ``None`` without them: ``offsets`` (n + 1 int64
        entries) and ``values`` (all hashes concatenated), request ``i``'s hashes being
        ``values[offsets[i]:offsets[i + 1]]``."""
        if self.hash_ids is None:
            return None
        return offsets_and_values(self.hash_ids)

    def to_frame(self) -> pl.DataFrame:
        """The requests as a frame with int64 columns ``request_id`` (0, 1, ...), ``arrival_ns``,
        ``prompt_tokens`` and ``output_tokens``, followed by ``session_id`` (int64) and
        ``hash_ids`` (list of int64) and ``acceptance_class`` (string) when present.

        ``workload.to_frame().write_parquet(path)`` writes a trace in fleetwise's native Parquet
        format (``request_id`` is ignored when it is read back).
        """
        columns: dict[str, object] = {
            "request_id": np.arange(len(self), dtype=np.int64),
            "arrival_ns": self.arrival_ns,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.session_id is not None:
            columns["session_id"] = self.session_id
        frame = pl.DataFrame(columns)
        if self.hash_ids is not None:
            frame = frame.with_columns(self.hash_ids.alias("hash_ids"))
        if self.acceptance_class is not None:
            frame = frame.with_columns(self.acceptance_class)
        return frame


def _int64_column(name: str, values: object) -> np.ndarray:
    """``values`` as a new read-only 1-D int64 array."""
    array = np.array(values, dtype=np.int64, copy=True)
    if array.ndim != 1:
        raise ValueError(f"Workload.{name} must be 1-D, got shape {array.shape}")
    array.setflags(write=False)
    return array
