"""Tests for fleetwise.workload: arrival processes, length distributions, trace readers and
workload construction."""

from __future__ import annotations

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
    load_length_file,
)
from fleetwise.workload.arrivals import poisson_arrivals
from fleetwise.workload.config import FileLengths, LognormalLengths, UniformLengths
from fleetwise.workload.lengths import sample_lengths

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRACES = REPO / "traces"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def shared_traces() -> Path:
    """The directory of real traces: $FLEETWISE_SHARED_TRACES, else ../shared/traces."""
    override = os.environ.get("FLEETWISE_SHARED_TRACES")
    return Path(override) if override else REPO.parent / "shared" / "traces"


def shared_trace(name: str) -> Path:
    """A real trace file, skipping the test when it is not available."""
    path = shared_traces() / name
    if not path.is_file():
        pytest.skip(f"real trace {path} not available (set FLEETWISE_SHARED_TRACES)")
    return path


def poisson_config(lengths: dict, requests: int = 1000, rate: float = 10.0) -> WorkloadConfig:
    """A Poisson workload config with the given length distribution."""
    return WorkloadConfig.model_validate(
        {"arrivals": {"kind": "poisson", "rate": rate}, "lengths": lengths, "requests": requests}
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- arrivals -------------------------------------------------------------------------------------


def test_poisson_mean_rate_within_3_percent():
    times = poisson_arrivals(200_000, 7.5, np.random.default_rng(0))
    assert times.dtype == np.int64
    assert times[0] > 0
    rate = len(times) / (times[-1] / 1e9)
    assert rate == pytest.approx(7.5, rel=0.03)


def test_poisson_arrivals_monotonic_and_exponential_gaps():
    times = poisson_arrivals(100_000, 2.0, np.random.default_rng(1))
    gaps = np.diff(np.concatenate([[0], times])) / 1e9
    assert np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(0.5, rel=0.02)
    # Exponential: coefficient of variation 1.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


def test_poisson_arrivals_zero_requests():
    assert len(poisson_arrivals(0, 1.0, np.random.default_rng(0))) == 0


# --- lengths --------------------------------------------------------------------------------------


def test_lognormal_median_within_3_percent():
    cfg = LognormalLengths(
        prompt_median=1020, prompt_sigma=0.8, output_median=129, output_sigma=1.0
    )
    prompt, output = sample_lengths(cfg, 200_000, np.random.default_rng(0))
    assert prompt.dtype == np.int64 and output.dtype == np.int64
    assert np.median(prompt) == pytest.approx(1020, rel=0.03)
    assert np.median(output) == pytest.approx(129, rel=0.03)
    # sigma of the log recovered too.
    assert np.log(prompt).std() == pytest.approx(0.8, rel=0.03)


def test_lognormal_clipped_to_one_and_max():
    cfg = LognormalLengths(
        prompt_median=5,
        prompt_sigma=3.0,
        output_median=5,
        output_sigma=3.0,
        prompt_max=50,
        output_max=20,
    )
    prompt, output = sample_lengths(cfg, 50_000, np.random.default_rng(3))
    assert prompt.min() == 1 and prompt.max() == 50
    assert output.min() == 1 and output.max() == 20


def test_uniform_bounds_inclusive():
    cfg = UniformLengths(prompt_min=10, prompt_max=13, output_min=1, output_max=2)
    prompt, output = sample_lengths(cfg, 10_000, np.random.default_rng(0))
    assert set(np.unique(prompt)) == {10, 11, 12, 13}
    assert set(np.unique(output)) == {1, 2}
    counts = np.bincount(prompt)[10:]
    assert np.all(np.abs(counts / 10_000 - 0.25) < 0.02)


def test_constant_lengths():
    workload = build_workload(
        poisson_config({"kind": "constant", "prompt": 512, "output": 64}, requests=10), 0, None
    )
    assert np.all(workload.prompt_tokens == 512) and np.all(workload.output_tokens == 64)


def test_file_sampling_yields_only_rows_of_the_file(tmp_path):
    pairs = [(100, 10), (200, 20), (300, 30), (5000, 4000), (7, 1)]
    text = "num_prefill_tokens,num_decode_tokens,num_total_tokens\n" + "".join(
        f"{p},{o},{p + o}\n" for p, o in pairs
    )
    path = write(tmp_path, "lengths.csv", text)
    cfg = FileLengths(path=str(path))
    prompt, output = sample_lengths(cfg, 20_000, np.random.default_rng(0))
    drawn = set(zip(prompt.tolist(), output.tolist()))
    assert drawn == set(pairs)
    # Uniform over rows.
    counts = np.unique(prompt, return_counts=True)[1]
    assert np.all(np.abs(counts / 20_000 - 0.2) < 0.02)


def test_file_sampling_respects_max_total_tokens(tmp_path):
    text = "num_prefill_tokens,num_decode_tokens\n100,10\n200,20\n5000,4000\n4000,96\n4000,97\n"
    path = write(tmp_path, "lengths.csv", text)
    cfg = FileLengths(path=str(path), max_total_tokens=4096)
    prompt, output = sample_lengths(cfg, 10_000, np.random.default_rng(0))
    assert np.all(prompt + output <= 4096)
    assert set(zip(prompt.tolist(), output.tolist())) == {(100, 10), (200, 20), (4000, 96)}


def test_file_sampling_on_sharegpt_lengths():
    path = shared_trace("sharegpt_8k_lengths_llama2tok.csv")
    frame = load_length_file(path)
    assert frame.height == 30_731
    assert frame["prompt_tokens"].mean() == pytest.approx(2340, abs=1)
    cfg = FileLengths(path=str(path), max_total_tokens=4096)
    prompt, output = sample_lengths(cfg, 50_000, np.random.default_rng(0))
    assert (prompt + output).max() <= 4096
    present = set(zip(frame["prompt_tokens"].to_list(), frame["output_tokens"].to_list()))
    assert set(zip(prompt.tolist(), output.tolist())) <= present


def test_length_file_with_other_column_names(tmp_path):
    path = write(tmp_path, "l.csv", "in,out\n5,6\n")
    frame = load_length_file(path, prompt_column="in", output_column="out")
    assert frame.to_dict(as_series=False) == {"prompt_tokens": [5], "output_tokens": [6]}


def test_length_file_missing_column_names_columns_present(tmp_path):
    path = write(tmp_path, "l.csv", "prefill,decode\n5,6\n")
    with pytest.raises(TraceError, match=r"num_prefill_tokens.*prefill, decode") as info:
        load_length_file(path)
    assert "l.csv" in str(info.value)


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        ("1,2\n3,x\n", 3, "num_decode_tokens"),
        ("1,2\n3,4\n0,4\n", 4, "num_prefill_tokens"),
        ("1.5,2\n", 2, "num_prefill_tokens"),
        ("1,-2\n", 2, "num_decode_tokens"),
    ],
)
def test_length_file_bad_value_names_line_and_column(tmp_path, body, line, column):
    path = write(tmp_path, "lens.csv", "num_prefill_tokens,num_decode_tokens\n" + body)
    with pytest.raises(TraceError) as info:
        load_length_file(path)
    message = str(info.value)
    assert "lens.csv" in message and f"line {line}" in message and column in message


def test_length_file_missing(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_length_file(tmp_path / "nope.csv")


# --- Azure trace ----------------------------------------------------------------------------------


def test_azure_conversation_trace():
    frame = load_azure_csv(shared_trace("azure_llm_2023_conv.csv"))
    assert frame.columns == ["arrival_ns", "prompt_tokens", "output_tokens"]
    assert all(dtype == pl.Int64 for dtype in frame.dtypes)
    assert frame.height == 19_366
    arrival = frame["arrival_ns"].to_numpy()
    assert arrival[0] == 0
    assert np.all(np.diff(arrival) >= 0)
    # 2023-11-16 18:15:46.6805900 -> 19:14:08.4025270, exact to the 100 ns tick.
    assert arrival[-1] == 3_501_721_937_000
    assert arrival[1] == 4_314_579_000  # 18:15:50.9951690
    assert (frame.height - 1) / (arrival[-1] / 1e9) == pytest.approx(5.53, abs=0.005)
    assert frame["prompt_tokens"].mean() == pytest.approx(1155, abs=1)
    assert frame["prompt_tokens"].min() == 2 and frame["prompt_tokens"].max() == 14_050
    assert frame["output_tokens"].max() == 1000


def test_azure_trace_loads_identically_twice():
    path = shared_trace("azure_llm_2023_conv.csv")
    a, b = load_azure_csv(path), load_azure_csv(path)
    assert a.height > 0 and a.equals(b)


def test_trace_workload_rate_scale_halves_arrivals():
    path = shared_trace("azure_llm_2023_conv.csv")
    base = {"arrivals": {"kind": "trace", "path": str(path)}}
    normal = build_workload(WorkloadConfig.model_validate(base), 0, None)
    fast = build_workload(
        WorkloadConfig.model_validate(
            {"arrivals": {"kind": "trace", "path": str(path), "rate_scale": 2.0}}
        ),
        0,
        None,
    )
    assert len(normal) == len(fast) == 19_366
    assert fast.arrival_ns[-1] == round(normal.arrival_ns[-1] / 2)
    assert np.all(np.abs(fast.arrival_ns - normal.arrival_ns / 2) <= 0.5)
    np.testing.assert_array_equal(fast.prompt_tokens, normal.prompt_tokens)


def test_trace_workload_first_n_requests():
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "trace", "path": "azure-sample.csv"}, "requests": 100}
    )
    workload = build_workload(cfg, 0, SAMPLE_TRACES)
    full = load_azure_csv(SAMPLE_TRACES / "azure-sample.csv")
    assert len(workload) == 100
    np.testing.assert_array_equal(workload.arrival_ns, full["arrival_ns"].to_numpy()[:100])


def test_trace_requests_beyond_trace_length():
    cfg = WorkloadConfig.model_validate(
        {"arrivals": {"kind": "trace", "path": "azure-sample.csv"}, "requests": 501}
    )
    with pytest.raises(ConfigError, match="only 500 rows"):
        build_workload(cfg, 0, SAMPLE_TRACES)


def test_azure_subsecond_parsing_exact(tmp_path):
    path = write(
        tmp_path,
        "t.csv",
        f"{AZURE_HEADER}\n"
        "2023-12-31 23:59:59.9999999,1,1\n"
        "2024-01-01 00:00:00.0000001,2,3\n"
        "2024-01-01 00:00:01,2,3\n"
        "2024-01-01 00:00:01.5,2,3\n",
    )
    frame = load_azure_csv(path)
    assert frame["arrival_ns"].to_list() == [0, 200, 1_000_000_100, 1_500_000_100]


@pytest.mark.parametrize(
    ("rows", "line", "fragment"),
    [
        # Bad timestamp on line 4.
        (["2023-11-16 18:17:03.9799600,1,1", "2023-11-16 18:17:04.0,1,1",
          "2023-11-16 25:17:04.0,1,1"], 4, "TIMESTAMP"),
        # Zero GeneratedTokens on line 3.
        (["2023-11-16 18:17:03.9799600,10,5", "2023-11-16 18:17:04.1,10,0"], 3, "GeneratedTokens"),
        # Non-integer ContextTokens on line 2.
        (["2023-11-16 18:17:03.9799600,12.5,5", "2023-11-16 18:17:04.1,10,1"], 2, "ContextTokens"),
        # Negative ContextTokens on line 3.
        (["2023-11-16 18:17:03.9799600,1,5", "2023-11-16 18:17:04.1,-4,1"], 3, "ContextTokens"),
        # Timestamp going backwards on line 4.
        (["2023-11-16 18:17:03.9799600,1,1", "2023-11-16 18:17:05,1,1",
          "2023-11-16 18:17:04.9999999,1,1"], 4, "earlier"),
        # Nonexistent date.
        (["2023-02-30 00:00:00.0,1,1"], 2, "TIMESTAMP"),
        # Missing field.
        (["2023-11-16 18:17:03.9799600,1,1", "2023-11-16 18:17:04.0,1"], 3, "fields"),
    ],
)
def test_azure_malformed_rows_name_file_and_line(tmp_path, rows, line, fragment):
    path = write(tmp_path, "broken-trace.csv", AZURE_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(TraceError) as info:
        load_azure_csv(path)
    message = str(info.value)
    assert "broken-trace.csv" in message
    assert f"line {line}:" in message
    assert fragment in message


def test_azure_reports_the_earliest_bad_row(tmp_path):
    rows = ["2023-11-16 18:00:00.0,1,1", "2023-11-16 18:00:01.0,5,0", "not a time,1,1"]
    path = write(tmp_path, "two-errors.csv", AZURE_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(TraceError, match=r"line 3: GeneratedTokens must be >= 1, got 0"):
        load_azure_csv(path)


def test_azure_line_numbers_count_blank_lines(tmp_path):
    text = f"{AZURE_HEADER}\n2023-11-16 18:00:00.0,1,1\n\n2023-11-16 18:00:01,0,1\n"
    path = write(tmp_path, "gaps.csv", text)
    with pytest.raises(TraceError, match="line 4"):
        load_azure_csv(path)


def test_azure_missing_column_says_which_are_expected(tmp_path):
    path = write(tmp_path, "cols.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:00:00.0,1\n")
    with pytest.raises(TraceError) as info:
        load_azure_csv(path)
    message = str(info.value)
    assert "cols.csv" in message and "line 1" in message
    assert "GeneratedTokens" in message and AZURE_HEADER.replace(",", ", ") in message


@pytest.mark.parametrize("text", ["", "\n\n", AZURE_HEADER + "\n"])
def test_azure_empty_file(tmp_path, text):
    path = write(tmp_path, "empty.csv", text)
    with pytest.raises(TraceError, match="empty.csv"):
        load_azure_csv(path)


def test_azure_sample_file_matches_generator_spec():
    frame = load_azure_csv(SAMPLE_TRACES / "azure-sample.csv")
    assert frame.height == 500
    lengths = load_length_file(SAMPLE_TRACES / "chat-lengths.csv")
    assert lengths.height == 2000
    for table in (frame, lengths):
        assert table["prompt_tokens"].min() >= 2 and table["prompt_tokens"].max() <= 8000
        assert table["output_tokens"].min() >= 1 and table["output_tokens"].max() <= 1000


# --- build_workload -------------------------------------------------------------------------------

LOGNORMAL = {
    "kind": "lognormal",
    "prompt_median": 1020,
    "prompt_sigma": 0.8,
    "output_median": 129,
    "output_sigma": 1.0,
    "prompt_max": 8000,
    "output_max": 1000,
}


def test_build_is_deterministic_per_seed():
    cfg = poisson_config(LOGNORMAL)
    a, b, c = (build_workload(cfg, seed, None) for seed in (7, 7, 8))
    for name in ("arrival_ns", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))


def test_changing_lengths_keeps_arrivals():
    a = build_workload(poisson_config(LOGNORMAL), 3, None)
    uniform = {"kind": "uniform", "prompt_min": 1, "prompt_max": 9}
    uniform |= {"output_min": 1, "output_max": 9}
    b = build_workload(poisson_config(uniform), 3, None)
    np.testing.assert_array_equal(a.arrival_ns, b.arrival_ns)
    assert not np.array_equal(a.prompt_tokens, b.prompt_tokens)


def test_changing_rate_keeps_lengths():
    a = build_workload(poisson_config(LOGNORMAL, rate=1.0), 3, None)
    b = build_workload(poisson_config(LOGNORMAL, rate=50.0), 3, None)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)


def test_relative_path_resolves_against_base_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = poisson_config({"kind": "file", "path": "chat-lengths.csv"}, requests=500)
    workload = build_workload(cfg, 0, SAMPLE_TRACES)
    assert len(workload) == 500
    # Falls back to the current directory when base_dir does not have the file.
    (tmp_path / "here.csv").write_text("num_prefill_tokens,num_decode_tokens\n3,4\n")
    cfg = poisson_config({"kind": "file", "path": "here.csv"}, requests=5)
    workload = build_workload(cfg, 0, SAMPLE_TRACES)
    assert workload.prompt_tokens.tolist() == [3] * 5


def test_missing_file_is_config_error_naming_path(tmp_path):
    cfg = WorkloadConfig.model_validate({"arrivals": {"kind": "trace", "path": "no-such.csv"}})
    with pytest.raises(ConfigError) as info:
        build_workload(cfg, 0, tmp_path)
    assert str(tmp_path / "no-such.csv") in str(info.value)


def test_workload_frame_and_invariants():
    workload = build_workload(poisson_config(LOGNORMAL, requests=50), 0, None)
    frame = workload.to_frame()
    assert frame.columns == ["request_id", "arrival_ns", "prompt_tokens", "output_tokens"]
    assert frame["request_id"].to_list() == list(range(50))
    assert len(workload) == 50
    with pytest.raises(ValueError):
        workload.arrival_ns[0] = 5
    with pytest.raises(ValueError, match="non-decreasing"):
        Workload(np.array([2, 1]), np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        Workload(np.array([1, 2]), np.array([1]), np.array([1, 1]))


# --- config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"arrivals": {"kind": "poisson", "rate": 1.0}, "requests": 10}, "lengths"),
        ({"arrivals": {"kind": "poisson", "rate": 1.0},
          "lengths": {"kind": "constant", "prompt": 1, "output": 1}}, "requests"),
        ({"arrivals": {"kind": "trace", "path": "t.csv"},
          "lengths": {"kind": "constant", "prompt": 1, "output": 1}},
         "lengths come from the trace"),
        ({"arrivals": {"kind": "poisson", "rate": 1.0}, "requests": 1,
          "lengths": {"kind": "uniform", "prompt_min": 5, "prompt_max": 4,
                      "output_min": 1, "output_max": 1}}, "prompt_min"),
        ({"arrivals": {"kind": "hawkes", "rate": 1.0}}, "hawkes"),
        ({"arrivals": {"kind": "poisson", "rate": 1.0, "burst": 2}, "requests": 1,
          "lengths": {"kind": "constant", "prompt": 1, "output": 1}}, "burst"),
        ({"arrivals": {"kind": "poisson", "rate": 0.0}, "requests": 1,
          "lengths": {"kind": "constant", "prompt": 1, "output": 1}}, "rate"),
        ({"arrivals": {"kind": "trace", "path": "t.csv", "rate_scale": -1}}, "rate_scale"),
        ({"arrivals": {"kind": "poisson", "rate": 1.0}, "requests": 1,
          "lengths": {"kind": "zipf"}}, "zipf"),
    ],
)
def test_config_validation_errors(data, fragment):
    with pytest.raises(ValidationError, match=fragment):
        WorkloadConfig.model_validate(data)


def test_config_is_frozen_and_documented():
    cfg = poisson_config(LOGNORMAL)
    with pytest.raises(ValidationError):
        cfg.requests = 5
    assert WorkloadConfig.model_fields["requests"].description
    assert LognormalLengths.model_fields["prompt_sigma"].description
