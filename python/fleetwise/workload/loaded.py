"""``LoadedTable``: a reader's result together with the rows it dropped on purpose."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl


@dataclass(frozen=True)
class LoadedTable:
    """What a reader that skips some well-formed rows (failed requests, other models) returns:
    the kept requests and how many rows were skipped for each reason. Nothing is logged or
    warned; callers that want to report the drops read ``dropped``."""

    frame: pl.DataFrame
    """The kept requests, in the reader's usual columns."""
    rows_read: int
    """Number of data rows (requests) in the file, kept or not."""
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Rows skipped, by reason (e.g. ``{"failed": 12, "other_model": 300}``); reasons with no
    rows are listed with 0."""
