"""Hypothesis strategies for trace and length files of every format fleetwise reads, with hostile
rows and hostile bytes.

A case is a dict ``{"format", "data" (bytes), "rows", "all_kept", "use"}`` (``use``: replay the
file, or fit a log-normal length distribution to it): ``all_kept`` says that every
row is well formed and must be replayed (or the file refused with an error), so that a silently
dropped row is caught. ``trace_request`` writes the file and returns the worker request that
simulates a tiny scenario on it; ``read_request`` the one that calls the reader directly.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import strategies as st

TRACE_FORMATS = ("azure", "mooncake", "burstgpt", "parquet")
LENGTH_FORMATS = ("csv", "sharegpt", "vllm-bench")
FORMATS = TRACE_FORMATS + LENGTH_FORMATS

HOSTILE_TOKENS = ["0", "-1", "1.5", "1e3", "", "nan", "inf", "9223372036854775808", "99999999999999999999", " 5", "0x10", "null", "\x00"]
"""Token-count cells a hostile CSV may hold."""

HOSTILE_AZURE_TIMES = ["", "nan", "0000-00-00 00:00:00", "9999-12-31 23:59:59.9999999", "1677-09-21 00:12:43.145224191", "2262-04-11 23:47:16.854775808", "2023-11-16 18:00:00+99:99", "2023-11-16T18:00:00Z", "2023-02-30 00:00:00", "2016-12-31 23:59:60", "2023-11-16 18:00:00.12345678901234"]
"""Azure ``TIMESTAMP`` cells at and beyond the edges of int64 nanoseconds and of the calendar."""

HOSTILE_NUMBERS = [-1, 0, 1.5, 1e18, 9.3e15, 1.7e18, 1e308, 2**63, 2**64, -1e12, "12", None, True, math.nan, math.inf]
"""JSON values for numeric keys (mooncake, vllm-bench)."""

LARGE_MONOTONE_STARTS = [1e12, 9.3e12, 1.7e15, 1.7e18, 1e300]
"""Starts of monotone, finite, non-negative timestamp columns far from zero; with gaps scaled up to
1e12 units they span more than int64 nanoseconds. Such a trace is well formed: it must be replayed
whole or refused with an error, never cut silently."""

_SCRATCH = Path(tempfile.mkdtemp(prefix="fleetwise-fuzz-traces-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def _csv(header: str, rows: list[list]) -> bytes:
    return ("\n".join([header] + [",".join(str(c) for c in r) for r in rows]) + "\n").encode()


@st.composite
def _lengths(draw, n: int) -> list[tuple[int, int]]:
    return [(draw(st.integers(1, 3000)), draw(st.integers(1, 200))) for _ in range(n)]


@st.composite
def _timestamps(draw, n: int, scale: float) -> tuple[list[float], bool]:
    """Non-decreasing timestamps (``scale`` units per gap, ms or s); True when all well formed."""
    start = draw(st.sampled_from([0.0, 0.0, 0.0] + LARGE_MONOTONE_STARTS))
    scale *= draw(st.sampled_from([1.0, 1.0, 1.0, 1e6, 1e9, 1e12]))
    gaps = [draw(st.integers(0, 1000)) * scale / 1000 for _ in range(n)]
    out, t = [], start
    for g in gaps:
        t += g
        out.append(t)
    return out, True


@st.composite
def _hostile_cells(draw, rows: list[list], pool: list) -> bool:
    """Replaces up to two cells of ``rows`` by values of ``pool``; True when none was replaced."""
    k = draw(st.integers(0, 2)) if rows else 0
    for _ in range(k):
        r = draw(st.integers(0, len(rows) - 1))
        c = draw(st.integers(0, len(rows[r]) - 1))
        rows[r][c] = draw(st.sampled_from(pool))
    return k == 0


@st.composite
def azure(draw, n: int):
    import datetime as dt

    base = dt.datetime(2023, 11, 16, 18, 0, 0)
    offsets = sorted(draw(st.floats(0, 3600)) for _ in range(n))
    rows = [[(base + dt.timedelta(seconds=o)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0", p, o_] for o, (p, o_) in zip(offsets, draw(_lengths(n)))]
    ok = draw(_hostile_cells(rows, HOSTILE_TOKENS + HOSTILE_AZURE_TIMES))
    return _csv("TIMESTAMP,ContextTokens,GeneratedTokens", rows), ok


@st.composite
def mooncake(draw, n: int):
    times, _ = draw(_timestamps(n, 5000.0))
    rows = [[t, p, o, list(range(i, i + math.ceil(p / 512)))] for i, (t, (p, o)) in enumerate(zip(times, draw(_lengths(n))))]
    ok = draw(_hostile_cells(rows, HOSTILE_NUMBERS + [[2**64], [-1], [1.5], "x", [[1]]]))
    lines = [json.dumps({"timestamp": r[0], "input_length": r[1], "output_length": r[2], "hash_ids": r[3]}) for r in rows]
    return ("\n".join(lines) + "\n").encode(), ok


@st.composite
def burstgpt(draw, n: int):
    times, _ = draw(_timestamps(n, 10.0))
    rows = [[t, draw(st.sampled_from(["ChatGPT", "GPT-4"])), p, o, p + o, "Conversation log"] for t, (p, o) in zip(times, draw(_lengths(n)))]
    ok = draw(_hostile_cells(rows, HOSTILE_TOKENS + ["-1e12", "1e300", "-0.0", "9.3e9"]))
    return _csv("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type", rows), ok


@st.composite
def parquet(draw, n: int):
    import polars as pl

    times, _ = draw(_timestamps(n, 1e9))
    lens = draw(_lengths(n))
    cols = {"arrival_ns": [min(int(t), 2**63 - 1) for t in times], "prompt_tokens": [p for p, _ in lens], "output_tokens": [o for _, o in lens]}
    ok = True
    if draw(st.booleans()):
        col = draw(st.sampled_from(sorted(cols)))
        i = draw(st.integers(0, n - 1))
        cols[col][i] = draw(st.sampled_from([None, -1, 0, 2**63 - 1]))
        ok = False
    dtype = draw(st.sampled_from([pl.Int64, pl.Int64, pl.UInt64, pl.Int32, pl.Float64, pl.Utf8]))
    try:
        frame = pl.DataFrame({k: pl.Series(k, v, dtype=pl.Int64) for k, v in cols.items()})
        frame = frame.with_columns(pl.col(draw(st.sampled_from(sorted(cols)))).cast(dtype, strict=False))
    except Exception:  # noqa: BLE001 - a value the dtype cannot hold: keep Int64
        frame = pl.DataFrame({k: pl.Series(k, v, dtype=pl.Int64) for k, v in cols.items()})
    if dtype is not pl.Int64:
        ok = False
    if draw(st.booleans()):
        frame = frame.with_columns(pl.Series("hash_ids", [[2**64 - 1 if draw(st.booleans()) and not ok else i] for i in range(n)], dtype=pl.List(pl.UInt64)))
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue(), ok


@st.composite
def csv_lengths(draw, n: int):
    rows = [list(r) for r in draw(_lengths(n))]
    ok = draw(_hostile_cells(rows, HOSTILE_TOKENS))
    return _csv("num_prefill_tokens,num_decode_tokens", rows), ok


@st.composite
def sharegpt(draw, n: int):
    text = st.text(min_size=1, max_size=200)
    records = [{"id": str(i), "conversations": [{"from": "human", "value": draw(text)}, {"from": "gpt", "value": draw(text)}]} for i in range(n)]
    ok = True
    if draw(st.booleans()):
        r = draw(st.integers(0, n - 1))
        records[r] = draw(st.sampled_from([None, 5, "x", {"conversations": None}, {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": 3}]}, {"conversations": [{"from": "human"}]}, {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}]))
        ok = False
    return json.dumps(records).encode(), ok


@st.composite
def vllm_bench(draw, n: int):
    lens = draw(_lengths(n))
    doc = {"input_lens": [p for p, _ in lens], "output_lens": [o for _, o in lens]}
    ok = True
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc)))
        doc[key][draw(st.integers(0, n - 1))] = draw(st.sampled_from(HOSTILE_NUMBERS))
        ok = False
    if draw(st.integers(0, 5)) == 0:
        doc["output_lens"] = doc["output_lens"][:-1]
        ok = False
    return json.dumps(doc).encode(), ok


_BUILDERS = {"azure": azure, "mooncake": mooncake, "burstgpt": burstgpt, "parquet": parquet, "csv": csv_lengths, "sharegpt": sharegpt, "vllm-bench": vllm_bench}


@st.composite
def _mangle(draw, data: bytes) -> tuple[bytes, bool]:
    """Hostile bytes: a BOM, a NUL, a non-UTF-8 byte, a truncation, CRLF, all NUL, or nothing."""
    how = draw(st.sampled_from(["none"] * 6 + ["bom", "nul", "ff", "truncate", "crlf", "allnul", "empty", "blank"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    mangled = {
        "none": data,
        "bom": b"\xef\xbb\xbf" + data,
        "nul": data[:at] + b"\x00" + data[at:],
        "ff": data[:at] + b"\xff\xfe" + data[at:],
        "truncate": data[:at],
        "crlf": data.replace(b"\n", b"\r\n"),
        "allnul": b"\x00" * 4096,
        "empty": b"",
        "blank": b"\n\n  \n",
    }[how]
    return mangled, how in ("none", "crlf")


@st.composite
def trace_cases(draw, formats=FORMATS) -> dict:
    """One file of a random format with up to 30 rows, some hostile."""
    fmt = draw(st.sampled_from(formats))
    n = draw(st.integers(1, 30))
    data, ok = draw(_BUILDERS[fmt](n))
    if fmt != "parquet":
        data, untouched = draw(_mangle(data))
        ok = ok and untouched
    use = draw(st.sampled_from(["replay", "replay", "fit"]))
    return {"format": fmt, "data": data, "rows": n, "all_kept": ok, "use": use}


def write_case(case: dict) -> Path:
    """Writes the case's file into a scratch directory (named by its content) and returns its path."""
    suffix = {"parquet": ".parquet", "mooncake": ".jsonl", "sharegpt": ".json", "vllm-bench": ".json"}.get(case["format"], ".csv")
    path = _SCRATCH / (hashlib.sha1(case["data"]).hexdigest()[:16] + suffix)
    path.write_bytes(case["data"])
    return path


def trace_request(case: dict) -> dict:
    """The worker request simulating a tiny scenario on the case's file."""
    path = str(write_case(case))
    fmt = case["format"]
    pools = [{"name": "main", "count": 2, "gpu": "h100-sxm", "model": "mistral-7b"}]
    if case.get("use") == "fit":
        workload = {"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": "fit", "format": fmt, "path": path, "prompt_max": 8000, "output_max": 500}, "requests": 20}
    elif fmt in TRACE_FORMATS:
        workload = {"arrivals": {"kind": "trace", "format": fmt, "path": path}}
    else:
        workload = {"arrivals": {"kind": "poisson", "rate": 10.0}, "lengths": {"kind": "file", "format": fmt, "path": path}, "requests": 20}
    sc = {"name": "fuzz-trace", "seed": 1, "cluster": {"pools": pools}, "workload": workload}
    req = {"op": "simulate", "scenario": sc}
    if case["all_kept"] and fmt in TRACE_FORMATS and case.get("use") != "fit":
        req["expect_requests"] = case["rows"]
    return req


def read_request(case: dict) -> dict:
    """The worker request calling the case's reader directly."""
    req = {"op": "read", "format": case["format"], "path": str(write_case(case))}
    if case["all_kept"] and case["format"] in ("azure", "mooncake", "parquet", "csv"):
        req["expect_rows"] = case["rows"]
    return req
