"""Tests for the workload generators: gamma, on-off, diurnal and ramp arrivals, fitted length
distributions, shared-prefix groups, multi-turn sessions, and the optional ``Workload`` columns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from fleetwise.workload import Workload, WorkloadConfig, build_workload, fit_lognormal
from fleetwise.workload.arrivals import (
    diurnal_arrivals,
    diurnal_rate,
    gamma_arrivals,
    onoff_arrivals,
    ramp_arrivals,
)
from fleetwise.workload.config import DiurnalArrivals, FitLengths, RampArrivals
from fleetwise.workload.hash_lists import _lists_by_group, lists_from_offsets, offsets_and_values
from fleetwise.workload.lengths import fit_file_lengths, sample_lengths
from fleetwise.workload.sessions import session_turns

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRACES = REPO / "traces"
UNIFORM = {"kind": "uniform", "prompt_min": 20, "prompt_max": 200, "output_min": 5, "output_max": 60}


def rng(seed: int = 0) -> np.random.Generator:
    """A seeded generator."""
    return np.random.default_rng(seed)


def config(arrivals: dict, requests: int = 1000, lengths: dict = UNIFORM, **extra) -> WorkloadConfig:
    """A generated-workload config."""
    data = {"arrivals": arrivals, "lengths": lengths, "requests": requests, **extra}
    return WorkloadConfig.model_validate(data)


# --- arrival processes ----------------------------------------------------------------------------


def test_gamma_mean_and_cv():
    times = gamma_arrivals(100_001, 4.0, 3.0, rng())
    assert times.dtype == np.int64 and np.all(np.diff(times) >= 0)
    gaps = np.diff(times) / 1e9
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.05)


def test_gamma_cv_one_is_poisson_and_cv_below_one_is_regular():
    gaps = np.diff(gamma_arrivals(50_001, 2.0, 1.0, rng(1))) / 1e9
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)
    gaps = np.diff(gamma_arrivals(50_001, 2.0, 0.2, rng(1))) / 1e9
    assert gaps.std() / gaps.mean() == pytest.approx(0.2, rel=0.03)


def test_onoff_silent_in_off_windows_and_rate_during_on():
    on_s, off_s, rate = 2.0, 3.0, 10.0
    times = onoff_arrivals(100_000, rate, on_s, off_s, rng())
    cycle_ns = round((on_s + off_s) * 1e9)
    phase = times % cycle_ns
    # Arrivals only in [k * 5 s, k * 5 s + 2 s] (the end point only through rounding).
    assert phase.max() <= 2e9
    on_time = (times[-1] // cycle_ns) * on_s + min(phase[-1] / 1e9, on_s)
    assert len(times) / on_time == pytest.approx(rate, rel=0.02)
    # Long-run mean is rate * on / (on + off) = 4 req/s.
    assert len(times) / (times[-1] / 1e9) == pytest.approx(4.0, rel=0.02)


def test_onoff_without_off_is_poisson():
    times = onoff_arrivals(50_000, 3.0, 1.0, 0.0, rng(2))
    gaps = np.diff(times) / 1e9
    assert gaps.mean() == pytest.approx(1 / 3, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("amplitude", [0.5, 0.8])
def test_diurnal_peak_to_trough_ratio(amplitude):
    cfg = DiurnalArrivals(mean_rate=40.0, amplitude=amplitude, period_s=100.0)
    times = diurnal_arrivals(200_000, cfg, rng()) / 1e9
    assert np.all(np.diff(times) >= 0)
    phase = times % 100.0
    # Bins 5 s wide centred on the peak (t = 25 s) and the trough (t = 75 s) of each period.
    peak = np.count_nonzero(np.abs(phase - 25) < 2.5)
    trough = np.count_nonzero(np.abs(phase - 75) < 2.5)
    assert peak / trough == pytest.approx((1 + amplitude) / (1 - amplitude), rel=0.10)
    assert len(times) / times[-1] == pytest.approx(40.0, rel=0.02)


def test_diurnal_counts_follow_the_rate_function_and_phase():
    cfg = DiurnalArrivals(mean_rate=30.0, amplitude=0.7, period_s=60.0, phase_s=15.0)
    times = diurnal_arrivals(120_000, cfg, rng(3)) / 1e9
    periods = math.floor(times[-1] / 60.0)
    phase = times[times < periods * 60.0] % 60.0
    counts, edges = np.histogram(phase, bins=12, range=(0, 60))
    grid = np.linspace(0, 60, 12 * 100, endpoint=False) + 60 / 2400
    expected = diurnal_rate(grid, cfg).reshape(12, 100).mean(axis=1) * 5.0 * periods
    np.testing.assert_allclose(counts, expected, rtol=0.06)
    # phase_s = period / 4 starts at the peak: the busiest bin is the first or the last.
    assert np.argmax(counts) in (0, 11)


def test_diurnal_zero_amplitude_and_full_amplitude():
    flat = DiurnalArrivals(mean_rate=5.0, amplitude=0.0, period_s=10.0)
    gaps = np.diff(diurnal_arrivals(20_000, flat, rng())) / 1e9
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    full = DiurnalArrivals(mean_rate=20.0, amplitude=1.0, period_s=40.0)
    phase = (diurnal_arrivals(50_000, full, rng()) / 1e9) % 40.0
    # Rate is 0 at t = 30 s of each period: almost nothing arrives right around it.
    assert np.count_nonzero(np.abs(phase - 30) < 0.5) < 0.001 * len(phase)


def test_ramp_rate_in_first_and_last_tenth():
    cfg = RampArrivals(start_rate=10.0, end_rate=100.0, duration_s=1000.0)
    times = ramp_arrivals(150_000, cfg, rng()) / 1e9
    assert np.all(np.diff(times) >= 0)
    first = np.count_nonzero(times < 100) / 100
    last = np.count_nonzero((times >= 900) & (times < 1000)) / 100
    assert first == pytest.approx((10 + 19) / 2, rel=0.05)  # mean rate over [0, 100)
    assert last == pytest.approx((91 + 100) / 2, rel=0.05)
    after = np.count_nonzero((times >= 1000) & (times < 1400)) / 400
    assert after == pytest.approx(100, rel=0.05)


def test_ramp_down_and_from_zero():
    down = RampArrivals(start_rate=80.0, end_rate=8.0, duration_s=500.0)
    times = ramp_arrivals(50_000, down, rng()) / 1e9
    assert np.count_nonzero(times < 50) / 50 == pytest.approx((80 + 72.8) / 2, rel=0.05)
    assert np.count_nonzero((times >= 450) & (times < 500)) / 50 == pytest.approx(
        (15.2 + 8) / 2, rel=0.1
    )
    up = RampArrivals(start_rate=0.0, end_rate=50.0, duration_s=100.0)
    times = ramp_arrivals(10_000, up, rng()) / 1e9
    # Expected count before t is 0.25 t^2 on the ramp: 25 by t = 10 s, 625 by t = 50 s.
    assert np.count_nonzero(times < 50) == pytest.approx(625, rel=0.1)
    assert times[0] > 0


@pytest.mark.parametrize(
    "arrivals",
    [
        {"kind": "gamma", "rate": 5.0, "cv": 2.0},
        {"kind": "onoff", "rate": 5.0, "on_s": 1.0, "off_s": 1.0},
        {"kind": "diurnal", "mean_rate": 5.0, "amplitude": 0.5, "period_s": 60.0},
        {"kind": "ramp", "start_rate": 1.0, "end_rate": 5.0, "duration_s": 60.0},
    ],
)
def test_generated_workloads_are_deterministic_and_keep_lengths(arrivals):
    a = build_workload(config(arrivals, requests=500), 7)
    b = build_workload(config(arrivals, requests=500), 7)
    poisson = build_workload(config({"kind": "poisson", "rate": 5.0}, requests=500), 7)
    np.testing.assert_array_equal(a.arrival_ns, b.arrival_ns)
    assert len(a) == 500 and a.arrival_ns.dtype == np.int64 and np.all(np.diff(a.arrival_ns) >= 0)
    assert a.hash_ids is None and a.session_id is None
    # Lengths come from their own stream: the arrival process does not move them.
    np.testing.assert_array_equal(a.prompt_tokens, poisson.prompt_tokens)


@pytest.mark.parametrize(
    ("arrivals", "fragment"),
    [
        ({"kind": "gamma", "rate": 1.0, "cv": 0}, "cv"),
        ({"kind": "onoff", "rate": 1.0, "on_s": 0, "off_s": 1}, "on_s"),
        ({"kind": "diurnal", "mean_rate": 1.0, "amplitude": 1.5, "period_s": 10}, "amplitude"),
        ({"kind": "ramp", "start_rate": 1.0, "end_rate": 0, "duration_s": 10}, "end_rate"),
    ],
)
def test_generator_config_validation(arrivals, fragment):
    with pytest.raises(ValidationError, match=fragment):
        config(arrivals)


def test_generated_arrivals_need_lengths_and_requests():
    with pytest.raises(ValidationError, match="diurnal arrivals require a lengths"):
        WorkloadConfig.model_validate(
            {"arrivals": {"kind": "diurnal", "mean_rate": 1, "amplitude": 0.1, "period_s": 5}, "requests": 3}
        )


# --- fitted lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[True, 2], ["3", 4], np.array([True, False])])
def test_fit_lognormal_refuses_what_is_not_a_number(values):
    with pytest.raises(ValueError, match="fit_lognormal needs numbers"):
        fit_lognormal(values)


def test_fit_lognormal_recovers_parameters():
    values = rng(4).lognormal(mean=math.log(1500), sigma=0.9, size=200_000)
    median, sigma = fit_lognormal(values)
    assert median == pytest.approx(1500, rel=0.01)
    assert sigma == pytest.approx(0.9, rel=0.01)
    assert fit_lognormal([np.e, np.e**3]) == pytest.approx((np.e**2, 1.0))
    with pytest.raises(ValueError, match="positive"):
        fit_lognormal([1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        fit_lognormal([])


def test_fit_lengths_from_a_file(tmp_path):
    source = rng(5)
    prompt = np.rint(source.lognormal(math.log(800), 0.6, 20_000)).astype(int)
    output = np.rint(source.lognormal(math.log(120), 1.1, 20_000)).astype(int)
    path = tmp_path / "lens.csv"
    lines = ["num_prefill_tokens,num_decode_tokens"] + [f"{p},{o}" for p, o in zip(prompt, output)]
    path.write_text("\n".join(lines) + "\n")
    cfg = FitLengths(path=str(path), prompt_max=4000)
    fitted = fit_file_lengths(cfg)
    assert fitted.prompt_median == pytest.approx(800, rel=0.02)
    assert fitted.prompt_sigma == pytest.approx(0.6, rel=0.03)
    assert fitted.output_median == pytest.approx(120, rel=0.03)
    assert fitted.output_sigma == pytest.approx(1.1, rel=0.03)
    drawn_prompt, drawn_output = sample_lengths(cfg, 50_000, rng(6))
    assert drawn_prompt.max() <= 4000 and drawn_output.min() >= 1
    assert np.median(drawn_prompt) == pytest.approx(800, rel=0.03)


def test_fit_lengths_from_a_trace_format():
    cfg = WorkloadConfig.model_validate(
        {
            "arrivals": {"kind": "poisson", "rate": 2.0},
            "lengths": {"kind": "fit", "path": "sample-mooncake.jsonl", "format": "mooncake"},
            "requests": 20_000,
        }
    )
    workload = build_workload(cfg, 0, SAMPLE_TRACES)
    from fleetwise.workload import load_mooncake

    trace = load_mooncake(SAMPLE_TRACES / "sample-mooncake.jsonl")
    expected_median = math.exp(np.log(trace["prompt_tokens"].to_numpy()).mean())
    assert np.median(workload.prompt_tokens) == pytest.approx(expected_median, rel=0.03)


# --- Workload columns -----------------------------------------------------------------------------


def test_workload_optional_columns():
    plain = Workload(np.array([0, 1]), np.array([3, 4]), np.array([1, 1]))
    assert plain.hash_ids is None and plain.session_id is None
    assert plain.hash_offsets_and_values() is None
    assert plain.to_frame().columns == ["request_id", "arrival_ns", "prompt_tokens", "output_tokens"]
    full = Workload(
        arrival_ns=[0, 1],
        prompt_tokens=[3, 4],
        output_tokens=[1, 1],
        hash_ids=[np.array([5, 6]), []],
        session_id=[-1, 2],
    )
    frame = full.to_frame()
    assert frame.columns[-2:] == ["session_id", "hash_ids"]
    assert frame["hash_ids"].to_list() == [[5, 6], []]
    offsets, values = full.hash_offsets_and_values()
    assert offsets.tolist() == [0, 2, 2] and values.tolist() == [5, 6]
    with pytest.raises(ValueError):
        full.session_id[0] = 3
    with pytest.raises(ValueError, match="hash_ids has 1 entries for 2 requests"):
        Workload([0, 1], [1, 1], [1, 1], hash_ids=[[1]])
    with pytest.raises(ValueError, match="null"):
        Workload([0], [1], [1], hash_ids=[None])
    with pytest.raises(ValueError, match="session_id must be >= 0, or -1"):
        Workload([0], [1], [1], session_id=[-5])
    with pytest.raises(ValueError, match="int64"):
        Workload([0], [1], [1], hash_ids=[[1.5]])


def test_hash_list_conversions_with_and_without_pyarrow():
    offsets = np.array([0, 2, 2, 5, 6])
    values = np.array([9, 8, 7, 6, 5, 4])
    fast = lists_from_offsets(offsets, values)
    slow = _lists_by_group(np.diff(offsets), values, "hash_ids")
    assert fast.to_list() == slow.to_list() == [[9, 8], [], [7, 6, 5], [4]]
    assert slow.dtype == fast.dtype == pl.List(pl.Int64)
    back_offsets, back_values = offsets_and_values(fast)
    assert back_offsets.tolist() == offsets.tolist() and back_values.tolist() == values.tolist()


# --- shared prefixes ------------------------------------------------------------------------------


def hashes_of(workload: Workload) -> list[list[int]]:
    """The hash lists of a workload as Python lists."""
    return workload.hash_ids.to_list()


def test_prefix_groups_share_leading_blocks():
    prefixes = {"groups": 5, "prefix_tokens": 100, "fraction": 0.4}  # ceil(100/16) = 7 blocks
    cfg = config({"kind": "poisson", "rate": 10.0}, requests=5000, prefixes=prefixes)
    workload = build_workload(cfg, 1)
    base = build_workload(config({"kind": "poisson", "rate": 10.0}, requests=5000), 1)
    lists = hashes_of(workload)
    added = workload.prompt_tokens - base.prompt_tokens
    assert set(np.unique(added)) == {0, 100}
    members = added == 100
    assert members.mean() == pytest.approx(0.4, abs=0.02)
    np.testing.assert_array_equal(workload.arrival_ns, base.arrival_ns)
    np.testing.assert_array_equal(
        workload.hash_ids.list.len().to_numpy(), np.ceil(workload.prompt_tokens / 16)
    )
    heads = {}
    for lst, member in zip(lists, members):
        if member:
            heads.setdefault(tuple(lst[:7]), 0)
            heads[tuple(lst[:7])] += 1
    # Five distinct 7-block prefixes, used about equally, sharing no block with each other.
    assert len(heads) == 5
    assert all(abs(count / members.sum() - 0.2) < 0.03 for count in heads.values())
    prefix_blocks = [set(h) for h in heads]
    assert all(len(a & b) == 0 for i, a in enumerate(prefix_blocks) for b in prefix_blocks[i + 1 :])
    # Every block beyond the shared prefix, and every block of a non-member, is unique.
    rest = [h for lst, m in zip(lists, members) for h in (lst[7:] if m else lst)]
    assert len(rest) == len(set(rest))
    assert not set(rest) & set().union(*prefix_blocks)
    assert workload.session_id is None


def test_prefixes_on_a_trace_without_hashes():
    cfg = WorkloadConfig.model_validate(
        {
            "arrivals": {"kind": "trace", "path": "azure-sample.csv"},
            "prefixes": {"groups": 2, "prefix_tokens": 64, "fraction": 1.0, "block_tokens": 32},
        }
    )
    workload = build_workload(cfg, 0, SAMPLE_TRACES)
    plain = build_workload(
        WorkloadConfig.model_validate({"arrivals": {"kind": "trace", "path": "azure-sample.csv"}}),
        0,
        SAMPLE_TRACES,
    )
    np.testing.assert_array_equal(workload.prompt_tokens, plain.prompt_tokens + 64)
    assert {tuple(h[:2]) for h in hashes_of(workload)} == {(0, 1), (2, 3)}


def test_prefixes_rejected_on_a_trace_with_hashes():
    from fleetwise.errors import ConfigError

    cfg = WorkloadConfig.model_validate(
        {
            "arrivals": {"kind": "trace", "path": "sample-mooncake.jsonl", "format": "mooncake"},
            "prefixes": {"groups": 2, "prefix_tokens": 64, "fraction": 0.5},
        }
    )
    with pytest.raises(ConfigError, match="has its own hash_ids"):
        build_workload(cfg, 0, SAMPLE_TRACES)


# --- sessions -------------------------------------------------------------------------------------


def test_session_turns_geometric_and_exact_total():
    turns = session_turns(100_000, 4.0, rng())
    assert turns.sum() == 100_000 and turns.min() >= 1
    assert turns[:-1].mean() == pytest.approx(4.0, rel=0.03)
    assert np.all(session_turns(50, 1.0, rng()) == 1)


def test_sessions_grow_prompts_and_extend_hashes():
    sessions = {"turns_mean": 3.0, "think_time_s": 20.0}
    cfg = config({"kind": "poisson", "rate": 2.0}, requests=6000, sessions=sessions)
    workload = build_workload(cfg, 3)
    assert len(workload) == 6000
    assert np.all(np.diff(workload.arrival_ns) >= 0)
    session = workload.session_id
    count = len(np.unique(session))
    assert count == pytest.approx(6000 / 3.0, rel=0.05)
    assert session.min() == 0 and session.max() == count - 1
    frame = workload.to_frame().with_columns(turn=pl.int_range(pl.len()).over("session_id"))
    previous = frame.with_columns(
        pl.col("prompt_tokens", "output_tokens", "hash_ids", "arrival_ns")
        .shift(1)
        .over("session_id")
        .name.suffix("_prev")
    ).filter(pl.col("turn") > 0)
    assert previous.height == 6000 - count
    # Prompt = previous prompt + previous output + new tokens (20..200 from the lengths).
    new = previous["prompt_tokens"] - previous["prompt_tokens_prev"] - previous["output_tokens_prev"]
    assert new.min() >= 20 and new.max() <= 200
    # Hash lists extend the previous turn's.
    prev_len = previous["hash_ids_prev"].list.len()
    assert (previous["hash_ids"].list.len() >= prev_len).all()
    for now, before in zip(previous["hash_ids"].to_list()[:500], previous["hash_ids_prev"].to_list()[:500]):
        assert now[: len(before)] == before
    # Think times: exponential with mean 20 s between consecutive turns' arrivals.
    think = (previous["arrival_ns"] - previous["arrival_ns_prev"]).to_numpy() / 1e9
    assert think.mean() == pytest.approx(20.0, rel=0.06)
    # Different sessions share no block (no prefixes configured).
    firsts = frame.filter(pl.col("turn") == 0)["hash_ids"].list.first()
    assert firsts.n_unique() == count


def test_sessions_and_prefixes_together_and_determinism():
    extra = {
        "sessions": {"turns_mean": 2.0, "think_time_s": 5.0},
        "prefixes": {"groups": 3, "prefix_tokens": 48, "fraction": 0.5},
    }
    cfg = config({"kind": "gamma", "rate": 3.0, "cv": 2.0}, requests=3000, **extra)
    a, b = build_workload(cfg, 11), build_workload(cfg, 11)
    np.testing.assert_array_equal(a.arrival_ns, b.arrival_ns)
    assert a.hash_ids.equals(b.hash_ids)
    frame = a.to_frame().with_columns(turn=pl.int_range(pl.len()).over("session_id"))
    heads = frame.filter(pl.col("turn") == 0)
    later = frame.filter(pl.col("turn") > 0)
    # Group blocks are ids 0..8 (3 groups x 3 blocks); later turns inherit their session's.
    head_prefix = dict(zip(heads["session_id"].to_list(), heads["hash_ids"].list.first().to_list()))
    assert sum(v < 9 for v in head_prefix.values()) / len(head_prefix) == pytest.approx(0.5, abs=0.05)
    for sid, first in zip(later["session_id"].to_list(), later["hash_ids"].list.first().to_list()):
        assert first == head_prefix[sid]


def test_sessions_config_validation():
    with pytest.raises(ValidationError, match="turns_mean"):
        config({"kind": "poisson", "rate": 1.0}, sessions={"turns_mean": 0.5, "think_time_s": 1})
    with pytest.raises(ValidationError, match="cannot be used with a trace"):
        WorkloadConfig.model_validate(
            {
                "arrivals": {"kind": "trace", "path": "t.csv"},
                "sessions": {"turns_mean": 2, "think_time_s": 1},
            }
        )
    with pytest.raises(ValidationError, match="block_tokens .* must be equal"):
        config(
            {"kind": "poisson", "rate": 1.0},
            sessions={"turns_mean": 2, "think_time_s": 1, "block_tokens": 16},
            prefixes={"groups": 1, "prefix_tokens": 8, "fraction": 1, "block_tokens": 32},
        )


def test_every_config_field_is_documented():
    from fleetwise.workload import config as module

    models = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and obj.__module__ == module.__name__ and hasattr(obj, "model_fields")
    ]
    assert len(models) >= 14
    for model in models:
        assert model.__doc__, model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
