"""Reader for ShareGPT conversation JSON (e.g. the Hugging Face dataset
``anon8231489123/ShareGPT_Vicuna_unfiltered``, file ``ShareGPT_V3_unfiltered_cleaned_split.json``).

The file is a JSON list of records, each with ``conversations``: a list of messages
``{"from": "human" | "gpt" | ..., "value": text}``. The file has no token counts, so they are
estimated from the text length: ``ceil(characters / chars_per_token)`` (characters are Unicode code
points; 4 characters per token is the usual rule of thumb for English with GPT-style tokenizers).
Each ``human`` message immediately followed by a ``gpt`` message in the same record is one request:
the human text is the prompt (alone: earlier turns are not prepended; use ``sessions`` to model
growing context) and the reply is the output.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import polars as pl

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.workload._files import POLARS_ERRORS, clip, first_true, parse_json, read_text

PROMPT_ROLES = ("human", "user")
"""``from`` values of a prompt message."""
REPLY_ROLES = ("gpt", "chatgpt", "assistant")
"""``from`` values of a reply message."""

_NOT_A_STRING = re.compile(r'"(?:from|value)"\s*:\s*[^"\s]')
"""A message's ``from`` or ``value`` that is not a JSON string (a number, a boolean, null, a list)."""
_SCHEMA = {"conversations": pl.List(pl.Struct({"from": pl.String, "value": pl.String}))}


def load_sharegpt(path: str | Path, chars_per_token: float = 4.0) -> pl.DataFrame:
    """Read a ShareGPT conversation JSON into a frame of int64 ``prompt_tokens`` and
    ``output_tokens``, one row per (prompt, reply) message pair, in file order.

    A message's token count is ``max(1, ceil(len(value) / chars_per_token))`` (an empty message
    still counts as one token). Other record keys (``id``, ...) and other roles (``system``, ...)
    are ignored; a role other than a prompt role followed by a reply role forms no pair.

    Raises ``TraceError`` naming the file and, where it applies, the 1-based line and column of
    invalid JSON or the 0-based record (and message) index of a record without ``conversations``,
    a ``conversations`` that is not a list, or a message without a string ``from`` or ``value``;
    also when the top level is not a list or the file has no pair at all.
    """
    from fleetwise.errors import TraceError

    if not (chars_per_token > 0 and math.isfinite(chars_per_token)):
        raise ValueError(f"chars_per_token must be a positive number, got {chars_per_token}")
    path = Path(path)
    text = read_text(path)
    if not text.lstrip().startswith("["):
        raise TraceError(f"{path}: expected a JSON list of conversation records")
    if _NOT_A_STRING.search(text):  # polars' String schema would read a number as its digits
        _raise_first_problem(path, text)
    try:
        records = pl.read_json(io.BytesIO(text.encode("utf-8")), schema=_SCHEMA)
    except POLARS_ERRORS as exc:  # polars raises several types, or panics; find the culprit
        _raise_first_problem(path, text)
        raise TraceError(f"{path}: cannot parse as ShareGPT JSON: {clip(str(exc), 200)}") from None

    row = first_true(records["conversations"].is_null())
    if row is not None:
        raise TraceError(f"{path}: record {row} (0-based): missing or null 'conversations'")
    # Records with an empty list are removed before exploding (depending on the polars version,
    # exploding one yields a null row or nothing); they hold no pair anyway.
    messages = (
        records.with_row_index("record")
        .filter(pl.col("conversations").list.len() > 0)
        .explode("conversations")
        .with_columns(message=pl.int_range(pl.len()).over("record"))
    )
    unnested = messages.with_columns(
        pl.col("conversations").struct.field("from").alias("role"),
        pl.col("conversations").struct.field("value").alias("value"),
    )
    bad = first_true(
        unnested["conversations"].is_null()
        | unnested["role"].is_null()
        | unnested["value"].is_null()
    )
    if bad is not None:
        record, message = int(unnested["record"][bad]), int(unnested["message"][bad])
        raise TraceError(
            f"{path}: record {record} (0-based), message {message}: a message needs string "
            "'from' and 'value'"
        )
    tokens = (
        (pl.col("value").str.len_chars().cast(pl.Float64) / chars_per_token)
        .ceil()
        .cast(pl.Int64)
        .clip(lower_bound=1)
    )
    pairs = (
        unnested.select(
            "record",
            pl.col("role").str.to_lowercase().alias("role"),
            tokens.alias("tokens"),
        )
        .with_columns(
            next_role=pl.col("role").shift(-1).over("record"),
            next_tokens=pl.col("tokens").shift(-1).over("record"),
        )
        .filter(
            pl.col("role").is_in(list(PROMPT_ROLES)) & pl.col("next_role").is_in(list(REPLY_ROLES))
        )
    )
    if pairs.height == 0:
        raise TraceError(
            f"{path}: no request: no {'/'.join(PROMPT_ROLES)} message is followed by a "
            f"{'/'.join(REPLY_ROLES)} message"
        )
    too_long = first_true((pairs["tokens"] > MAX_TOKENS) | (pairs["next_tokens"] > MAX_TOKENS))
    if too_long is not None:
        raise TraceError(
            f"{path}: record {int(pairs['record'][too_long])} (0-based): a message of more than "
            f"{MAX_TOKENS:,} tokens (at {chars_per_token:g} characters per token)"
        )
    return pairs.select(
        pl.col("tokens").alias("prompt_tokens"), pl.col("next_tokens").alias("output_tokens")
    )


def _raise_first_problem(path: Path, text: str) -> None:
    """Parse ``text`` with the standard library and raise ``TraceError`` at the first problem;
    return if there is none."""
    from fleetwise.errors import TraceError

    data = parse_json(path, text)
    if not isinstance(data, list):
        raise TraceError(f"{path}: expected a JSON list of conversation records")
    for index, record in enumerate(data):
        where = f"{path}: record {index} (0-based)"
        if not isinstance(record, dict):
            raise TraceError(f"{where}: expected an object, got {type(record).__name__}")
        conversations = record.get("conversations")
        if not isinstance(conversations, list):
            got = repr(conversations)[:100]
            raise TraceError(f"{where}: 'conversations' must be a list, got {got}")
        for number, message in enumerate(conversations):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("from"), str)
                and isinstance(message.get("value"), str)
            ):
                raise TraceError(
                    f"{where}, message {number}: a message needs string 'from' and 'value'"
                )
