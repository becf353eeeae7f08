"""Tests for the arrival-timed trace readers: the format registry, Azure 2024, Mooncake, BurstGPT
and native Parquet."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from trace_helpers import SAMPLE_TRACES, shared_trace, trace_config, write

from fleetwise.errors import ConfigError, TraceError
from fleetwise.workload import (
    Workload,
    build_workload,
    load_azure_csv,
    load_burstgpt,
    load_mooncake,
    load_parquet,
    load_trace,
    read_burstgpt,
)
from fleetwise.workload.config import TraceFormat, WorkloadConfig
from fleetwise.workload.traces import TRACE_LOADERS


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


def test_hash_block_tokens_goes_with_hash_ids(tmp_path):
    # Set on a trace without hashes it did nothing; a trace with hashes but without it lost them
    # when prefixes were used (prefix caching then said the workload had no hashes).
    import fleetwise
    from conftest import small_scenario

    plain = tmp_path / "plain.parquet"
    pl.DataFrame({"arrival_ns": [0, 10], "prompt_tokens": [32, 32], "output_tokens": [2, 2]}).write_parquet(plain)
    with pytest.raises(ConfigError, match=r"workload.arrivals.hash_block_tokens: the trace .* has no hash_ids column"):
        build_workload(trace_config(plain, "parquet", hash_block_tokens=16), 0)
    with_prefixes = WorkloadConfig.model_validate({
        "arrivals": {"kind": "trace", "path": str(plain), "format": "parquet", "hash_block_tokens": 16},
        "prefixes": {"groups": 1, "prefix_tokens": 16, "fraction": 1.0}})
    with pytest.raises(ConfigError, match=r"workload.arrivals.hash_block_tokens: the trace .* has no hash_ids column"):
        build_workload(with_prefixes, 0)  # generated prefixes never read it either
    hashed = tmp_path / "hashed.parquet"
    pl.DataFrame({"arrival_ns": [0, 10], "prompt_tokens": [32, 32], "output_tokens": [2, 2], "hash_ids": [[1, 2], [1, 3]]}).write_parquet(hashed)
    sc = small_scenario()
    sc["workload"] = {"arrivals": {"kind": "trace", "format": "parquet", "path": str(hashed)}}
    sc["cluster"]["router"] = {"kind": "prefix-affinity"}
    with pytest.raises(ConfigError, match="workload.arrivals.hash_block_tokens: the workload has hash_ids but not how many tokens each covers"):
        fleetwise.simulate(sc)
    sc["workload"]["arrivals"]["hash_block_tokens"] = 16
    assert fleetwise.simulate(sc).summary["finished"] == 2
