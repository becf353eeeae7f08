"""A deployment's per-request log, read into one typed frame (``RequestLog``), one reader per format:

* ``vllm_bench.py``: ``vllm bench serve --save-result --save-detailed`` JSON (format ``vllm-bench``);
* ``table.py``: a generic per-request CSV / JSON Lines / Parquet table (format ``table``);
* ``fleetwise_run.py``: fleetwise's own ``requests.parquet`` (format ``fleetwise``).

``read_request_log`` picks the reader from the file (or the ``format`` given). ``fleetwise validate``
and ``fleetwise calibrate --requests`` replay what these return (docs/calibration.md).
"""

from __future__ import annotations

from pathlib import Path

from fleetwise.requestlog.fleetwise_run import is_fleetwise_requests, read_fleetwise_log
from fleetwise.requestlog.log import RequestLog
from fleetwise.requestlog.table import read_table_log
from fleetwise.requestlog.vllm_bench import read_vllm_bench_log

FORMATS = ("vllm-bench", "table", "fleetwise")
"""The log formats, by reader name."""

__all__ = ["FORMATS", "RequestLog", "read_request_log", "read_vllm_bench_log", "read_table_log", "read_fleetwise_log"]


def read_request_log(path: str | Path, format: str | None = None, select: dict[str, str] | None = None) -> RequestLog:
    """Read the per-request log at ``path`` with the reader for ``format`` (``None``: by the file:
    ``.json`` is a vLLM benchmark result, a Parquet file with fleetwise's ``requests.parquet``
    columns is a fleetwise run, any other ``.csv``/``.jsonl``/``.ndjson``/``.parquet`` a per-request
    table). ``select`` (column -> value) keeps matching rows of a table. Raises ``TraceError`` for a
    malformed file and ``ConfigError`` for an unknown format or a ``select`` a format cannot apply."""
    from fleetwise.errors import ConfigError

    path = Path(path)
    if format is None:
        format = _detect(path)
    if format not in FORMATS:
        raise ConfigError(f"unknown request log format {format!r}; allowed: {', '.join(FORMATS)}")
    if select and format != "table":
        raise ConfigError(f"{path}: selecting rows (--select) applies to a per-request table, not a {format} log")
    if format == "vllm-bench":
        return read_vllm_bench_log(path)
    if format == "fleetwise":
        return read_fleetwise_log(path)
    return read_table_log(path, select)


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; a ``TraceError`` naming it when it cannot be looked at (a name too long)."""
    from fleetwise.errors import TraceError
    from fleetwise.paths import path_kind

    return path_kind(path, "request log", TraceError) == "file"


def _detect(path: Path) -> str:
    """The format of ``path`` by its extension (and, for Parquet, its columns)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "vllm-bench"
    if suffix in (".parquet", ".pq") and _is_file(path):
        import polars as pl

        try:
            columns = list(pl.read_parquet_schema(path))
        except Exception:  # unreadable: let the table reader report it
            return "table"
        return "fleetwise" if is_fleetwise_requests(columns) else "table"
    return "table"
