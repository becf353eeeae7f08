"""Tests for the trace and length-file readers (Azure 2024, Mooncake, BurstGPT, native Parquet,
ShareGPT, vLLM bench results) and for trace selection (time window, length filters, first N, rate
scaling)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from fleetwise.errors import ConfigError, TraceError
from fleetwise.workload import (
    Workload,
    WorkloadConfig,
    build_workload,
    load_azure_csv,
    load_burstgpt,
    load_lengths,
    load_mooncake,
    load_parquet,
    load_sharegpt,
    load_trace,
    load_vllm_bench,
    read_burstgpt,
    read_vllm_bench,
)
from fleetwise.workload.config import TraceFormat
from fleetwise.workload.traces import TRACE_LOADERS, select_requests

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRACES = REPO / "traces"


def shared_trace(name: str) -> Path:
    """A real trace file from $FLEETWISE_SHARED_TRACES or ../shared/traces; skip when absent."""
    override = os.environ.get("FLEETWISE_SHARED_TRACES")
    path = (Path(override) if override else REPO.parent / "shared" / "traces") / name
    if not path.is_file():
        pytest.skip(f"real trace {path} not available (set FLEETWISE_SHARED_TRACES)")
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def trace_config(path: Path | str, fmt: str, **options) -> WorkloadConfig:
    """A trace-replay workload config."""
    arrivals = {"kind": "trace", "path": str(path), "format": fmt, **options}
    requests = arrivals.pop("requests", None)
    return WorkloadConfig.model_validate({"arrivals": arrivals, "requests": requests})


def test_every_trace_format_has_a_loader():
    from typing import get_args

    assert set(TRACE_LOADERS) == set(get_args(TraceFormat))
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace("x", "csv")


# --- Azure 2024 -----------------------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def test_azure_2024_offsets_and_microseconds(tmp_path):
    rows = [
        "2024-05-10 00:00:00.010000+00:00,2048,28",
        "2024-05-10 00:00:00.250000+00:00,100,1",
        "2024-05-10 00:00:01+00:00,7,9",
        # 02:00:01.5 at +02:00 is 00:00:01.5 UTC.
        "2024-05-10 02:00:01.500000+02:00,5,5",
        "2024-05-09 23:00:02.000001-01:00,5,5",
    ]
    path = write(tmp_path, "AzureLLMInferenceTrace_code_1week.csv", AZURE_HEADER + "\n" + "\n".join(rows) + "\n")
    frame = load_azure_csv(path)
    assert frame["arrival_ns"].to_list() == [0, 240_000_000, 990_000_000, 1_490_000_000, 1_990_001_000]
    assert frame["prompt_tokens"].to_list() == [2048, 100, 7, 5, 5]


def test_azure_2024_out_of_order_after_offset(tmp_path):
    rows = ["2024-05-10 00:00:01+00:00,1,1", "2024-05-10 02:00:00.5+02:00,1,1"]
    path = write(tmp_path, "a.csv", AZURE_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(TraceError, match=r"a.csv: line 3: .*earlier"):
        load_azure_csv(path)


def test_azure_bad_offset(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER + "\n2024-05-10 00:00:01+25:00,1,1\n")
    with pytest.raises(TraceError, match=r"line 2: bad TIMESTAMP .*\+HH:MM"):
        load_azure_csv(path)


# --- Mooncake -------------------------------------------------------------------------------------


def test_mooncake_conversation_trace():
    frame = load_mooncake(shared_trace("mooncake_fast25_conversation.jsonl"))
    assert frame.columns == ["arrival_ns", "prompt_tokens", "output_tokens", "hash_ids"]
    assert frame.schema["hash_ids"] == pl.List(pl.Int64)
    assert frame.height == 12_031
    assert frame["prompt_tokens"].mean() == pytest.approx(12_035, abs=0.5)
    assert frame["output_tokens"].mean() == pytest.approx(343, abs=0.5)
    # The released traces have no zero-length output (smallest is 1): nothing is clamped.
    assert frame["output_tokens"].min() == 1
    assert frame["prompt_tokens"].min() == 891 and frame["prompt_tokens"].max() == 126_195
    arrival = frame["arrival_ns"].to_numpy()
    assert arrival[0] == 0 and arrival[-1] == 3_536_999 * 1_000_000
    assert np.all(np.diff(arrival) >= 0)
    blocks = np.ceil(frame["prompt_tokens"].to_numpy() / 512)
    np.testing.assert_array_equal(frame["hash_ids"].list.len().to_numpy(), blocks)
    assert frame["hash_ids"].explode().n_unique() == 182_790


def test_mooncake_synthetic_trace():
    frame = load_mooncake(shared_trace("mooncake_fast25_synthetic.jsonl"))
    assert frame.height == 3_993
    assert frame["prompt_tokens"].mean() == pytest.approx(15_325, abs=0.5)
    assert frame["output_tokens"].mean() == pytest.approx(149, abs=0.2)
    assert frame["arrival_ns"][-1] == 1_022_025 * 1_000_000
    blocks = np.ceil(frame["prompt_tokens"].to_numpy() / 512)
    np.testing.assert_array_equal(frame["hash_ids"].list.len().to_numpy(), blocks)


def test_mooncake_workload_carries_hash_ids():
    path = shared_trace("mooncake_fast25_conversation.jsonl")
    workload = build_workload(trace_config(path, "mooncake", requests=100), 0)
    assert len(workload) == 100 and workload.session_id is None
    assert workload.hash_ids.to_list()[:2] == [list(range(14)), [0, *range(14, 28)]]
    frame = workload.to_frame()
    assert frame.columns == ["request_id", "arrival_ns", "prompt_tokens", "output_tokens", "hash_ids"]


def test_mooncake_synthetic_file(tmp_path):
    lines = [
        '{"timestamp": 1000, "input_length": 600, "output_length": 5, "hash_ids": [0, 1], "x": "y"}',
        "",
        '{"timestamp": 1000.5, "input_length": 10, "output_length": 1, "hash_ids": [0]}',
        '{"timestamp": 4000, "input_length": 1025, "output_length": 7, "hash_ids": [0, 1, 2]}',
    ]
    frame = load_mooncake(write(tmp_path, "m.jsonl", "\n".join(lines) + "\n"))
    assert frame["arrival_ns"].to_list() == [0, 500_000, 3_000_000_000]
    assert frame["prompt_tokens"].to_list() == [600, 10, 1025]
    assert frame["output_tokens"].to_list() == [5, 1, 7]
    assert frame["hash_ids"].to_list() == [[0, 1], [0], [0, 1, 2]]


def test_mooncake_without_hash_ids(tmp_path):
    text = '{"timestamp": 0, "input_length": 6, "output_length": 5}\n'
    assert load_mooncake(write(tmp_path, "m.jsonl", text)).columns == [
        "arrival_ns",
        "prompt_tokens",
        "output_tokens",
    ]


GOOD = '{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": [1]}'


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ('{"timestamp": 5, "input_length": 5, "output_length": 5, "hash_ids": [1]', "invalid JSON"),
        ('{"timestamp": 5, "output_length": 5, "hash_ids": [1]}', "'input_length'"),
        ('{"timestamp": 5, "input_length": 0, "output_length": 5, "hash_ids": [1]}', "input_length must be >= 1, got 0"),
        ('{"timestamp": 5, "input_length": 5, "output_length": 0, "hash_ids": [1]}', "output_length must be >= 1, got 0"),
        ('{"timestamp": 5, "input_length": -3, "output_length": 5, "hash_ids": [1]}', "input_length must be >= 1"),
        ('{"timestamp": 5, "input_length": 5.5, "output_length": 5, "hash_ids": [1]}', "input_length must be an integer"),
        ('{"timestamp": "x", "input_length": 5, "output_length": 5, "hash_ids": [1]}', "timestamp must be a number"),
        ('{"timestamp": 5, "input_length": 5, "output_length": 5, "hash_ids": [1, "a"]}', "hash_ids[1]"),
        ('{"timestamp": 5, "input_length": 5, "output_length": 5, "hash_ids": 7}', "hash_ids must be a list"),
        ('{"timestamp": 5, "input_length": 5, "output_length": 5}', "'hash_ids' (other lines have it)"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_mooncake_malformed_line_is_named(tmp_path, bad, fragment):
    # Line 1 and 2 are good, line 3 is blank, line 4 is bad, line 5 is good.
    text = "\n".join([GOOD, GOOD.replace('"timestamp": 0', '"timestamp": 3'), "", bad, GOOD]) + "\n"
    with pytest.raises(TraceError) as info:
        load_mooncake(write(tmp_path, "trace.jsonl", text))
    message = str(info.value)
    assert "trace.jsonl: line 4:" in message
    assert fragment in message


def test_mooncake_timestamps_must_not_go_back(tmp_path):
    lines = [GOOD.replace('"timestamp": 0', f'"timestamp": {t}') for t in (0, 10, 9)]
    with pytest.raises(TraceError, match=r"line 3: timestamp 9 is earlier .* \(line 2\)"):
        load_mooncake(write(tmp_path, "t.jsonl", "\n".join(lines)))


@pytest.mark.parametrize("text", ["", "\n \n"])
def test_mooncake_empty(tmp_path, text):
    with pytest.raises(TraceError, match="empty"):
        load_mooncake(write(tmp_path, "e.jsonl", text))


def test_mooncake_sample_file_matches_generator_spec():
    frame = load_mooncake(SAMPLE_TRACES / "sample-mooncake.jsonl")
    assert frame.height == 300
    prompt = frame["prompt_tokens"].to_numpy()
    np.testing.assert_array_equal(frame["hash_ids"].list.len().to_numpy(), np.ceil(prompt / 512))
    firsts = frame["hash_ids"].list.first().to_numpy()
    # 4 groups x 2 shared blocks (ids 0..7); about half the requests are members.
    members = firsts < 8
    assert 120 <= members.sum() <= 180
    member_hashes = frame.filter(pl.Series(members))["hash_ids"]
    np.testing.assert_array_equal(member_hashes.list.get(1).to_numpy(), firsts[members] + 1)
    non_member_ids = frame.filter(~pl.Series(members))["hash_ids"].explode()
    assert non_member_ids.n_unique() == non_member_ids.len()


# --- BurstGPT -------------------------------------------------------------------------------------

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
BURST_ROWS = [
    "5,ChatGPT,472,18,490,Conversation log",
    "45.25,ChatGPT,1087,0,1087,Conversation log",  # failed
    "118,GPT-4,417,276,693,API log",
    "119,GPT-4,0,276,276,API log",  # empty prompt
    "130.5,ChatGPT,3,4,7,API log",
    "131,GPT-4,30,0,30,Conversation log",  # failed
]


def test_burstgpt_drops_failed_rows_and_counts_them(tmp_path):
    path = write(tmp_path, "BurstGPT_1.csv", BURST_HEADER + "\n" + "\n".join(BURST_ROWS) + "\n")
    loaded = read_burstgpt(path)
    assert loaded.rows_read == 6
    assert loaded.dropped == {"failed": 2, "empty_prompt": 1}
    assert loaded.frame.to_dict(as_series=False) == {
        "arrival_ns": [0, 113_000_000_000, 125_500_000_000],
        "prompt_tokens": [472, 417, 3],
        "output_tokens": [18, 276, 4],
    }
    assert load_burstgpt(path).equals(loaded.frame)


def test_burstgpt_model_and_log_type_filters(tmp_path):
    path = write(tmp_path, "b.csv", BURST_HEADER + "\n" + "\n".join(BURST_ROWS) + "\n")
    gpt4 = read_burstgpt(path, model="GPT-4")
    assert gpt4.frame["prompt_tokens"].to_list() == [417]
    assert gpt4.dropped == {"other_model": 3, "failed": 1, "empty_prompt": 1}
    api = read_burstgpt(path, model="ChatGPT", log_type="API log")
    assert api.frame["prompt_tokens"].to_list() == [3]
    with pytest.raises(ConfigError, match=r"no row has Model 'Claude'; values present: 'ChatGPT', 'GPT-4'"):
        read_burstgpt(path, model="Claude")
    workload = build_workload(trace_config(path, "burstgpt", model="GPT-4"), 0)
    assert workload.prompt_tokens.tolist() == [417]


def test_burstgpt_rows_are_put_in_time_order(tmp_path):
    rows = ["10,ChatGPT,1,1,2,API log", "4,ChatGPT,2,2,4,API log", "10,ChatGPT,3,3,6,API log"]
    frame = load_burstgpt(write(tmp_path, "b.csv", BURST_HEADER + "\n" + "\n".join(rows)))
    assert frame["prompt_tokens"].to_list() == [2, 1, 3]
    assert frame["arrival_ns"].to_list() == [0, 6_000_000_000, 6_000_000_000]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("x,ChatGPT,1,1,2,API log", "Timestamp is not a number"),
        ("7,ChatGPT,-1,1,0,API log", "Request tokens must be >= 0"),
        ("7,ChatGPT,1,1.5,2,API log", "Response tokens is not an integer"),
        ("7,ChatGPT,1,1,API log", "fields"),
    ],
)
def test_burstgpt_malformed_rows(tmp_path, row, fragment):
    text = BURST_HEADER + "\n" + BURST_ROWS[0] + "\n" + row + "\n"
    with pytest.raises(TraceError) as info:
        load_burstgpt(write(tmp_path, "bg.csv", text))
    assert "bg.csv: line 3:" in str(info.value) and fragment in str(info.value)


def test_burstgpt_all_failed(tmp_path):
    text = BURST_HEADER + "\n5,ChatGPT,4,0,4,API log\n"
    with pytest.raises(TraceError, match="no successful request"):
        load_burstgpt(write(tmp_path, "b.csv", text))


def test_burstgpt_options_only_for_burstgpt():
    with pytest.raises(ValidationError, match="model applies only to format burstgpt"):
        trace_config("t.csv", "azure", model="GPT-4")


# --- native Parquet -------------------------------------------------------------------------------


def test_parquet_round_trip_of_a_workload(tmp_path):
    workload = Workload(
        arrival_ns=[100, 150, 150],
        prompt_tokens=[3, 40, 17],
        output_tokens=[1, 2, 3],
        hash_ids=[[1], [1, 2, 3], []],
        session_id=[0, -1, 0],
    )
    path = tmp_path / "w.parquet"
    workload.to_frame().write_parquet(path)
    frame = load_parquet(path)
    assert frame.columns == ["arrival_ns", "prompt_tokens", "output_tokens", "session_id", "hash_ids"]
    assert frame["arrival_ns"].to_list() == [0, 50, 50]
    assert frame["hash_ids"].to_list() == [[1], [1, 2, 3], []]
    replayed = build_workload(trace_config(path, "parquet"), 0)
    assert replayed.session_id.tolist() == [0, -1, 0]
    assert replayed.hash_ids.to_list() == [[1], [1, 2, 3], []]


def test_parquet_minimal_with_narrow_integer_types(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame(
        {
            "arrival_ns": pl.Series([5, 9], dtype=pl.UInt32),
            "prompt_tokens": pl.Series([1, 2], dtype=pl.Int16),
            "output_tokens": [3, 4],
        }
    ).write_parquet(path)
    frame = load_parquet(path)
    assert frame.schema == {"arrival_ns": pl.Int64, "prompt_tokens": pl.Int64, "output_tokens": pl.Int64}
    assert frame["arrival_ns"].to_list() == [0, 4]


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        ({"arrival_ns": [0.0, 1.0]}, "column arrival_ns must be integers (int64), got Float64"),
        ({"prompt_tokens": ["1", "2"]}, "column prompt_tokens must be integers"),
        ({"arrival_ns": [5, 4]}, "row 1 (0-based): arrival_ns 4 is smaller"),
        ({"output_tokens": [1, 0]}, "row 1 (0-based): output_tokens must be >= 1, got 0"),
        ({"prompt_tokens": [None, 1]}, "row 0 (0-based): prompt_tokens is null"),
        ({"session_id": [0, -2]}, "row 1 (0-based): session_id must be >= 0, or -1"),
        ({"hash_ids": [[1], [2, None]]}, "row 1 (0-based): hash_ids contains null"),
        ({"hash_ids": [1, 2]}, "column hash_ids must be a list of integers"),
    ],
)
def test_parquet_validation(tmp_path, columns, fragment):
    data = {"arrival_ns": [0, 1], "prompt_tokens": [1, 1], "output_tokens": [1, 1]} | columns
    path = tmp_path / "bad.parquet"
    pl.DataFrame(data).write_parquet(path)
    with pytest.raises(TraceError) as info:
        load_parquet(path)
    assert "bad.parquet" in str(info.value) and fragment in str(info.value)


def test_parquet_missing_column_and_unreadable(tmp_path):
    path = tmp_path / "m.parquet"
    pl.DataFrame({"arrival_ns": [0], "prompt_tokens": [1]}).write_parquet(path)
    with pytest.raises(TraceError, match="missing column.*output_tokens.*present: arrival_ns, prompt_tokens"):
        load_parquet(path)
    junk = write(tmp_path, "junk.parquet", "not parquet")
    with pytest.raises(TraceError, match="junk.parquet: not a readable Parquet file"):
        load_parquet(junk)
    with pytest.raises(TraceError, match="not found"):
        load_parquet(tmp_path / "none.parquet")


# --- ShareGPT -------------------------------------------------------------------------------------

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "Hello there"},  # 11 chars -> 3 tokens
            {"from": "gpt", "value": "Hi! How can I help you today?"},  # 29 -> 8
            {"from": "human", "value": "x"},  # 1 -> 1
            {"from": "gpt", "value": ""},  # 0 -> 1 (at least one token)
        ],
    },
    {"id": "b", "conversations": []},
    {
        "id": "c",
        "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "gpt", "value": "abc"},  # not preceded by a human turn: no pair
            {"from": "human", "value": "12345678"},  # last message: no reply, no pair
        ],
    },
    {"id": "d", "conversations": [{"from": "human", "value": "ééééé"}, {"from": "gpt", "value": "abcdefghi"}]},
]


def test_sharegpt_pairs_and_token_estimate(tmp_path):
    path = write(tmp_path, "sg.json", json.dumps(SHAREGPT, ensure_ascii=False))
    frame = load_sharegpt(path)
    assert frame.rows() == [(3, 8), (1, 1), (2, 3)]
    assert load_sharegpt(path, chars_per_token=1).rows() == [(11, 29), (1, 1), (5, 9)]
    via_config = load_lengths(path, "sharegpt", chars_per_token=2.0)
    assert via_config.rows() == [(6, 15), (1, 1), (3, 5)]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([{"conversations": []}, {"id": "x"}], "record 1 (0-based): missing or null 'conversations'"),
        ([{"conversations": [{"from": "human"}]}], "record 0 (0-based), message 0: a message needs"),
        ([{"conversations": "hi"}], "record 0 (0-based): 'conversations' must be a list"),
        ([7], "record 0 (0-based): expected an object"),
        ({"conversations": []}, "expected a JSON list"),
        ([{"conversations": [{"from": "human", "value": "a"}]}], "no request"),
    ],
)
def test_sharegpt_malformed(tmp_path, data, fragment):
    path = write(tmp_path, "sg.json", json.dumps(data))
    with pytest.raises(TraceError) as info:
        load_sharegpt(path)
    assert "sg.json" in str(info.value) and fragment in str(info.value)


def test_sharegpt_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path, "sg.json", '[\n{"conversations": []},\n{"conversations": [}\n]')
    with pytest.raises(TraceError, match=r"sg.json: line 3 column 20: invalid JSON"):
        load_sharegpt(path)


# --- vLLM bench results ---------------------------------------------------------------------------


def test_vllm_bench_result_drops_failed_requests(tmp_path):
    result = {
        "backend": "vllm",
        "completed": 3,
        "input_lens": [128, 256, 512, 1024],
        "output_lens": [64, 0, 32, 16],
        "ttfts": [0.1, 0.0, 0.2, 0.3],
        "errors": ["", "timeout", "", ""],
    }
    path = write(tmp_path, "vllm-result.json", json.dumps(result))
    loaded = read_vllm_bench(path)
    assert loaded.dropped == {"failed": 1} and loaded.rows_read == 4
    assert loaded.frame.rows() == [(128, 64), (512, 32), (1024, 16)]
    assert load_vllm_bench(path).equals(loaded.frame)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"input_lens": [1]}, "missing key(s) output_lens"),
        ({"input_lens": [1, 2], "output_lens": [1]}, "input_lens has 2 entries but output_lens has 1"),
        ({"input_lens": [1, 2.5], "output_lens": [1, 1]}, "input_lens[1] must be an integer, got 2.5"),
        ({"input_lens": [1, 0], "output_lens": [1, 1]}, "input_lens[1] must be >= 1, got 0"),
        ({"input_lens": [1, 1], "output_lens": [-1, 1]}, "output_lens[0] must be >= 0"),
        ({"input_lens": [1], "output_lens": [0]}, "no successful request"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_vllm_bench_malformed(tmp_path, data, fragment):
    path = write(tmp_path, "r.json", json.dumps(data))
    with pytest.raises(TraceError) as info:
        load_vllm_bench(path)
    assert "r.json" in str(info.value) and fragment in str(info.value)


def test_file_lengths_formats_through_config(tmp_path):
    write(tmp_path, "r.json", json.dumps({"input_lens": [10, 20], "output_lens": [3, 0]}))
    cfg = WorkloadConfig.model_validate(
        {
            "arrivals": {"kind": "poisson", "rate": 1.0},
            "lengths": {"kind": "file", "path": "r.json", "format": "vllm-bench"},
            "requests": 50,
        }
    )
    workload = build_workload(cfg, 0, tmp_path)
    assert set(zip(workload.prompt_tokens.tolist(), workload.output_tokens.tolist())) == {(10, 3)}
    with pytest.raises(ValidationError, match="prompt_column applies only to format csv"):
        WorkloadConfig.model_validate(
            {
                "arrivals": {"kind": "poisson", "rate": 1.0},
                "lengths": {"kind": "file", "path": "r.json", "format": "sharegpt", "prompt_column": "a"},
                "requests": 5,
            }
        )


# --- selection: window, filters, first N, rate scale ----------------------------------------------


def frame_of(arrival_s: list[float], prompt: list[int], output: list[int]) -> pl.DataFrame:
    """A loaded-trace frame."""
    return pl.DataFrame(
        {
            "arrival_ns": np.rint(np.array(arrival_s) * 1e9).astype(np.int64),
            "prompt_tokens": prompt,
            "output_tokens": output,
        }
    )


def test_window_keeps_half_open_interval_and_rebases():
    frame = frame_of([0, 1, 2, 3, 4, 5], [10, 20, 30, 40, 50, 60], [1, 2, 3, 4, 5, 6])
    out = select_requests(frame, start_s=1.5, duration_s=2.5)  # [1.5, 4.0): t = 2, 3
    assert out["prompt_tokens"].to_list() == [30, 40]
    assert out["arrival_ns"].to_list() == [0, 1_000_000_000]
    out = select_requests(frame, start_s=2)  # to the end, 2 inclusive
    assert out["prompt_tokens"].to_list() == [30, 40, 50, 60]


def test_filters_apply_after_the_window():
    frame = frame_of([0, 1, 2, 3, 4, 5, 6], [5, 500, 50, 700, 60, 70, 80], [9, 1, 200, 1, 2, 3, 4])
    out = select_requests(
        frame,
        start_s=1,
        duration_s=5,  # t = 1..5: prompts 500, 50, 700, 60, 70
        min_prompt_tokens=55,
        max_prompt_tokens=600,  # drops 50 and 700
        max_output_tokens=2,
    )
    # Kept: t=1 (500, 1) and t=4 (60, 2); 70 has output 3 > 2. Re-based to the first kept.
    assert out.rows() == [(0, 500, 1), (3_000_000_000, 60, 2)]
    # Filtering first would have kept the same window [1, 6): the window is in trace time.
    out = select_requests(frame, start_s=1, duration_s=5, min_prompt_tokens=600)
    assert out.rows() == [(0, 700, 1)]


def test_requests_and_rate_scale_after_selection():
    frame = frame_of([0, 1, 2, 3, 4, 5], [10, 20, 30, 40, 50, 60], [1] * 6)
    out = select_requests(frame, start_s=1, requests=3, rate_scale=4.0)
    assert out["prompt_tokens"].to_list() == [20, 30, 40]
    assert out["arrival_ns"].to_list() == [0, 250_000_000, 500_000_000]
    with pytest.raises(ConfigError, match="requests is 6 but the trace has only 5 rows after"):
        select_requests(frame, start_s=1, requests=6)


def test_empty_selection_is_config_error():
    frame = frame_of([0, 1, 2], [10, 20, 30], [1, 1, 1])
    with pytest.raises(ConfigError, match="no request arrives between 5 s and 6 s"):
        select_requests(frame, start_s=5, duration_s=1)
    with pytest.raises(ConfigError, match="none of the 3 requests"):
        select_requests(frame, max_prompt_tokens=5)


def test_trace_options_on_a_real_trace():
    path = shared_trace("azure_llm_2023_conv.csv")
    full = load_azure_csv(path)
    cfg = trace_config(path, "azure", start_s=600, duration_s=300, max_prompt_tokens=2000, rate_scale=2.0)
    workload = build_workload(cfg, 0)
    t = full["arrival_ns"].to_numpy()
    keep = (t >= 600e9) & (t < 900e9) & (full["prompt_tokens"].to_numpy() <= 2000)
    assert len(workload) == keep.sum()
    expected = t[keep] - t[keep][0]
    assert np.all(np.abs(workload.arrival_ns - expected / 2) <= 0.5)
    assert workload.arrival_ns[-1] <= 150e9
    np.testing.assert_array_equal(workload.prompt_tokens, full["prompt_tokens"].to_numpy()[keep])


def test_trace_option_validation():
    with pytest.raises(ValidationError, match="min_prompt_tokens"):
        trace_config("t.csv", "azure", min_prompt_tokens=10, max_prompt_tokens=5)
    with pytest.raises(ValidationError, match="duration_s"):
        trace_config("t.csv", "azure", duration_s=0)
    with pytest.raises(ValidationError, match="format"):
        trace_config("t.csv", "sharegpt")


def test_length_formats_for_fit_include_traces():
    frame = load_lengths(SAMPLE_TRACES / "sample-mooncake.jsonl", "mooncake")
    assert frame.columns == ["prompt_tokens", "output_tokens"] and frame.height == 300
    with pytest.raises(ValueError, match="unknown length file format"):
        load_lengths(SAMPLE_TRACES / "chat-lengths.csv", "tsv")


def test_ceil_tokens_helper_consistent_with_docs():
    # The documented estimate: ceil(characters / chars_per_token), at least 1.
    assert [max(1, math.ceil(c / 4)) for c in (0, 1, 4, 5, 11)] == [1, 1, 1, 2, 3]


def test_readme_yaml_examples_are_valid_configs():
    import re

    import yaml

    text = (SAMPLE_TRACES / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    workloads = [b for b in blocks if b.startswith("workload:")]
    assert len(workloads) >= 4
    for block in workloads:
        WorkloadConfig.model_validate(yaml.safe_load(block)["workload"])
    lengths = [line for b in blocks if b.startswith("lengths:") for line in b.splitlines()]
    assert len(lengths) >= 3
    for line in lengths:
        spec = yaml.safe_load(line)["lengths"]
        WorkloadConfig.model_validate(
            {"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": spec, "requests": 1}
        )
    # The commented-out alternative arrival processes are valid too.
    for line in re.findall(r"# (arrivals: \{kind: .*\})", text):
        arrivals = yaml.safe_load(line)["arrivals"]
        WorkloadConfig.model_validate(
            {"arrivals": arrivals, "lengths": {"kind": "constant", "prompt": 1, "output": 1}, "requests": 1}
        )
