"""Reading a run's request table a column or an aggregate at a time.

Every metric takes the request table eager (``pl.DataFrame``) or lazy (``pl.LazyFrame``, as
``fleetwise.simulate`` builds it: ``fleetwise.request_table``). These reads compute only the
columns they name, so the summaries of a 10M-request run never hold the whole table.
"""

from __future__ import annotations

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


def aggregates(table: Table, /, **exprs: pl.Expr) -> dict:
    """Each expression (an aggregate over the table, one value) by its keyword, in one query."""
    return table.lazy().select(**exprs).collect().row(0, named=True)
