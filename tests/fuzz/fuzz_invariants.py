"""The invariants every successful (exit 0) simulation must satisfy, as lists of violations.

Each ``check_*`` function returns a list of human-readable violations (empty: all hold), so that a
fuzz case can report every broken invariant at once rather than the first assertion.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

_TIME_COLUMNS = ("arrival_ns", "first_token_ns", "completion_ns", "kv_transfer_ns")
_LATENCY_COLUMNS = ("ttft_s", "tpot_s", "e2e_s")
_ALLOWED_STATUS = {"finished", "rejected"}


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_loads(text: str):
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (not valid JSON)."""
    return json.loads(text, parse_constant=_reject_constant)


def check_summary(summary: dict) -> list[str]:
    """Violations in a run summary: NaN/inf/negative numbers anywhere, or not strict JSON."""
    bad: list[str] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, bool) or node is None or isinstance(node, str):
            return
        elif isinstance(node, (int, float)):
            if isinstance(node, float) and not math.isfinite(node):
                bad.append(f"summary {where} is {node!r}")
            elif node < 0:
                bad.append(f"summary {where} is negative ({node!r})")
        else:
            bad.append(f"summary {where} has unexpected type {type(node).__name__}")

    walk(summary, "")
    try:
        strict_json_loads(json.dumps(summary))
    except (ValueError, TypeError) as e:
        bad.append(f"summary is not strict JSON: {e}")
    return bad


def check_summary_file(path: Path) -> list[str]:
    """Violations in a written ``summary.json``: it must parse as strict JSON and hold no bad number."""
    try:
        data = strict_json_loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return [f"{path}: not valid strict JSON ({type(e).__name__}: {e})"]
    return check_summary(data)


def check_requests(requests: pl.DataFrame, expected: int | None) -> list[str]:
    """Violations in the per-request table: each request exactly once, ordered times for finished
    requests, no negative or NaN metric, and every finished request generated its output tokens."""
    bad: list[str] = []
    n = requests.height
    if expected is not None and n != expected:
        bad.append(f"{n} request rows, expected {expected}")
    ids = requests["request_id"]
    if ids.n_unique() != n or (n and (ids.min() != 0 or ids.max() != n - 1)):
        bad.append("request_id is not each of 0..n-1 exactly once")
    status = set(requests["status"].unique().to_list())
    if status - _ALLOWED_STATUS:
        bad.append(f"unexpected request status {sorted(status - _ALLOWED_STATUS)} with exit 0")
    done = requests.filter(pl.col("status") == "finished")
    for col in ("first_token_ns", "completion_ns", "ttft_s", "e2e_s"):
        nulls = done[col].null_count()
        if nulls:
            bad.append(f"{nulls} finished requests have no {col}")
    order = done.filter(~((pl.col("arrival_ns") <= pl.col("first_token_ns")) & (pl.col("first_token_ns") <= pl.col("completion_ns"))))
    if order.height:
        r = order.row(0, named=True)
        bad.append(f"{order.height} finished requests violate arrival <= first token <= completion, e.g. request {r['request_id']}: {r['arrival_ns']}, {r['first_token_ns']}, {r['completion_ns']}")
    short = done.filter(pl.col("generated_tokens") != pl.col("output_tokens"))
    if short.height:
        r = short.row(0, named=True)
        bad.append(f"{short.height} finished requests generated a different number of tokens than asked, e.g. request {r['request_id']}: {r['generated_tokens']} of {r['output_tokens']}")
    for col in requests.columns:
        s = requests[col]
        if not s.dtype.is_numeric():
            continue
        if col in ("prefill_instance",):  # -1 means "none"
            s = s.filter(s != -1)
        if s.dtype.is_float():
            nans = int(s.is_nan().sum()) + int(s.is_infinite().sum())
            if nans:
                bad.append(f"requests.{col} holds {nans} NaN/inf values")
        neg = int((s < 0).sum())
        if neg:
            bad.append(f"requests.{col} holds {neg} negative values (min {s.min()})")
    return bad


def check_instances(instances: pl.DataFrame) -> list[str]:
    """Violations in the per-instance table: KV never above capacity, no negative or NaN number."""
    bad: list[str] = []
    if {"peak_kv_blocks", "num_blocks"} <= set(instances.columns):
        over = instances.filter(pl.col("peak_kv_blocks") > pl.col("num_blocks"))
        if over.height:
            r = over.row(0, named=True)
            bad.append(f"instance {r['instance']}: peak KV {r['peak_kv_blocks']} blocks above its capacity {r['num_blocks']}")
    for col in instances.columns:
        s = instances[col]
        if not s.dtype.is_numeric():
            continue
        if s.dtype.is_float() and int(s.is_nan().sum() + s.is_infinite().sum()):
            bad.append(f"instances.{col} holds NaN/inf values")
        if int((s < 0).sum()):
            bad.append(f"instances.{col} holds negative values (min {s.min()})")
    return bad


def check_result(result, expected: int | None) -> list[str]:
    """All violations of a ``fleetwise.Result``."""
    return check_requests(result.requests, expected) + check_instances(result.instances) + check_summary(result.summary)


def check_run_directory(directory: Path, expected: int | None = None) -> list[str]:
    """All violations of what ``fleetwise run`` wrote into ``directory``."""
    d = Path(directory)
    bad = check_summary_file(d / "summary.json")
    try:
        bad += check_requests(pl.read_parquet(d / "requests.parquet"), expected)
        bad += check_instances(pl.read_parquet(d / "instances.parquet"))
    except Exception as e:  # noqa: BLE001 - a missing or unreadable table is itself a violation
        bad.append(f"{d}: cannot read the result tables ({type(e).__name__}: {e})")
    return bad
