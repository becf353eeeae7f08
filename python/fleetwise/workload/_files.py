"""Locating and reading the user-supplied text files a workload is built from.

The readers here keep the physical 1-based line number of every row, so that a malformed value
can be reported as ``path: line N: ...`` even when the file contains blank lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import polars as pl
from polars.exceptions import PanicException

from fleetwise.config.limits import MAX_TEXT_TRACE_BYTES, MAX_TIME_NS, MAX_TOKENS

POLARS_ERRORS = (Exception, PanicException)
"""What a polars reader raises on a malformed file: its errors, and a Rust panic (a
``BaseException``, which ``except Exception`` would let through)."""


def resolve_path(raw: str, base_dir: Path | None, field: str | None = None) -> Path:
    """Return the existing file that ``raw`` names.

    A relative path is tried against ``base_dir`` (the scenario file's directory) first, then
    against the current directory. Raises ``ConfigError`` (starting with ``field``, the scenario
    field that named it, if given) naming every path tried when none is a regular file.
    """
    from fleetwise.errors import ConfigError
    from fleetwise.paths import path_kind, resolved

    where = f"{field}: " if field else ""
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ~user of no such user: the path as written (not found below)
        path = Path(raw)
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [base_dir / path] if base_dir is not None else []
        cwd_candidate = Path.cwd() / path
        if all(resolved(c, f"{where}workload file") != resolved(cwd_candidate, f"{where}workload file") for c in candidates):
            candidates.append(cwd_candidate)
    # A name too long or a directory on the way that cannot be searched is an error naming it.
    kinds: list = []
    for candidate in candidates:
        kinds.append(path_kind(candidate, f"{where}workload file"))
        if kinds[-1] == "file":
            return candidate
    for candidate, kind in zip(candidates, kinds):
        if kind == "dir":
            raise ConfigError(f"{where}workload file {raw!r}: {candidate} is a directory, not a file")
        if kind == "other":  # a FIFO, device or socket: reading it could block or never end
            raise ConfigError(f"{where}workload file {raw!r}: {candidate} is not a regular file (a pipe, device or socket); give a file")
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{where}workload file {raw!r} not found (tried {tried}); public traces are not shipped with fleetwise: "
                      "traces/README.md says where to download each one")


Problem = tuple[int, str]
"""A malformed value: its 0-based data row and a description."""


@dataclass(frozen=True)
class TextTable:
    """A comma-separated file read as strings, one polars column per header field."""

    path: Path
    """The file the table was read from (used in error messages)."""
    header: tuple[str, ...]
    """The header's field names, in file order."""
    header_line: int
    """The 1-based line number of the header (1 unless blank lines precede it)."""
    rows: pl.DataFrame
    """One string column per header field, surrounding blanks and double quotes removed."""
    lines: np.ndarray
    """The 1-based physical line number of each data row."""

    def line_of(self, row: int) -> int:
        """The 1-based file line number of data row ``row`` (0-based)."""
        return int(self.lines[row])

    def fail(self, row: int, message: str) -> NoReturn:
        """Raise ``TraceError`` for data row ``row``: ``"<path>: line <N>: <message>"``."""
        from fleetwise.errors import TraceError

        raise TraceError(f"{self.path}: line {self.line_of(row)}: {message}")

    def fail_first(self, *problems: Problem | None) -> None:
        """Raise ``TraceError`` for the earliest of ``problems`` (those that are not ``None``)."""
        found = [problem for problem in problems if problem is not None]
        if found:
            row, message = min(found)
            self.fail(row, message)

    def int_values(
        self, name: str, minimum: int, maximum: int = MAX_TOKENS
    ) -> tuple[pl.Series, Problem | None]:
        """Column ``name`` as int64 (null where invalid), and the first value that is not an
        integer or is outside ``minimum .. maximum``, if any."""
        raw = self.rows[name]
        values = raw.cast(pl.Int64, strict=False)
        row = first_true(values.is_null() | (values < minimum) | (values > maximum))
        if row is None:
            return values, None
        if values[row] is None:
            return values, (row, f"{name} is not an integer: {clip(raw[row])}")
        if values[row] < minimum:
            return values, (row, f"{name} must be >= {minimum}, got {values[row]}")
        return values, (row, f"{name} must be <= {maximum:,} tokens, got {values[row]}")

    def int_column(self, name: str, minimum: int) -> np.ndarray:
        """Column ``name`` as int64; ``TraceError`` at the first value that is not an integer or is
        below ``minimum``."""
        values, problem = self.int_values(name, minimum)
        self.fail_first(problem)
        return values.to_numpy().astype(np.int64, copy=False)


def first_true(mask: pl.Series) -> int | None:
    """The index of the first true entry of a boolean series (nulls count as false), or ``None``."""
    hits = mask.fill_null(False).arg_true()
    return None if hits.len() == 0 else int(hits[0])


SPAN_YEARS = MAX_TIME_NS / 1e9 / 86400 / 365.25
"""``MAX_TIME_NS`` in years, for messages."""


def first_past_span(ns: pl.Series) -> int | None:
    """The first entry of non-decreasing int64 nanoseconds ``ns`` more than ``MAX_TIME_NS`` after
    ``ns[0]`` (computed without overflow), or ``None``."""
    limit = int(ns[0]) + MAX_TIME_NS
    if limit >= 2**63:
        return None
    return first_true(ns > limit)


def first_backwards(values: pl.Series) -> int | None:
    """The first entry smaller than the one before it (compared, never subtracted, so that huge
    values cannot overflow into a false report), or ``None``."""
    return first_true(values < values.shift(1))


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting a bad value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_text(path: Path) -> str:
    """The contents of ``path`` decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises ``TraceError`` naming the file when it is missing, a directory, unreadable, larger than
    ``MAX_TEXT_TRACE_BYTES``, not UTF-8 (naming the line and byte offset) or binary (a NUL byte,
    naming its line and byte offset).
    """
    from fleetwise.errors import TraceError

    try:
        if path.is_dir():
            raise IsADirectoryError
        size = path.stat().st_size
        if size > MAX_TEXT_TRACE_BYTES:
            raise TraceError(
                f"{path}: {size:,} bytes; a text trace may have at most {MAX_TEXT_TRACE_BYTES:,} "
                "(convert it to the parquet format)"
            )
        with path.open("rb") as file:
            # A binary file is refused on its first block, before the rest is read.
            data = file.read(1 << 16)
            if b"\0" not in data:
                data += file.read()
    except FileNotFoundError:
        raise TraceError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise TraceError(
            f"{path}: line {line}: binary data (NUL byte at byte offset {nul}); expected a text "
            "file (CSV, JSON Lines or JSON)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceError(
            f"{path}: line {line}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at byte "
            f"offset {exc.start})"
        ) from None


def parse_json(path: Path, text: str):
    """``text`` parsed as JSON; invalid JSON is a ``TraceError`` naming the file, line and column."""
    import json

    from fleetwise.errors import TraceError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(
            f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (Python's int-to-str limit)
        raise TraceError(f"{path}: invalid JSON: {str(exc)[:200]}") from None


def nonblank_lines(text: str) -> pl.DataFrame:
    """The lines of ``text`` that are not blank, as a frame of ``line`` (int64, 1-based physical
    line number) and ``text`` (the line without its trailing carriage return)."""
    # Split on "\n" only (str.splitlines also breaks on form feeds and Unicode separators, which
    # would shift the line numbers reported in errors).
    lines = pl.Series("text", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    return pl.DataFrame(
        {"line": np.arange(1, lines.len() + 1, dtype=np.int64), "text": lines}
    ).filter(pl.col("text").str.strip_chars() != "")


def read_table(path: Path, required: tuple[str, ...]) -> TextTable:
    """Read a simple comma-separated file (no embedded commas or newlines) into a ``TextTable``.

    Blank lines are skipped; the first non-blank line is the header, which must name every column
    in ``required`` (others are allowed). Every data row must have as many fields as the header.
    Raises ``TraceError`` for a missing, unreadable or empty file, a missing column (naming the
    expected and the present columns) and a row with the wrong number of fields.
    """
    from fleetwise.errors import TraceError

    frame = nonblank_lines(read_text(path))
    if frame.height == 0:
        raise TraceError(f"{path}: file is empty")

    header = tuple(field.strip(' \t"') for field in frame["text"][0].split(","))
    header_line = int(frame["line"][0])
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise TraceError(
            f"{path}: line {header_line}: duplicate column name(s) "
            f"{', '.join(clip(name, 40) for name in duplicates[:10])}"
        )
    missing = [name for name in required if name not in header]
    if missing:
        present = ", ".join(clip(name, 40)[1:-1] for name in header[:30])
        raise TraceError(
            f"{path}: line {header_line}: missing column(s) {', '.join(missing)}; expected "
            f"{', '.join(required)}; columns present: {present}"
        )
    body = frame.slice(1)
    table_lines = body["line"].to_numpy()

    fields = body["text"].str.count_matches(",", literal=True) + 1
    row = first_true(fields != len(header))
    if row is not None:
        raise TraceError(
            f"{path}: line {int(table_lines[row])}: expected {len(header)} comma-separated fields "
            f"({', '.join(header)}), found {fields[row]}"
        )

    names = [f"field_{i}" for i in range(len(header))]
    split = pl.col("text").str.split_exact(",", len(header) - 1).struct.rename_fields(names)
    rows = (
        body.select(split)
        .unnest("text")
        .select(pl.col(n).str.strip_chars(' \t"').alias(h) for n, h in zip(names, header))
    )
    return TextTable(
        path=path, header=header, header_line=header_line, rows=rows, lines=table_lines
    )

