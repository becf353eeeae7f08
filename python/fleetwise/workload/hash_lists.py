"""Per-request lists of KV-block hashes (``hash_ids``) as polars ``List(Int64)`` series, and their
compressed form: ``offsets`` (n + 1 int64 entries, request ``i``'s hashes are
``values[offsets[i]:offsets[i + 1]]``) and ``values`` (the concatenated hashes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

HASH_DTYPE = pl.List(pl.Int64)
"""The polars dtype of a ``hash_ids`` column."""


def lists_from_offsets(
    offsets: np.ndarray, values: np.ndarray, name: str = "hash_ids"
) -> pl.Series:
    """Build a ``List(Int64)`` series from ``offsets`` and ``values`` without a per-row loop.

    Uses pyarrow when it is installed (zero-copy), otherwise a polars group-by.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values):
        raise ValueError("offsets must start at 0 and end at len(values)")
    counts = np.diff(offsets)
    if np.any(counts < 0):
        raise ValueError("offsets must be non-decreasing")
    try:
        import pyarrow as pa
    except ImportError:
        return _lists_by_group(counts, values, name)
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int64()))
    return pl.Series(name, pl.from_arrow(array), dtype=HASH_DTYPE)


def _lists_by_group(counts: np.ndarray, values: np.ndarray, name: str) -> pl.Series:
    """``lists_from_offsets`` in pure polars: group the values by their row, then fill the rows
    that have no values with empty lists."""
    n = len(counts)
    row = np.repeat(np.arange(n, dtype=np.int64), counts)
    grouped = pl.DataFrame({"row": row, name: values}).group_by("row").agg(pl.col(name))
    return (
        pl.DataFrame({"row": np.arange(n, dtype=np.int64)})
        .join(grouped, on="row", how="left")
        .sort("row")
        .select(pl.col(name).fill_null(pl.lit([], dtype=HASH_DTYPE)))
        .to_series()
        .cast(HASH_DTYPE)
    )


def offsets_and_values(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The ``offsets`` and ``values`` of a ``List(Int64)`` series without nulls."""
    counts = lists.list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    # Empty lists are removed before exploding: depending on the polars version, exploding one
    # yields a null row or nothing.
    values = lists.filter(lists.list.len() > 0).explode().to_numpy().astype(np.int64, copy=False)
    return offsets, values


def as_hash_lists(raw: pl.Series | Sequence, n: int) -> pl.Series:
    """Normalise ``raw`` (a list-of-integers series, or a sequence of integer sequences or numpy
    arrays) to a ``List(Int64)`` series named ``hash_ids`` of length ``n``.

    Raises ``ValueError`` when the length differs from ``n``, an entry is missing (null) or not an
    integer.
    """
    if isinstance(raw, pl.Series):
        series = raw
    else:
        series = _lists_from_sequence(raw)
    if isinstance(series.dtype, pl.Array) and series.dtype.inner.is_integer():
        # Equal-length numpy arrays become a fixed-size Array column.
        series = series.cast(HASH_DTYPE)
    if not isinstance(series.dtype, pl.List) or not series.dtype.inner.is_integer():
        raise ValueError(f"Workload.hash_ids must be lists of integers, got {series.dtype}")
    if series.len() != n:
        raise ValueError(f"Workload.hash_ids has {series.len()} entries for {n} requests")
    if series.null_count():
        raise ValueError("Workload.hash_ids must not contain null (missing) lists")
    series = series.cast(HASH_DTYPE).rename("hash_ids")
    if int((series.list.len() - series.list.drop_nulls().list.len()).sum() or 0):
        raise ValueError("Workload.hash_ids must not contain null hashes")
    return series



def _lists_from_sequence(raw: Sequence) -> pl.Series:
    """A ``List(Int64)`` series from a sequence of integer sequences or arrays (one Python step per
    request: this is for user-built workloads, not for bulk data)."""
    arrays = []
    for index, item in enumerate(raw):
        if item is None:
            raise ValueError("Workload.hash_ids must not contain null (missing) lists")
        array = np.asarray(item)
        if array.size and array.dtype.kind not in "iu":
            raise ValueError(
                f"Workload.hash_ids[{index}] must be a list of int64 values, got {array.dtype}"
            )
        if array.size and array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
            raise ValueError(f"Workload.hash_ids[{index}] has a value that does not fit in int64")
        arrays.append(array.astype(np.int64).ravel())
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return lists_from_offsets(offsets, values)
