"""Tests for trace selection (time window, length filters, first N, rate scaling), the trace-replay
options of a workload config, and the configs shown in traces/README.md."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from trace_helpers import SAMPLE_TRACES, shared_trace, trace_config

from fleetwise.errors import ConfigError
from fleetwise.workload import WorkloadConfig, build_workload, load_azure_csv
from fleetwise.workload.traces import select_requests


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
