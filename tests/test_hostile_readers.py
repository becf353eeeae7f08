"""Hostile inputs to the file readers: each is refused with a TraceError/ConfigError (or, for the
report, a ValueError) naming the file and the entry, never a Python traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import REPO, run_cli
from fleetwise.errors import TraceError

VLLM_LOG = REPO / "tests" / "data" / "vllm_bench_cpu_tiny.json"
VLLM_SCENARIO = REPO / "tests" / "data" / "vllm_cpu_tiny.yaml"
DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested far deeper than Python's recursion limit."""


def _vllm_log(tmp_path: Path, edit) -> Path:
    data = copy.deepcopy(json.loads(VLLM_LOG.read_text()))
    edit(data)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def _assert_exit_2(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- 1. vllm bench serve result read as a request log ---------------------------------------------


@pytest.mark.parametrize("key", ["ttfts", "latencies", "start_times"])
def test_vllm_log_huge_integer_is_refused(tmp_path, key):
    from fleetwise.requestlog.vllm_bench import read_vllm_bench_log

    path = _vllm_log(tmp_path, lambda d: d[key].__setitem__(3, 10**400))
    with pytest.raises(TraceError, match=rf"bench.json: request 3: {key}\[3\] must be a finite number, got 1000+\.\.\.") as info:
        read_vllm_bench_log(path)
    assert len(str(info.value)) < 300  # the 401-digit value is shortened


def test_vllm_log_huge_integer_in_itls_is_refused(tmp_path):
    from fleetwise.requestlog.vllm_bench import read_vllm_bench_log

    path = _vllm_log(tmp_path, lambda d: d["itls"][3].__setitem__(0, 10**400))
    with pytest.raises(TraceError, match=r"bench.json: request 3: itls\[3\]\[0\] must be a finite number \(seconds\), got 1000+\.\.\."):
        read_vllm_bench_log(path)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")])
def test_vllm_log_non_finite_start_names_its_request(tmp_path, bad):
    from fleetwise.requestlog.vllm_bench import read_vllm_bench_log

    path = _vllm_log(tmp_path, lambda d: d["start_times"].__setitem__(7, bad))
    with pytest.raises(TraceError, match=rf"bench.json: request 7: start_times\[7\] must be a finite number, got {bad}"):
        read_vllm_bench_log(path)


def test_vllm_log_huge_integer_cli_exit_2(tmp_path):
    path = _vllm_log(tmp_path, lambda d: d["ttfts"].__setitem__(3, 10**400))
    result = run_cli("validate", str(VLLM_SCENARIO), "--requests", str(path))
    _assert_exit_2(result, "request 3: ttfts[3] must be a finite number, got 1000")


# --- 2. vllm bench serve result read as a length file ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"input_lens": [True, 100, 50], "output_lens": [10, 20, 30]}, "input_lens[0] must be an integer, got True"),
        ({"input_lens": [10, 100, 50], "output_lens": [10, False, 30]}, "output_lens[1] must be an integer, got False"),
        ({"input_lens": [True], "output_lens": [True]}, "input_lens[0] must be an integer, got True"),
    ],
)
def test_vllm_lengths_refuse_booleans(tmp_path, data, fragment):
    from fleetwise.workload.vllm_bench import read_vllm_bench

    path = tmp_path / "lens.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TraceError) as info:
        read_vllm_bench(path)
    assert str(info.value) == f"{path}: {fragment}"


def test_vllm_lengths_still_read_integers(tmp_path):
    from fleetwise.workload.vllm_bench import read_vllm_bench

    path = tmp_path / "lens.json"
    path.write_text(json.dumps({"input_lens": [1, 100, 50], "output_lens": [10, 0, 20]}))
    loaded = read_vllm_bench(path)
    assert loaded.frame.rows() == [(1, 10), (50, 20)] and loaded.dropped == {"failed": 1}


# --- 3. deeply nested JSON, non-UTF-8 bytes and huge dimensions -----------------------------------


def test_hf_config_deep_nesting(tmp_path):
    from fleetwise.catalog.hf_config import hf_model_fields

    path = tmp_path / "config.json"
    path.write_text('{"a":' + DEEP + "}")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON: nested too deeply"):
        hf_model_fields(str(path))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"models:\n  m: {{hf_config: {path}}}\n")
    result = run_cli("estimate", "--specs", str(spec), "--model", "m", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "10")
    _assert_exit_2(result, "config.json: not valid JSON: nested too deeply")


def test_hf_config_symlink_loop(tmp_path):
    # Path.resolve() raised RuntimeError("Symlink loop"): a traceback, exit 1.
    (tmp_path / "loopa").symlink_to(tmp_path / "loopb")
    (tmp_path / "loopb").symlink_to(tmp_path / "loopa")
    spec = tmp_path / "spec.yaml"
    spec.write_text("models:\n  m: {hf_config: loopa}\n")
    result = run_cli("estimate", "--specs", str(spec), "--model", "m", "--gpu", "h100-sxm", "--decode-batch", "1", "--context", "10")
    _assert_exit_2(result, "cannot resolve the hf_config path")


def test_request_table_jsonl_deep_nesting(tmp_path):
    from fleetwise.requestlog.table import read_table_log

    path = tmp_path / "log.jsonl"
    row = '{"arrival_s": 0, "ttft_s": 0.1, "e2e_s": 1, "prompt_tokens": 10, "output_tokens": 5'
    path.write_text(row + "}\n\n" + row + ', "x": ' + DEEP + "}\n")
    with pytest.raises(TraceError, match=r"log.jsonl: line 3: invalid JSON: nested too deeply"):
        read_table_log(path)
    path.write_text(row + "}\n" + row + ', "x": ' + "1" * 5000 + "}\n")  # more digits than Python converts
    with pytest.raises(TraceError, match=r"log.jsonl: line 2: invalid JSON"):
        read_table_log(path)


HEADER = {"fleetwise_routing": 1, "num_layers": 4, "top_k": 2, "num_experts": 8}


def _routing_lines(tokens: int = 3) -> list[str]:
    return [json.dumps(HEADER)] + [json.dumps({"request": 0, "token": t, "experts": [[0, 1]] * 4}) for t in range(tokens)]


def test_routing_trace_deep_nesting(tmp_path):
    from fleetwise.moe import load_routing_trace

    path = tmp_path / "routing.jsonl"
    path.write_text("\n".join(_routing_lines()) + "\n" + DEEP + "\n")
    with pytest.raises(TraceError, match=r"routing.jsonl:5: the line is not valid JSON: nested too deeply"):
        load_routing_trace(path)
    path.write_text(DEEP + "\n")
    with pytest.raises(TraceError, match=r"routing.jsonl:1: the header is not valid JSON: nested too deeply"):
        load_routing_trace(path)


def test_routing_trace_not_utf8_or_binary(tmp_path):
    from fleetwise.moe import load_routing_trace

    path = tmp_path / "routing.jsonl"
    path.write_bytes(("\n".join(_routing_lines()) + "\n").encode() + b'{"x": "\xe9"}\n')
    with pytest.raises(TraceError, match=r"routing.jsonl: line 5: not UTF-8 text \(invalid byte 0xe9"):
        load_routing_trace(path)
    path.write_bytes(b"\0\1\2")
    with pytest.raises(TraceError, match=r"routing.jsonl: line 1: binary data"):
        load_routing_trace(path)
    with pytest.raises(TraceError, match=r"nope.jsonl: file not found"):
        load_routing_trace(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ({"num_layers": 1_000_000_000, "top_k": 60_000, "num_experts": 65_535}, "header field num_layers must be at most 10,000, got 1000000000"),
        ({"num_layers": 32, "top_k": 2, "num_experts": 65_536}, "header field num_experts must be at most 65,535, got 65536"),
        ({"num_layers": 32, "top_k": 70_000, "num_experts": 65_535}, "header field top_k must be at most 65,535, got 70000"),
        ({"num_layers": 32, "top_k": 9, "num_experts": 8}, "top_k 9 exceeds num_experts 8"),
        ({"num_layers": 10**400, "top_k": 2, "num_experts": 8}, "header field num_layers must be at most 10,000, got 1000"),
        ({"num_layers": True, "top_k": 2, "num_experts": 8}, "header field num_layers must be a positive integer, got True"),
    ],
)
def test_routing_trace_header_bounds(tmp_path, header, fragment):
    from fleetwise.moe import load_routing_trace

    path = tmp_path / "routing.jsonl"
    path.write_text(json.dumps({"fleetwise_routing": 1, **header}) + "\n" + json.dumps({"request": 0, "token": 0, "experts": [[1]]}) + "\n")
    with pytest.raises(TraceError, match=r"routing.jsonl:1: ") as info:
        load_routing_trace(path)
    assert fragment in str(info.value)


def test_routing_trace_large_header_is_not_allocated_up_front(tmp_path):
    # Within the bounds, but 10,000 x 60,000 ids per token: the short token line is refused
    # before anything of that size is allocated.
    from fleetwise.moe import load_routing_trace

    path = tmp_path / "routing.jsonl"
    header = {"fleetwise_routing": 1, "num_layers": 10_000, "top_k": 60_000, "num_experts": 65_535}
    token = json.dumps({"request": 0, "token": 0, "experts": [[1]]})
    path.write_text(json.dumps(header) + "\n" + "\n".join([token] * 1000) + "\n")
    with pytest.raises(TraceError, match=r"routing.jsonl:2: experts must hold one list per MoE layer \(10000\), got 1"):
        load_routing_trace(path)


def test_routing_trace_unhashable_ids_and_round_trip(tmp_path):
    from fleetwise.moe import RoutingTrace, load_routing_trace, write_routing_trace

    path = tmp_path / "routing.jsonl"
    lines = _routing_lines()
    lines[2] = json.dumps({"request": 0, "token": 1, "experts": [[[0], [1]]] * 4})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match=r"routing.jsonl:3: layer 0: expert id \[0\] is not in \[0, 8\)"):
        load_routing_trace(path)
    # The growing buffer keeps every token of a longer trace, in order.
    rng = np.random.default_rng(1)
    experts = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(4)]) for _ in range(37)]).astype(np.uint16)
    trace = RoutingTrace(4, 2, 8, np.array([0, 5, 20, 37]), experts, "m")
    write_routing_trace(path, trace)
    back = load_routing_trace(path)
    assert back.experts.shape == (37, 4, 2) and np.array_equal(back.experts, experts)
    assert back.offsets.tolist() == [0, 5, 20, 37]


def test_routing_trace_cli_exit_2(tmp_path):
    path = tmp_path / "routing.jsonl"
    path.write_text(json.dumps({"fleetwise_routing": 1, "num_layers": 10**9, "top_k": 60_000, "num_experts": 65_535}) + "\n"
                    + json.dumps({"request": 0, "token": 0, "experts": [[1]]}) + "\n")
    result = run_cli("run", str(REPO / "scenarios" / "moe-offload.yaml"), "--set", "workload.requests=20",
                     "--set", f"cluster.pools.0.experts.routing={{kind: trace, trace: {path}}}", "-o", str(tmp_path / "out"))
    _assert_exit_2(result, "routing.jsonl:1: header field num_layers must be at most 10,000")


# --- 4. report on a run directory with a foreign requests.parquet ---------------------------------


def test_report_refuses_foreign_requests_table(tmp_path):
    from fleetwise.report.load import load_inputs

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"scenario": "x", "requests": 2}))
    pl.DataFrame({"a": [1, 2]}).write_parquet(run / "requests.parquet")
    with pytest.raises(ValueError, match=r"requests.parquet: missing column\(s\) request_id, .*status; not a fleetwise requests table"):
        load_inputs([run])
    result = run_cli("report", str(run), "-o", str(tmp_path / "report.html"))
    _assert_exit_2(result, "requests.parquet: missing column(s)", "not a fleetwise requests table")
    pl.DataFrame({c: [1] for c in ("request_id", "instance", "arrival_ns", "first_token_ns", "completion_ns", "status")}).write_parquet(run / "requests.parquet")
    with pytest.raises(ValueError, match=r"requests.parquet: column\(s\) of the wrong type \(status is Int64, expected string\)"):
        load_inputs([run])


def test_a_json_integer_too_long_for_python_is_a_trace_error(tmp_path):
    from fleetwise.errors import TraceError
    from fleetwise.workload._files import parse_json

    with pytest.raises(TraceError, match="invalid JSON: Exceeds the limit"):
        parse_json(tmp_path / "x.json", '{"input_lens": [' + "9" * 5000 + "]}")
