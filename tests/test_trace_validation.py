"""Hostile traces and length files of every format: each malformed row is an error naming the file
and its line (never a silently dropped row, an int64 wrap-around, a polars panic or a traceback),
and the rows a filter leaves out on purpose are counted (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fleetwise.errors import ConfigError, FleetwiseError, TraceError
from fleetwise.simulate import simulate
from fleetwise.workload import build_workload
from fleetwise.workload.config import WorkloadConfig
from fleetwise.workload.lengths import load_lengths
from fleetwise.workload.traces import load_trace

from conftest import run_cli, small_scenario

AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_ROW = "2023-11-16 18:17:03.9799600,4808,10\n"
BURSTGPT = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
BURSTGPT_ROW = "5,ChatGPT,472,18,490,Conversation log\n"
CSV = "num_prefill_tokens,num_decode_tokens\n"
LENGTH_FORMATS = ("csv", "sharegpt", "vllm-bench")
TRACE_FORMATS = ("azure", "mooncake", "burstgpt", "parquet")


def _jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


_MC = {"timestamp": 0, "input_length": 5, "output_length": 5}


def _load(path: Path, fmt: str) -> pl.DataFrame:
    return load_lengths(path, fmt) if fmt in LENGTH_FORMATS else load_trace(path, fmt)


CASES = [
    # (format, file text, expected message fragment)
    ("azure", "", "file is empty"),
    ("azure", AZURE, "has a header but no requests"),
    ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,1\n", "line 1: missing column(s) GeneratedTokens"),
    ("azure", AZURE + "2023-11-16 18:17:03,-5,10\n", "line 2: ContextTokens must be >= 1, got -5"),
    ("azure", AZURE + "2023-11-16 18:17:03,nan,10\n", "line 2: ContextTokens is not an integer: 'nan'"),
    ("azure", AZURE + "2023-11-16 18:17:03,inf,10\n", "line 2: ContextTokens is not an integer: 'inf'"),
    ("azure", AZURE + "2023-11-16 18:17:03,9999999999,10\n", "line 2: ContextTokens must be <= 1,000,000,000 tokens"),
    ("azure", AZURE + AZURE_ROW + "9999-11-16 18:17:03,5,10\n", "line 3: bad TIMESTAMP '9999-11-16 18:17:03'"),
    ("azure", AZURE + "1700-01-01 00:00:00,5,10\n2250-01-01 00:00:00,5,10\n", "line 3: timestamp '2250-01-01 00:00:00' is more than 146 years after"),
    ("azure", AZURE + "yesterday,5,10\n", "line 2: bad TIMESTAMP 'yesterday'"),
    # An Arabic-Indic digit matched the pattern's \\d and then failed polars' integer cast (a traceback).
    ("azure", AZURE + AZURE_ROW + "2023-11-16 18:15:51.391017\u0660,91,16\n", "line 3: bad TIMESTAMP"),
    ("burstgpt", "", "file is empty"),
    ("burstgpt", BURSTGPT, "has a header but no requests"),
    ("burstgpt", BURSTGPT + BURSTGPT_ROW + "-1e12,ChatGPT,472,18,490,Conversation log\n", "line 3: Timestamp must be >= 0"),
    ("burstgpt", BURSTGPT + BURSTGPT_ROW + "1e12,ChatGPT,472,18,490,Conversation log\n", "line 3: Timestamp 1e+12 s is more than 146 years"),
    ("burstgpt", BURSTGPT + "nan,ChatGPT,472,18,490,Conversation log\n", "line 2: Timestamp is not a number of seconds: 'nan'"),
    ("burstgpt", BURSTGPT + "inf,ChatGPT,472,18,490,Conversation log\n", "line 2: Timestamp is not a number of seconds: 'inf'"),
    ("burstgpt", BURSTGPT + "soon,ChatGPT,472,18,490,Conversation log\n", "line 2: Timestamp is not a number of seconds: 'soon'"),
    ("burstgpt", BURSTGPT + "1,ChatGPT,47200000000000,18,490,Conversation log\n", "line 2: Request tokens must be <= 1,000,000,000"),
    ("mooncake", "\n\n", "file is empty"),
    # polars kept the first of two input_length keys (5), the line checker's json.loads the last.
    ("mooncake", '{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"input_length": 5, "timestamp": 471, "input_length": 18663, "output_length": 2}\n', "line 2: key 'input_length' appears more than once"),
    ("mooncake", _jsonl(_MC, {**_MC, "timestamp": -5}), "line 2: timestamp must be >= 0"),
    ("mooncake", _jsonl(_MC, {**_MC, "timestamp": 1.7e16}), "line 2: timestamp 1.7e+16 ms is more than 146 years"),
    ("mooncake", _jsonl(_MC, {**_MC, "timestamp": 1e300}), "line 2: timestamp 1e+300 ms is more than 146 years"),
    ("mooncake", '{"timestamp": NaN, "input_length": 5, "output_length": 5}\n', "line 1: timestamp must be a finite number"),
    ("mooncake", '{"timestamp": Infinity, "input_length": 5, "output_length": 5}\n', "line 1: timestamp must be a finite number"),
    ("mooncake", _jsonl({**_MC, "timestamp": "noon"}), "line 1: timestamp must be a number (milliseconds), got 'noon'"),
    ("mooncake", _jsonl({"timestamp": 0}), "line 1: missing or null key 'input_length'"),
    ("mooncake", _jsonl({**_MC, "input_length": 10**12}), "line 1: input_length must be <= 1,000,000,000"),
    ("mooncake", _jsonl({**_MC, "input_length": 10**30}), "line 1: input_length must be <= 1,000,000,000"),
    ("mooncake", "[" * 5000 + "]" * 5000 + "\n", "line 1: JSON nested too deeply"),
    ("sharegpt", "[" * 5000 + "]" * 5000, "JSON nested too deeply"),
    ("sharegpt", "", "expected a JSON list of conversation records"),
    # A number was read as its digits ("5": a 1-token prompt, exit 0).
    ("sharegpt", '[{"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "yo"}]}]', "record 0 (0-based), message 0: a message needs string 'from' and 'value'"),
    ("vllm-bench", "[" * 5000 + "]" * 5000, "JSON nested too deeply"),
    ("vllm-bench", '{"input_lens": [NaN], "output_lens": [1]}', "input_lens[0] must be an integer, got nan"),
    ("vllm-bench", '{"input_lens": [1e30], "output_lens": [1]}', "input_lens[0] must be an integer"),
    ("vllm-bench", '{"input_lens": [100000000000000000000000], "output_lens": [1]}', "input_lens[0] must be <= 1,000,000,000"),
    ("vllm-bench", "", "line 1 column 1: invalid JSON"),
    ("csv", "", "file is empty"),
    ("csv", CSV, "has a header but no rows"),
    ("csv", "a,b\n1,2\n", "line 1: missing column(s) num_prefill_tokens, num_decode_tokens"),
    ("csv", CSV + "-1,5\n", "line 2: num_prefill_tokens must be >= 1, got -1"),
    ("csv", CSV + "5,inf\n", "line 2: num_decode_tokens is not an integer: 'inf'"),
    ("csv", CSV + "1e30,5\n", "line 2: num_prefill_tokens is not an integer: '1e30'"),
    ("csv", CSV + "10000000000,5\n", "line 2: num_prefill_tokens must be <= 1,000,000,000"),
]


@pytest.mark.parametrize("fmt, text, fragment", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_malformed_text_names_file_and_line(tmp_path, fmt, text, fragment):
    path = tmp_path / f"trace.{fmt}"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        _load(path, fmt)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert len(message) < 1000


def _parquet(tmp_path: Path, **columns) -> Path:
    path = tmp_path / "trace.parquet"
    pl.DataFrame(columns).write_parquet(path)
    return path


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"arrival_ns": [-(2**63) + 1, 2**63 - 1], "prompt_tokens": [1, 1], "output_tokens": [1, 1]}, "row 1 (0-based): arrival_ns 9223372036854775807 is more than 146 years"),
        ({"arrival_ns": [0, 2**63 - 1], "prompt_tokens": [1, 1], "output_tokens": [1, 1]}, "more than 146 years after the first row's 0"),
        ({"arrival_ns": [2**62, -(2**62)], "prompt_tokens": [1, 1], "output_tokens": [1, 1]}, "row 1 (0-based): arrival_ns -4611686018427387904 is smaller than the previous"),
        ({"arrival_ns": [0], "prompt_tokens": [10**12], "output_tokens": [1]}, "row 0 (0-based): prompt_tokens must be <= 1,000,000,000"),
        ({"arrival_ns": [0.0], "prompt_tokens": [1], "output_tokens": [1]}, "column arrival_ns must be integers"),
        ({"arrival_ns": [0]}, "missing column(s) prompt_tokens, output_tokens"),
    ],
)
def test_malformed_parquet_names_file_and_row(tmp_path, columns, fragment):
    path = _parquet(tmp_path, **columns)
    with pytest.raises(TraceError, match=None) as info:
        load_trace(path, "parquet")
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("fmt", TRACE_FORMATS + LENGTH_FORMATS)
def test_binary_non_utf8_and_directory_are_named(tmp_path, fmt):
    binary = tmp_path / "zeros"
    binary.write_bytes(b"\0" * 100_000)
    latin1 = tmp_path / "latin1"
    latin1.write_bytes((AZURE + "caf\xe9,1,1\n").encode("latin-1"))
    expected = {
        binary: "not a readable Parquet file" if fmt == "parquet" else "line 1: binary data (NUL byte at byte offset 0)",
        latin1: "not a readable Parquet file" if fmt == "parquet" else "line 2: not UTF-8 text (invalid byte 0xe9 at byte offset 43)",
        tmp_path: "is a directory, not a file",
    }
    for path, fragment in expected.items():
        with pytest.raises(TraceError) as info:
            _load(path, fmt)
        assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value), str(info.value)


def test_a_polars_panic_becomes_a_trace_error(tmp_path, monkeypatch):
    from polars.exceptions import PanicException

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(pl, "read_ndjson", panic)
    path = tmp_path / "t.jsonl"
    path.write_text(_jsonl(_MC))
    with pytest.raises(TraceError, match=rf"{path}: cannot parse as JSON Lines: .*index out of bounds"):
        load_trace(path, "mooncake")


def test_directory_as_trace_path_says_directory(tmp_path):
    (tmp_path / "traces").mkdir()
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "trace", "path": "traces", "format": "azure"}})
    with pytest.raises(ConfigError, match=r"workload file 'traces': .*traces is a directory, not a file"):
        build_workload(cfg, seed=0, base_dir=tmp_path)


def test_rate_scale_past_the_clock_is_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(_jsonl(_MC, {**_MC, "timestamp": 3.6e9}))  # 1,000 hours
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "trace", "path": str(path), "format": "mooncake", "rate_scale": 1e-6}})
    with pytest.raises(ConfigError, match="rate_scale 1e-06 stretches the replayed arrivals"):
        build_workload(cfg, seed=0)


def test_every_row_is_replayed_or_counted(tmp_path):
    rows = [{**_MC, "timestamp": 1000 * i, "input_length": 100 * (i + 1)} for i in range(20)]
    path = tmp_path / "t.jsonl"
    path.write_text(_jsonl(*rows))
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "trace", "path": str(path), "format": "mooncake", "start_s": 2, "duration_s": 15, "max_prompt_tokens": 1500}, "requests": 5}
    )
    workload = build_workload(cfg, seed=0)
    counts = dict(workload.selection)
    assert counts == {"rows_read": 20, "outside_window": 5, "max_prompt_tokens": 2, "beyond_requests": 8, "replayed": 5}
    assert counts["rows_read"] == sum(v for k, v in counts.items() if k != "rows_read")


def test_burstgpt_drops_are_counted_in_the_summary_and_printed(tmp_path, write_yaml):
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT + "".join(f"{i},ChatGPT,{100 + i},{i % 3},0,Conversation log\n" for i in range(30)))
    sc = small_scenario()
    sc["workload"] = {"arrivals": {"kind": "trace", "path": str(path), "format": "burstgpt"}}
    result = simulate(sc)
    assert result.summary["trace_rows"]["rows_read"] == 30
    assert result.summary["trace_rows"]["failed"] == 10
    assert result.summary["trace_rows"]["replayed"] == 20 == result.requests.height
    r = run_cli("run", str(write_yaml(sc)), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trace: 30 rows read, 20 replayed; left out on purpose: failed 10" in r.stdout


def test_large_valid_times_are_kept_exactly(tmp_path):
    # 100 years in milliseconds: inside the clock, no row lost to a wrap-around.
    rows = [{**_MC, "timestamp": t} for t in (0, 1.0, 3.15e12)]
    path = tmp_path / "t.jsonl"
    path.write_text(_jsonl(*rows))
    frame = load_trace(path, "mooncake")
    assert frame.height == 3
    assert frame["arrival_ns"].to_list() == [0, 1_000_000, 3_150_000_000_000_000_000]
    assert bool(np.all(np.diff(frame["arrival_ns"].to_numpy()) >= 0))


@pytest.mark.parametrize("fmt", TRACE_FORMATS + LENGTH_FORMATS)
def test_cli_never_prints_a_traceback_for_a_binary_trace(tmp_path, write_yaml, fmt):
    path = tmp_path / "zeros"
    path.write_bytes(b"\0" * 10_000)
    sc = small_scenario()
    if fmt in LENGTH_FORMATS:
        sc["workload"]["lengths"] = {"kind": "file", "path": str(path), "format": fmt}
    else:
        sc["workload"] = {"arrivals": {"kind": "trace", "path": str(path), "format": fmt}}
    r = run_cli("run", str(write_yaml(sc)), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(path) in r.stderr, r.stderr[-2000:]
    assert isinstance(TraceError("x"), FleetwiseError)


def test_a_mooncake_key_repeated_only_inside_a_nested_object_is_not_a_repeat(tmp_path):
    # The repeated-key check counts '"timestamp":' in the line text; one inside an object under
    # a key the reader ignores is not the line's own and must not refuse the line.
    path = tmp_path / "nested.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 4, "output_length": 2}\n'
                    '{"timestamp": 7, "meta": {"timestamp": 1}, "input_length": 5, "output_length": 3}\n')
    trace = load_trace(path, "mooncake")
    assert trace["arrival_ns"].to_list() == [0, 7_000_000] and trace["prompt_tokens"].to_list() == [4, 5]


def test_a_trace_path_that_is_not_a_file_names_the_field_and_what_it_is(tmp_path):
    # /dev/null (or a FIFO) was called "not found", and no error named the scenario field; a
    # missing path was named by the union's internal tag (workload.arrivals.trace.path).
    sc = small_scenario()
    sc["workload"] = {"arrivals": {"kind": "trace", "format": "azure", "path": "/dev/null"}}
    with pytest.raises(ConfigError, match=r"^<scenario>: workload\.arrivals\.path: workload file '/dev/null': /dev/null is not a regular file"):
        simulate(sc)
    sc["workload"]["arrivals"]["path"] = str(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match=r"^<scenario>: workload\.arrivals\.path: workload file '.*none\.csv' not found"):
        simulate(sc)
    sc["workload"] = {"arrivals": {"kind": "trace", "format": "azure"}, "lengths": {"kind": "file", "path": str(tmp_path), "format": "vllm-bench"}}
    with pytest.raises(ConfigError, match=r"<scenario>: workload\.arrivals\.path: Field required"):
        simulate(sc)
    sc["workload"] = {"requests": 5, "arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "file", "path": str(tmp_path), "format": "vllm-bench"}}
    with pytest.raises(ConfigError, match=r"^<scenario>: workload\.lengths\.path: workload file .* is a directory"):
        simulate(sc)
