"""Reading a run's request table a column or an aggregate at a time.

Every metric takes the request table eager (``pl.DataFrame``) or lazy (``pl.LazyFrame``, as
``fleetwise.simulate`` builds it: ``fleetwise.request_table``). These reads compute only the
columns they name, so the summaries of a 10M-request run never hold the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

FINISHED = pl.col("status") == "finished"
"""The requests that finished (the others were rejected or left unfinished)."""

Table = pl.DataFrame | pl.LazyFrame
"""A request table, eager or lazy."""


def column_names(requests: Table) -> list[str]:
    """The table's column names (a lazy table's without computing anything)."""
    return requests.lazy().collect_schema().names()


CHUNK_ROWS = 1 << 20
"""Rows of a lazy table computed at once by ``finished_column``."""


def finished_column(requests: Table, name: str, drop_nulls: bool = False) -> np.ndarray:
    """Column ``name`` of the finished requests, in request order (its nulls dropped when asked),
    as one writable array of its own (the caller may reorder it: ``distribution``). A lazy table
    is computed ``CHUNK_ROWS`` rows at a time, so a derived column never exists twice."""
    lf = requests.lazy()
    col = pl.col(name).filter(FINISHED)
    if drop_nulls:
        col = col.drop_nulls()
    counts = aggregates(lf, rows=pl.len(), finished=FINISHED.sum())
    dtype = lf.select(pl.col(name)).collect_schema()[name]
    out = np.empty(int(counts["finished"]), dtype=np.float64 if dtype.is_float() else pl.Series([], dtype=dtype).to_numpy().dtype)
    filled = 0
    for start in range(0, int(counts["rows"]), CHUNK_ROWS):
        part = lf.slice(start, CHUNK_ROWS).select(col).collect().to_series().to_numpy()
        out[filled:filled + len(part)] = part
        filled += len(part)
    return out[:filled]


def finished_columns(requests: Table, names: list[str], drop_nulls: frozenset[str] = frozenset()) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, finished_column(requests, name))`` for each of ``names`` in order (nulls dropped
    for those in ``drop_nulls``), one at a time: a table of at most ``CHUNK_ROWS`` rows read in one
    query, a longer one column by column as each is reached (so that a long table's derived
    columns never exist together). The same values in the same order as ``finished_column``,
    each a writable array of its own."""
    lf = requests.lazy()
    if aggregates(lf, rows=pl.len())["rows"] > CHUNK_ROWS:
        for name in names:
            yield name, finished_column(lf, name, name in drop_nulls)
        return
    frame = lf.filter(FINISHED).select(names).collect()
    for name in names:
        col = frame.get_column(name)
        col = col.drop_nulls() if name in drop_nulls else col
        yield name, col.to_numpy(writable=True).astype(np.float64, copy=False) if col.dtype.is_float() else col.to_numpy(writable=True)


def aggregates(table: Table, /, **exprs: pl.Expr) -> dict:
    """Each expression (an aggregate over the table, one value) by its keyword, in one query."""
    return table.lazy().select(**exprs).collect().row(0, named=True)
