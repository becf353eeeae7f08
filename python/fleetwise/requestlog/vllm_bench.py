"""Reader for ``vllm bench serve --save-result --save-detailed`` result JSON, as a ``RequestLog``.

The keys used (vLLM 0.32 ``vllm/benchmarks/serve.py``; one entry per request in every list, in the
order the requests were issued, which is arrival order):

* ``input_lens``, ``output_lens``: prompt and generated tokens (``output_lens`` 0: a failed request);
* ``start_times``: when the client sent each request, seconds of ``time.perf_counter()`` (any
  origin). This is the **arrival**: what the server saw. Under ``--max-concurrency`` it is the time
  the request left the client's semaphore, so the replay uses the arrivals the server saw, not the
  open-loop schedule (``queue_times`` holds the client-side wait, unused here);
* ``ttfts``: first token - start, seconds; ``latencies``: last token - start, seconds, so the first
  token is ``start + ttft`` and the last ``start + latency``;
* ``itls``: per request, the gaps between streamed chunks after the first, seconds (optional; a chunk
  can carry several tokens, so a list can be shorter than ``output_lens - 1``);
* ``errors``: per request, an empty string or the error (optional); a non-empty error is a failure.

``input_lens``, ``output_lens``, ``start_times``, ``ttfts`` and ``itls`` are only written with
``--save-detailed``. Older vLLM versions wrote no ``start_times``: the arrivals are then not in the
file. They are rebuilt only where they are certain: a run with ``request_rate`` ``inf`` and no
``max_concurrency`` sent every request at once, so every arrival is 0; any other file without
``start_times`` is refused (re-run with ``--save-detailed`` on a vLLM that records them, or write the
per-request table format).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.requestlog.log import ITL_COLUMN, RequestLog, finish_log
from fleetwise.workload._files import clip, parse_json, read_text

REQUIRED_KEYS = ("input_lens", "output_lens", "ttfts", "latencies")
"""Keys every result must have (``start_times`` too unless every request was sent at once)."""
FORMAT = "vllm-bench"
"""This reader's name."""


def read_vllm_bench_log(path: str | Path) -> RequestLog:
    """Read a ``vllm bench serve --save-result --save-detailed`` JSON into a ``RequestLog``.

    Failed requests (an ``output_lens`` of 0 or a non-empty ``errors`` entry) are dropped and
    counted under ``failed``. Raises ``TraceError`` naming the file for invalid JSON, a top level
    that is not an object, a missing key (listing those present), lists of different lengths, and
    naming the key and 0-based request index of an entry of the wrong type; the shared checks of
    ``finish_log`` name the request index.
    """
    from fleetwise.errors import TraceError

    path = Path(path)
    data = parse_json(path, read_text(path))
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a JSON object (a vllm bench serve --save-result file)")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        present = ", ".join(clip(k, 40) for k in list(data)[:40]) or "none"
        raise TraceError(f"{path}: missing key(s) {', '.join(missing)}; expected a vllm bench serve result "
                         f"written with --save-result --save-detailed; keys present: {present}")
    n = _length(path, data, "input_lens")
    for key in (*REQUIRED_KEYS, "start_times", "itls", "errors"):
        if key in data and _length(path, data, key) != n:
            raise TraceError(f"{path}: {key} has {len(data[key])} entries but input_lens has {n}")
    notes: list[str] = []
    if "start_times" in data:
        start = _numbers(path, data, "start_times")
        notes.append("arrivals are the client's send times (start_times)")
    elif str(data.get("request_rate")) == "inf" and data.get("max_concurrency") is None:
        start = np.zeros(n)
        notes.append("no start_times: request_rate was inf with no max_concurrency, so every request arrived at 0")
    else:
        raise TraceError(
            f"{path}: no start_times, so the arrivals are not recorded (request_rate "
            f"{clip(data.get('request_rate'))}, max_concurrency {clip(data.get('max_concurrency'))}); "
            "re-run vllm bench serve with --save-detailed on a vLLM that writes start_times, or give "
            "a per-request table (arrival_s, first_token_s, last_token_s, prompt_tokens, output_tokens)"
        )
    start = start - start.min() if n else start  # re-based before the latencies are added: no precision lost
    prompt = _integers(path, data, "input_lens")
    output = _integers(path, data, "output_lens")
    ttft = _numbers(path, data, "ttfts")
    latency = _numbers(path, data, "latencies")
    failed = output == 0
    if "errors" in data:
        failed |= np.array([bool(e) for e in data["errors"]])
    columns = {
        "source_row": np.arange(n, dtype=np.int64),
        "arrival_s": start,
        "first_token_s": start + ttft,
        "last_token_s": start + latency,
        "prompt_tokens": prompt,
        "output_tokens": output,
    }
    frame = pl.DataFrame(columns)
    if "itls" in data:
        frame = frame.with_columns(_gap_lists(path, data["itls"]))
    keep = pl.Series(~failed)
    return finish_log(frame.filter(keep), path, FORMAT, "request", n, {"failed": int(failed.sum())}, tuple(notes))


def _length(path: Path, data: dict, key: str) -> int:
    """The length of list ``data[key]``; ``TraceError`` when it is not a list."""
    from fleetwise.errors import TraceError

    value = data[key]
    if not isinstance(value, list):
        raise TraceError(f"{path}: {key} must be a list (one entry per request), got {type(value).__name__}")
    return len(value)


def _numbers(path: Path, data: dict, key: str) -> np.ndarray:
    """``data[key]`` as float64; ``TraceError`` naming the first entry that is not a number."""
    from fleetwise.errors import TraceError

    values = data[key]
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TraceError(f"{path}: request {i}: {key}[{i}] must be a number, got {clip(v)}")
        if not _finite(v):
            # Checked per entry, before start_times are re-based on their minimum (a NaN or -inf
            # minimum would spread to every request) and before the float conversion (a JSON
            # integer beyond float range would overflow).
            raise TraceError(f"{path}: request {i}: {key}[{i}] must be a finite number, got {clip(v)}")
    return np.array(values, dtype=np.float64)


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float64 (an integer too large to convert is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _integers(path: Path, data: dict, key: str) -> np.ndarray:
    """``data[key]`` as int64; ``TraceError`` naming the first entry that is not an integer >= 0."""
    from fleetwise.errors import TraceError

    values = data[key]
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 2**62:
            raise TraceError(f"{path}: request {i}: {key}[{i}] must be an integer >= 0, got {clip(v)}")
    return np.array(values, dtype=np.int64)


def _gap_lists(path: Path, itls: list) -> pl.Series:
    """``itls`` as a List(Float64) series; ``TraceError`` naming the first entry that is not a list
    of numbers, or the first gap that is not a finite number."""
    from fleetwise.errors import TraceError

    for i, gaps in enumerate(itls):
        if not isinstance(gaps, list) or any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in gaps):
            raise TraceError(f"{path}: request {i}: itls[{i}] must be a list of numbers (seconds), got {clip(gaps)}")
        for j, g in enumerate(gaps):
            if not _finite(g):
                raise TraceError(f"{path}: request {i}: itls[{i}][{j}] must be a finite number (seconds), got {clip(g)}")
    return pl.Series(ITL_COLUMN, [[float(g) for g in gaps] for gaps in itls], dtype=pl.List(pl.Float64))
