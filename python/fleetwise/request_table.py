"""The per-request table of a run, kept as compact as the core returns it.

The core hands back one column per request field (times as int64 ns, instances and counts as
uint32, a status code). ``compact_requests`` keeps those arrays as they are (polars reads numpy
without copying) beside the workload's own columns, and turns the codes into small ``Enum``
columns. ``request_table`` is the table users see (docs/semantics.md: times in ns, latencies in
seconds, int64 counts, String labels) as a ``LazyFrame`` over the compact one: a query computes
only the columns it reads, so summaries of a 10M-request run never hold the whole table (about
190 bytes a request; the compact columns take about 70, 24 of them the workload's own).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from fleetwise.workload import Workload

STATUS = pl.Enum(["finished", "rejected", "unfinished"])
"""A request's end: the core's status codes 0 (finished) and 1 (rejected); any other is unfinished."""

NO_INSTANCE = 2**32 - 1
"""The core's ``prefill_instance`` (and, before routing, ``instance``) for none."""


def _enum_by_index(index: np.ndarray, labels: list[str], categories: list[str]) -> pl.Series:
    """``labels[i]`` for each unsigned index ``i`` as an Enum of ``categories`` (which hold every
    label), null where ``i`` is ``len(labels)``; one byte a row for a few categories."""
    return pl.Series([*labels, None], dtype=pl.Enum(categories)).gather(pl.Series(index))  # a Series: read in place


def compact_requests(workload: Workload, out: dict, pool_of: list[str], pools: list[str] | None = None) -> pl.DataFrame:
    """The run's per-request columns as the core returned them (``out``), with the workload's
    arrival and lengths: status, pool (by instance; ``pool_of[i]`` is instance i's pool, ``pools``
    every pool's name) and rejection reason as Enums, every other column unconverted and uncopied."""
    n = len(workload)
    instance = out["instance"]
    pool_names = list(dict.fromkeys([*pool_of, *(pools or [])]))
    pool = _enum_by_index(np.minimum(instance, len(pool_of)), pool_of, pool_names)
    status = _enum_by_index(np.minimum(out["status"], 2), ["finished", "rejected", "unfinished"], list(STATUS.categories))
    reasons = list(dict.fromkeys(reason for _, reason in out.get("rejections", ())))
    if reasons:
        code = {reason: k for k, reason in enumerate(reasons)}
        index = np.full(n, len(reasons), dtype=np.uint32)
        for idx, reason in out["rejections"]:
            index[idx] = code[reason]
        reject_reason = _enum_by_index(index, reasons, reasons)
        del index
    else:
        reject_reason = pl.repeat(None, n, dtype=pl.Enum([]), eager=True)
    columns = {
        # The row index as a column (4 bytes a row): an int_range over the length in the lazy
        # table kept a streamed write from streaming.
        "request_id": np.arange(n, dtype=np.uint32 if n <= NO_INSTANCE else np.int64),
        "arrival_ns": np.ascontiguousarray(workload.arrival_ns, dtype=np.int64),
        "first_scheduled_ns": out["first_scheduled_ns"],
        "first_token_ns": out["first_token_ns"],
        "completion_ns": out["completion_ns"],
        "prompt_tokens": np.ascontiguousarray(workload.prompt_tokens, dtype=np.int64),
        "output_tokens": np.ascontiguousarray(workload.output_tokens, dtype=np.int64),
        "generated_tokens": out["generated_tokens"],
        "instance": instance,
        "pool": pool,
        # A colocated run has no prefill instance and moves no KV: those columns are constants.
        **({"prefill_instance": out["prefill_instance"]} if (out["prefill_instance"] != NO_INSTANCE).any() else {}),
        **({"kv_transfer_ns": out["kv_transfer_ns"]} if out["kv_transfer_ns"].any() else {}),
        "preemptions": out["preemptions"],
        "status": status,
        "reject_reason": reject_reason,
    }
    if "mixed_pool" in out:
        columns["mixed_pool"] = pl.Series(out["mixed_pool"], dtype=pl.String)
    return pl.DataFrame(columns)


def request_table(compact: pl.DataFrame | pl.LazyFrame, *, unrouted: int | None = None, idealized: pl.Expr | None = None,
                  idealized_gpus: dict[str, int] | None = None, first_pool: str | None = None, enum_labels: bool = False) -> pl.LazyFrame:
    """The request table (docs/semantics.md) as a LazyFrame over ``compact_requests``' columns.

    Times of requests that did not finish are null, as are latencies that do not apply (TPOT of a
    one-token output, the scheduling delay of a request never scheduled). ``unrouted``: the number
    of instances, when instances at or above it mean "not routed yet" (-1; a run that stopped part
    way). ``idealized`` (an expression over the compact columns, seconds) becomes
    ``idealized_runtime_s``, and times the GPUs of the request's pool (``idealized_gpus``; a
    request of no pool counts as one of ``first_pool``) ``idealized_gpu_seconds``. With
    ``enum_labels`` status, pool, rejection reason and acceptance class stay Enums (the same values; comparing them
    with a string needs no String column: the summaries read this form).
    """
    c = compact.lazy()
    names = c.collect_schema().names()
    finished = pl.col("status") == "finished"
    arrival = pl.col("arrival_ns")
    ttft = (pl.col("first_token_ns") - arrival) * 1e-9
    e2e = (pl.col("completion_ns") - arrival) * 1e-9
    out_tokens = pl.col("output_tokens")
    scheduled = pl.col("first_scheduled_ns")
    instance = pl.col("instance").cast(pl.Int64)
    if unrouted is not None:
        instance = pl.when(pl.col("instance") < unrouted).then(instance).otherwise(-1)
    prefill = pl.col("prefill_instance")

    def label(name: str) -> pl.Expr:
        return pl.col(name) if enum_labels else pl.col(name).cast(pl.String)

    def if_finished(e: pl.Expr, name: str) -> pl.Expr:
        return pl.when(finished).then(e).otherwise(None).alias(name)

    columns = [
        pl.col("request_id").cast(pl.Int64),
        arrival,
        pl.when(scheduled >= 0).then(scheduled).otherwise(None).alias("first_scheduled_ns"),
        if_finished(pl.col("first_token_ns"), "first_token_ns"),
        if_finished(pl.col("completion_ns"), "completion_ns"),
        pl.col("prompt_tokens"),
        out_tokens,
        pl.col("generated_tokens").cast(pl.Int64),
        instance.alias("instance"),
        label("pool"),
        (pl.when(prefill == NO_INSTANCE).then(-1).otherwise(prefill.cast(pl.Int64)) if "prefill_instance" in names else pl.lit(-1, dtype=pl.Int64)).alias("prefill_instance"),
        pl.col("kv_transfer_ns") if "kv_transfer_ns" in names else pl.lit(0, dtype=pl.Int64).alias("kv_transfer_ns"),
        pl.col("preemptions").cast(pl.Int64),
        label("status"),
        label("reject_reason"),
        *([pl.col("mixed_pool")] if "mixed_pool" in names else []),
        *([label("acceptance_class")] if "acceptance_class" in names else []),
        pl.when(scheduled >= 0).then((scheduled - arrival) * 1e-9).otherwise(None).alias("scheduling_delay_s"),
        if_finished(ttft, "ttft_s"),
        pl.when(finished & (out_tokens > 1)).then((e2e - ttft) / (out_tokens - 1)).otherwise(None).alias("tpot_s"),
        if_finished(e2e, "e2e_s"),
    ]
    if idealized is not None:
        counts = {c: pl.lit(c, dtype=pl.Int64) for c in set((idealized_gpus or {}).values())}
        gpus = per_pool({name: counts[c] for name, c in (idealized_gpus or {}).items()}, first_pool or "", pl.Int64)
        # Computed once for both columns (polars does not share the table lookups between them);
        # a query that reads neither drops it.
        c = c.with_columns(idealized.alias("__idealized"))
        seconds = pl.col("__idealized")
        columns += [seconds.alias("idealized_runtime_s"), (seconds * gpus).alias("idealized_gpu_seconds")]
    return c.select(columns)


def per_pool(values: dict[str, pl.Expr], first_pool: str, dtype: pl.DataType) -> pl.Expr:
    """Each request's value of its pool (``values`` by pool name; a request of no pool, not routed,
    takes ``first_pool``'s), over the compact table's ``pool``. One expression object for every
    pool is used as it is."""
    if len({id(v) for v in values.values()}) == 1:
        return next(iter(values.values()))
    expr: pl.Expr = pl.lit(None, dtype=dtype)
    for name, value in reversed(list(values.items())):
        in_pool = pl.col("pool") == name
        if name == first_pool:
            in_pool = in_pool | pl.col("pool").is_null()
        expr = pl.when(in_pool).then(value).otherwise(expr)
    return expr
