"""Reader for the result JSON that ``vllm bench serve --save-result --save-detailed`` (formerly
``benchmarks/benchmark_serving.py``) writes; the per-request lists need ``--save-detailed``.

Of its many keys, two are used: ``input_lens`` and ``output_lens``, equal-length lists with one
entry per benchmark request (prompt tokens, and generated tokens). vLLM writes an output length of 0
for a request that failed; such requests are dropped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fleetwise.config.limits import MAX_TOKENS
from fleetwise.workload._files import clip, parse_json, read_text
from fleetwise.workload.loaded import LoadedTable

INPUT_KEY = "input_lens"
"""The key of the prompt-length list."""
OUTPUT_KEY = "output_lens"
"""The key of the output-length list (0 for a failed request)."""


def read_vllm_bench(path: str | Path) -> LoadedTable:
    """Read a vLLM benchmark result: ``frame`` has int64 ``prompt_tokens`` and ``output_tokens``
    for the successful requests, in file order; ``dropped["failed"]`` counts the requests with an
    output length of 0, which are left out.

    Raises ``TraceError`` naming the file for invalid JSON (with its 1-based line and column), a top
    level that is not an object, a missing key (listing the keys present), lists of different
    lengths, and naming the key and 0-based index of the first entry that is not an integer, an
    input length below 1 or an output length below 0; also when no request succeeded.
    """
    from fleetwise.errors import TraceError

    path = Path(path)
    text = read_text(path)
    data = parse_json(path, text)
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a JSON object (a vLLM benchmark result)")
    missing = [key for key in (INPUT_KEY, OUTPUT_KEY) if key not in data]
    if missing:
        present = ", ".join(clip(key, 40) for key in list(data)[:30]) or "none"
        raise TraceError(
            f"{path}: missing key(s) {', '.join(missing)} (per-request lists are written by vllm bench serve "
            f"--save-result --save-detailed); keys present: {present}"
        )
    inputs = _int_list(path, data, INPUT_KEY, minimum=1)
    outputs = _int_list(path, data, OUTPUT_KEY, minimum=0)
    if len(inputs) != len(outputs):
        raise TraceError(
            f"{path}: {INPUT_KEY} has {len(inputs)} entries but {OUTPUT_KEY} has {len(outputs)}"
        )
    failed = outputs == 0
    if failed.all():
        raise TraceError(f"{path}: no successful request ({len(outputs)} entries, all failed)")
    frame = pl.DataFrame({"prompt_tokens": inputs[~failed], "output_tokens": outputs[~failed]})
    return LoadedTable(frame=frame, rows_read=len(inputs), dropped={"failed": int(failed.sum())})


def load_vllm_bench(path: str | Path) -> pl.DataFrame:
    """Read a vLLM benchmark result: ``read_vllm_bench(path).frame`` (failed requests dropped; use
    ``read_vllm_bench`` for the count)."""
    return read_vllm_bench(path).frame


def _int_list(path: Path, data: dict, key: str, minimum: int) -> np.ndarray:
    """``data[key]`` as an int64 array; ``TraceError`` at the first entry that is not an integer
    >= ``minimum``."""
    from fleetwise.errors import TraceError

    values = data[key]
    if not isinstance(values, list):
        raise TraceError(f"{path}: {key} must be a list, got {type(values).__name__}")
    # Checked per entry: JSON true/false are Python bools, which numpy would read as 1/0 in an
    # integer array.
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TraceError(f"{path}: {key}[{index}] must be an integer, got {clip(value)}")
    try:
        array = np.array(values)
    except (ValueError, OverflowError):
        array = np.array(values, dtype=object)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        # Integers beyond int64/uint64 (or an empty list): compared as Python integers.
        array = np.array(values, dtype=object)
    too_small = np.flatnonzero(array < minimum)
    if too_small.size:
        index = int(too_small[0])
        raise TraceError(f"{path}: {key}[{index}] must be >= {minimum}, got {values[index]}")
    too_big = np.flatnonzero(array > MAX_TOKENS)
    if too_big.size:
        index = int(too_big[0])
        raise TraceError(f"{path}: {key}[{index}] must be <= {MAX_TOKENS:,} tokens, got {values[index]}")
    try:
        return array.astype(np.int64)
    except OverflowError:
        raise TraceError(f"{path}: {key} has a value that does not fit in int64") from None
