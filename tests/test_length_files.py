"""Tests for the length-only file readers (ShareGPT, vLLM bench results) and for length files used
through a workload config or by the fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError
from trace_helpers import SAMPLE_TRACES, write

from fleetwise.errors import TraceError
from fleetwise.workload import (
    WorkloadConfig,
    build_workload,
    load_lengths,
    load_sharegpt,
    load_vllm_bench,
    read_vllm_bench,
)


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


def test_rows_a_length_file_leaves_out_are_counted_and_sampling_is_unchanged(tmp_path):
    # Failed requests and rows over max_total_tokens used to be dropped without a word.
    data = {"input_lens": [100, 200, 300, 4000, 50, 60], "output_lens": [10, 0, 20, 3000, 0, 5]}
    write(tmp_path, "r.json", json.dumps(data))
    lengths = {"kind": "file", "path": "r.json", "format": "vllm-bench", "max_total_tokens": 5000}
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": lengths, "requests": 40})
    workload = build_workload(cfg, 7, tmp_path)
    assert workload.length_rows == {"rows_read": 6, "failed": 2, "max_total_tokens": 1, "kept": 3}
    # The same draws as before the counting: uniform over the kept rows, from the lengths' stream.
    kept = np.array([(100, 10), (300, 20), (60, 5)])
    rows = np.random.default_rng([7, 2]).integers(0, 3, size=40)
    assert workload.prompt_tokens.tolist() == kept[rows, 0].tolist()
    assert workload.output_tokens.tolist() == kept[rows, 1].tolist()
    fit = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "fit", "path": "r.json", "format": "vllm-bench"}, "requests": 5})
    assert build_workload(fit, 7, tmp_path).length_rows == {"rows_read": 6, "failed": 2, "kept": 4}
    plain = WorkloadConfig.model_validate({"arrivals": {"kind": "poisson", "rate": 1.0}, "lengths": {"kind": "constant", "prompt": 5, "output": 5}, "requests": 5})
    assert build_workload(plain, 7).length_rows is None


def test_run_reports_the_rows_a_length_file_left_out(tmp_path):
    import yaml
    from conftest import run_cli, small_scenario

    write(tmp_path, "r.json", json.dumps({"input_lens": [100, 200, 300, 4000], "output_lens": [10, 0, 20, 3000]}))
    sc = small_scenario()
    sc["workload"].update(requests=20, lengths={"kind": "file", "path": "r.json", "format": "vllm-bench", "max_total_tokens": 5000})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sc))
    r = run_cli("run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "r.json: 4 rows read, 2 kept; left out on purpose: failed 1, max_total_tokens 1" in r.stdout, r.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["length_rows"] == {"rows_read": 4, "failed": 1, "max_total_tokens": 1, "kept": 2}


def test_length_formats_for_fit_include_traces():
    frame = load_lengths(SAMPLE_TRACES / "sample-mooncake.jsonl", "mooncake")
    assert frame.columns == ["prompt_tokens", "output_tokens"] and frame.height == 300
    with pytest.raises(ValueError, match="unknown length file format"):
        load_lengths(SAMPLE_TRACES / "chat-lengths.csv", "tsv")


def test_ceil_tokens_helper_consistent_with_docs():
    # The documented estimate: ceil(characters / chars_per_token), at least 1.
    assert [max(1, math.ceil(c / 4)) for c in (0, 1, 4, 5, 11)] == [1, 1, 1, 2, 3]
