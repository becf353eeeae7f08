"""Readers of a deployment's per-request log (fleetwise.requestlog): the real vLLM benchmark file,
the generic table in its three encodings and aliases, fleetwise's own requests.parquet, and the
messages that name the bad line."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from fleetwise.errors import ConfigError, TraceError
from fleetwise.requestlog import read_request_log

from conftest import REPO, run_cli

VLLM_LOG = REPO / "tests" / "data" / "vllm_bench_cpu_tiny.json"
"""A real `vllm bench serve --save-result --save-detailed` result (tools/requestlog/vllm_cpu_bench.py)."""
GPU_LOG = REPO / "calibration" / "h100" / "serving" / "requests.csv"
"""The test engine's per-request log on an H100 (three traces, a `trace` column)."""


def test_vllm_bench_log_matches_vllms_own_summary():
    log = read_request_log(VLLM_LOG)
    data = json.loads(VLLM_LOG.read_text())
    assert log.format == "vllm-bench" and log.has_itl and len(log) == data["completed"] == log.rows_read
    assert log.frame["arrival_s"][0] == 0 and log.frame["arrival_s"].is_sorted()
    lat = log.latencies()
    # the same definitions as vLLM's: its printed means, medians and p99s, from our frame
    for metric in ("ttft", "tpot", "itl"):
        ms = lat[metric] * 1e3
        assert np.mean(ms) == pytest.approx(data[f"mean_{metric}_ms"], rel=1e-9)
        assert np.median(ms) == pytest.approx(data[f"median_{metric}_ms"], rel=1e-9)
        assert np.percentile(ms, 99) == pytest.approx(data[f"p99_{metric}_ms"], rel=1e-9)
    # arrivals are the send times; the span is the benchmark's
    span = max(data["start_times"]) - min(data["start_times"])
    assert log.frame["arrival_s"].max() == pytest.approx(span)
    assert log.to_workload().arrival_ns[-1] == round(span * 1e9)
    assert log.frame["prompt_tokens"].to_list() == data["input_lens"]


def _vllm_variant(tmp_path, **changes):
    data = json.loads(VLLM_LOG.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path, data


def test_vllm_failed_requests_dropped_and_arrivals_rebuilt_only_when_certain(tmp_path):
    data = json.loads(VLLM_LOG.read_text())
    out, errors = list(data["output_lens"]), list(data["errors"])
    out[3], errors[5] = 0, "connection reset"
    path, _ = _vllm_variant(tmp_path, output_lens=out, errors=errors)
    log = read_request_log(path)
    assert len(log) == data["completed"] - 2 and log.dropped == {"failed": 2}
    assert 3 not in log.frame["source_row"].to_list() and 5 not in log.frame["source_row"].to_list()
    # no start_times: refused at a finite rate ...
    path, _ = _vllm_variant(tmp_path, start_times=None)
    with pytest.raises(TraceError, match="no start_times, so the arrivals are not recorded"):
        read_request_log(path)
    # ... but a burst (request_rate inf, no max_concurrency) arrived all at once
    path, _ = _vllm_variant(tmp_path, start_times=None, request_rate="inf")
    log = read_request_log(path)
    assert log.frame["arrival_s"].max() == 0 and "every request arrived at 0" in log.notes[0]


def test_vllm_bad_entries_name_the_request(tmp_path):
    data = json.loads(VLLM_LOG.read_text())
    ttfts = list(data["ttfts"])
    ttfts[7] = "fast"
    path, _ = _vllm_variant(tmp_path, ttfts=ttfts)
    with pytest.raises(TraceError, match=r"bench.json: request 7: ttfts\[7\] must be a number"):
        read_request_log(path)
    lat = list(data["latencies"])
    lat[4] = data["ttfts"][4] / 2  # the last token before the first
    path, _ = _vllm_variant(tmp_path, latencies=lat)
    with pytest.raises(TraceError, match=r"request 4: last token .* is before the first token"):
        read_request_log(path)
    path, _ = _vllm_variant(tmp_path, ttfts=data["ttfts"][:-1])
    with pytest.raises(TraceError, match="ttfts has .* entries but input_lens has"):
        read_request_log(path)
    path, _ = _vllm_variant(tmp_path, input_lens=None)
    with pytest.raises(TraceError, match="missing key.*input_lens.*--save-detailed"):
        read_request_log(path)


def test_table_csv_select_and_latencies():
    log = read_request_log(GPU_LOG, select={"trace": "rate6"})
    raw = pl.read_csv(GPU_LOG).filter(pl.col("trace") == "rate6")
    assert log.format == "table" and len(log) == 500 and log.dropped == {"not_selected": 900} and not log.has_itl
    lat = log.latencies()
    ttft = (raw["first_token_s"] - raw["arrival_s"]).to_numpy()
    assert np.allclose(np.sort(lat["ttft"]), np.sort(ttft), atol=1e-12)
    assert lat["tpot"].size == int((raw["output_tokens"] > 1).sum())
    # line numbers are the file's: the first rate6 row is on line 302 (header + 300 calibration rows)
    assert log.frame["source_row"][0] == 302


def test_table_aliases_units_and_encodings_agree(tmp_path):
    rows = [
        {"timestamp_ms": 1000.0, "ttft_ms": 20.0, "e2e_ms": 120.0, "input_len": 50, "completion_tokens": 6, "itl_ms": [20.0, 20.0, 20.0, 20.0, 20.0]},
        {"timestamp_ms": 1500.0, "ttft_ms": 30.0, "e2e_ms": 70.0, "input_len": 80, "completion_tokens": 3, "itl_ms": [20.0, 20.0]},
    ]
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "log.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    csv = tmp_path / "log.csv"
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens,itl_s\n"
                   "1.0,1.02,1.12,50,6,0.02;0.02;0.02;0.02;0.02\n\n1.5,1.53,1.57,80,3,0.02;0.02\n")
    frames = [read_request_log(p).frame.drop("source_row") for p in (jsonl, parquet, csv)]
    for f in frames:
        assert f["arrival_s"].to_list() == pytest.approx([0.0, 0.5])
        assert f["first_token_s"].to_list() == pytest.approx([0.02, 0.53])
        assert f["last_token_s"].to_list() == pytest.approx([0.12, 0.57])
        assert f["prompt_tokens"].to_list() == [50, 80] and f["output_tokens"].to_list() == [6, 3]
        assert f["itl_s"].to_list()[1] == pytest.approx([0.02, 0.02])
    assert read_request_log(csv).frame["source_row"].to_list() == [2, 4]  # the blank line 3 is skipped


def test_table_parquet_timestamps_and_durations(tmp_path):
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    path = tmp_path / "ts.parquet"
    pl.DataFrame({"start_time": [t0, t0 + dt.timedelta(milliseconds=500)],
                  "ttft": [dt.timedelta(milliseconds=20), dt.timedelta(milliseconds=30)],
                  "latency": [0.12, 0.07], "prompt_tokens": [5, 6], "output_tokens": [3, 2]}).write_parquet(path)
    f = read_request_log(path).frame
    assert f["arrival_s"].to_list() == pytest.approx([0.0, 0.5])
    assert f["first_token_s"].to_list() == pytest.approx([0.02, 0.53]) and f["last_token_s"].to_list() == pytest.approx([0.12, 0.57])


def test_table_bad_rows_name_their_line(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.5,10,4\n\n0.2,0.1,0.5,10,4\n")
    with pytest.raises(TraceError, match=r"bad.csv: line 4: first token \(0.1 s\) is before the arrival \(0.2 s\)"):
        read_request_log(csv)
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.5,10,4\n0.2,0.3,0.5,ten,4\n")
    with pytest.raises(TraceError, match="bad.csv: line 3: prompt_tokens must be an integer, got 'ten'"):
        read_request_log(csv)
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.5,10,0\n")
    with pytest.raises(TraceError, match="line 2: output_tokens must be an integer from 1"):
        read_request_log(csv)
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.5,10,4\n0,0.1,1e300,10,4\n")
    with pytest.raises(TraceError, match="line 3: last token 1e\\+300 s after the arrival, more than the simulator's clock allows"):
        read_request_log(csv)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"arrival_s": 0, "ttft_s": 0.1, "e2e_s": 0.2, "prompt_tokens": 5, "output_tokens": 2}\n{"arrival_s": 1, "ttft_s": \n')
    with pytest.raises(TraceError, match="bad.jsonl: line 2 column .*: invalid JSON"):
        read_request_log(jsonl)
    parquet = tmp_path / "bad.parquet"
    pl.DataFrame({"arrival_s": [0.0, 1.0, float("nan")], "ttft_s": [0.1] * 3, "e2e_s": [0.2] * 3, "prompt_tokens": [5] * 3, "output_tokens": [2] * 3}).write_parquet(parquet)
    with pytest.raises(TraceError, match="bad.parquet: row 2: arrival_s must be a finite number"):
        read_request_log(parquet)


def test_table_missing_or_doubled_columns(tmp_path):
    csv = tmp_path / "cols.csv"
    csv.write_text("when,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.5,10,4\n")
    with pytest.raises(TraceError, match=r"missing column\(s\) for arrival .*accepted names: arrival/arrival_time.*columns present: when"):
        read_request_log(csv)
    csv.write_text("arrival_s,first_token_s,ttft_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.1,0.5,10,4\n")
    with pytest.raises(TraceError, match="first_token_s and ttft_s both give the first token"):
        read_request_log(csv)
    with pytest.raises(ConfigError, match="unknown request log format 'sglang'"):
        read_request_log(csv, "sglang")
    with pytest.raises(TraceError, match="unknown per-request table extension '.txt'"):
        read_request_log(tmp_path / "log.txt", "table")


def test_fleetwise_requests_parquet_keeps_finished(tmp_path):
    frame = pl.DataFrame({
        "request_id": [0, 1, 2], "arrival_ns": [5_000_000, 6_000_000, 7_000_000],
        "first_token_ns": [15_000_000, None, 27_000_000], "completion_ns": [45_000_000, None, 67_000_000],
        "prompt_tokens": [100, 200, 300], "output_tokens": [4, 8, 5], "status": ["finished", "rejected", "finished"],
    })
    path = tmp_path / "requests.parquet"
    frame.write_parquet(path)
    log = read_request_log(path)
    assert log.format == "fleetwise" and len(log) == 2 and log.dropped == {"rejected": 1}
    assert log.to_workload().arrival_ns.tolist() == [0, 2_000_000]
    lat = log.latencies()
    assert lat["ttft"].tolist() == pytest.approx([0.010, 0.020]) and lat["tpot"].tolist() == pytest.approx([0.010, 0.010])


def test_cli_bad_log_exits_2_naming_the_file(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens\n0,0.1,0.05,10,4\n")
    r = run_cli("validate", str(REPO / "calibration/h100/serving/scenario.yaml"), "--requests", str(csv))
    assert r.returncode == 2, r.stderr
    assert "bad.csv: line 2: last token" in r.stderr and "Traceback" not in r.stderr


def test_itl_lists_that_the_tokens_cannot_hold_are_refused(tmp_path):
    head = "arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens,itl_s\n"
    csv = tmp_path / "itl.csv"
    # 4 output tokens have 3 gaps at most; 7 given (they also add up to more than 0.4 s).
    csv.write_text(head + "0,0.1,0.5,100,4,0.05;0.05;0.05;0.05;0.05;0.05;0.05\n")
    with pytest.raises(TraceError, match=r"itl.csv: line 2: itl_s holds 7 gaps; 4 output tokens have at most 3"):
        read_request_log(csv)
    csv.write_text(head + "0,0.1,0.5,100,4,0.2;0.2;0.2\n")
    with pytest.raises(TraceError, match=r"line 2: itl_s gaps add up to 0.6 s, more than the 0.4 s from the first token to the last"):
        read_request_log(csv)
    # Rounded times and gaps (within 1% + 1 ms) and fewer gaps than tokens (streamed chunks) pass.
    csv.write_text(head + "0,0.1,0.5,100,4,0.1335;0.1335;0.1335\n0,0.1,0.5,100,4,0.2;0.2\n")
    assert len(read_request_log(csv)) == 2


def test_a_message_with_brackets_is_printed_whole(tmp_path):
    # The CLI prints errors through rich: "[nan, inf, 0.1]" must not be taken for markup and dropped.
    csv = tmp_path / "nan.csv"
    csv.write_text("arrival_s,first_token_s,last_token_s,prompt_tokens,output_tokens,itl_s\n0,0.1,0.5,100,4,nan;inf;0.1\n")
    r = run_cli("validate", str(REPO / "calibration/h100/serving/scenario.yaml"), "--requests", str(csv))
    assert r.returncode == 2 and "itl_s must be finite gaps >= 0 seconds, got [nan, inf, 0.1]" in r.stderr
