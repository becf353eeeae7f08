"""Results in ``vllm bench serve``'s format: the keys and meanings vLLM writes, read back by the
request-log reader that reads real vLLM results."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import fleetwise
from conftest import REPO, run_cli, small_scenario
from fleetwise.metrics.vllm_bench import vllm_bench_result
from fleetwise.requestlog.vllm_bench import read_vllm_bench_log


@pytest.fixture(scope="module")
def result():
    sc = small_scenario(seed=4)
    sc["workload"]["requests"] = 300
    sc["slo"] = {"ttft": 0.1, "tpot": 0.03}
    return fleetwise.simulate(sc)


def test_flat_keys_and_values_follow_vllm(result):
    b = vllm_bench_result(result.requests, result.summary, percentiles=(50, 90, 99.9))
    q = result.requests
    assert b["completed"] == result.summary["finished"] and b["failed"] == 0
    # vLLM's benchmark_duration: from the benchmark's start (time 0, before the first arrival's
    # gap) to the last return; the summary's duration_s starts at the first arrival.
    assert b["duration"] == q["completion_ns"].max() / 1e9
    assert b["duration"] == pytest.approx(result.summary["duration_s"] + q["arrival_ns"].min() / 1e9)
    assert b["total_output_tokens"] == int(q["output_tokens"].sum())
    assert b["request_throughput"] == pytest.approx(300 / b["duration"])
    assert b["median_ttft_ms"] == pytest.approx(np.median(q["ttft_s"].to_numpy()) * 1e3)
    assert b["p99.9_e2el_ms"] == pytest.approx(np.percentile(q["e2e_s"].to_numpy(), 99.9) * 1e3)
    assert b["p90_tpot_ms"] == pytest.approx(result.summary["tpot_s"]["p90"] * 1e3)
    assert b["mean_itl_ms"] == pytest.approx(result.summary["itl_s"]["mean"] * 1e3) and b["std_itl_ms"] is None
    # vLLM's goodput: SLO-meeting completed requests per second at this load.
    ok = (q["ttft_s"] <= 0.1) & (q["tpot_s"].fill_null(0.0) <= 0.03)
    assert b["request_goodput"] == pytest.approx(int(ok.sum()) / b["duration"])
    assert result.summary["slo"]["request_goodput"] * result.summary["duration_s"] == pytest.approx(b["request_goodput"] * b["duration"])
    assert 0 < b["request_goodput"] < b["request_throughput"], "a tight SLO: some requests miss it"
    assert vllm_bench_result(result.requests, result.summary, goodput_ms={"e2el": 1e9})["request_goodput"] == pytest.approx(b["request_throughput"])


def test_detailed_result_reads_back_as_a_vllm_request_log(result, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(vllm_bench_result(result.requests, result.summary, detailed=True)))
    log = read_vllm_bench_log(path)
    assert len(log) == result.summary["finished"]
    q = result.requests.sort("arrival_ns")
    f = log.frame
    np.testing.assert_allclose((f["first_token_s"] - f["arrival_s"]).to_numpy(), q["ttft_s"].to_numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose((f["last_token_s"] - f["arrival_s"]).to_numpy(), q["e2e_s"].to_numpy(), rtol=1e-9, atol=1e-9)
    assert (f["output_tokens"].to_numpy() == q["output_tokens"].to_numpy()).all()
    np.testing.assert_allclose(log.frame["arrival_s"].to_numpy(), ((q["arrival_ns"] - q["arrival_ns"].min()) * 1e-9).to_numpy(), atol=1e-9)


def test_run_writes_vllm_bench_json(tmp_path):
    r = run_cli("run", "scenarios/quickstart.yaml", "--set", "workload.requests=100", "-o", str(tmp_path / "out"), "--vllm-bench-detailed")
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "out" / "vllm-bench.json").read_text())
    assert b["completed"] == 100 and len(b["ttfts"]) == 100 and "p99_ttft_ms" in b


def test_goodput_counts_every_scenario_target_and_empty_itl_is_zero():
    from fleetwise.config.load import load_scenario
    from fleetwise.workload import Workload

    # A scheduling-delay target, which vLLM's --goodput cannot name, counted in the summary's
    # request_goodput but not in vllm-bench.json's (it read plain throughput, or null alone).
    for slo in ("slo={ttft: 0.5, tpot: 0.05, scheduling_delay: 0.01}", "slo={scheduling_delay: 0.01}"):
        r = fleetwise.simulate(load_scenario(REPO / "scenarios" / "quickstart.yaml", ["workload.requests=200", slo]))
        good = r.summary["slo"]["request_goodput"]
        assert good < r.summary["throughput"]["requests_per_s"]  # some requests miss the delay target
        b = vllm_bench_result(r._requests, r.summary)  # the same requests, over vLLM's duration
        assert b["request_goodput"] * b["duration"] == pytest.approx(good * r.summary["duration_s"], rel=1e-12)
    # Outputs of one token leave no inter-token gap: vLLM writes 0 ms (np.mean(itls or 0)), not null.
    sc = small_scenario()
    wl = Workload(arrival_ns=np.array([0, 10_000_000]), prompt_tokens=np.array([500, 400]), output_tokens=np.array([1, 1]))
    r = fleetwise.simulate(sc, workload=wl)
    b = vllm_bench_result(r._requests, r.summary)
    assert (b["mean_itl_ms"], b["median_itl_ms"], b["p99_itl_ms"]) == (0.0, 0.0, 0.0)


def _table(rows: list[tuple]) -> pl.DataFrame:
    """A request table of (arrival s, completion s or None, status, prompt, output, ttft s)."""
    arrival, done, status, prompt, output, ttft = (list(c) for c in zip(*rows))
    e2e = [None if d is None else d - a for a, d in zip(arrival, done)]
    return pl.DataFrame({
        "arrival_ns": [round(a * 1e9) for a in arrival], "completion_ns": [None if d is None else round(d * 1e9) for d in done],
        "status": status, "prompt_tokens": prompt, "output_tokens": output, "ttft_s": ttft, "e2e_s": e2e,
        "tpot_s": [None if e is None else (e - t) / (o - 1) for e, t, o in zip(e2e, ttft, output)],
    }, schema_overrides={"completion_ns": pl.Int64, "ttft_s": pl.Float64, "e2e_s": pl.Float64, "tpot_s": pl.Float64})


def test_duration_runs_from_the_start_to_the_last_return_failed_requests_included():
    # Two requests finish at 3 s and 6 s; one is rejected on arriving at 8 s, after both. vLLM's
    # benchmark_duration runs from the benchmark's start (0) to the last return, the rejected one's
    # 8 s: not 6 - 1 = 5 s (first arrival to last completion, the summary's duration_s).
    rows = [(1.0, 3.0, "finished", 100, 10, 0.5), (2.0, 6.0, "finished", 200, 30, 1.0), (8.0, None, "rejected", 5000, 10, None)]
    summary = {"duration_s": 5.0, "itl_s": {"mean": 0.1, "p50": 0.1, "p99": 0.2}}
    b = vllm_bench_result(_table(rows), summary, goodput_ms={"ttft": 600})
    assert (b["duration"], b["completed"], b["failed"]) == (8.0, 2, 1)
    assert (b["total_input_tokens"], b["total_output_tokens"]) == (300, 40)
    assert b["request_throughput"] == 2 / 8 == 0.25
    assert b["output_throughput"] == 40 / 8 == 5.0
    assert b["total_token_throughput"] == 340 / 8 == 42.5
    assert b["request_goodput"] == 1 / 8  # only the first meets TTFT <= 600 ms
    # Without the late rejection the last return is the 6 s completion, still counted from 0.
    b = vllm_bench_result(_table(rows[:2]), summary)
    assert (b["duration"], b["request_throughput"], b["output_throughput"]) == (6.0, 2 / 6, 40 / 6)
    # A rejection before the last completion does not move the end.
    b = vllm_bench_result(_table([*rows[:2], (4.0, None, "rejected", 5000, 10, None)]), summary)
    assert (b["duration"], b["failed"]) == (6.0, 1)


def test_a_simulated_late_rejection_ends_the_written_benchmark(tmp_path):
    from fleetwise.workload import Workload

    # Two short requests finish within 0.3 s; a prompt longer than Llama-3-8B's 8192-token context
    # arrives at 30 s and is refused on arrival: vllm-bench.json's duration is 30 s.
    wl = Workload(arrival_ns=np.array([100_000_000, 200_000_000, 30_000_000_000]),
                  prompt_tokens=np.array([500, 400, 9000]), output_tokens=np.array([20, 10, 10]))
    r = fleetwise.simulate(small_scenario(), workload=wl)
    assert r.requests["status"].to_list() == ["finished", "finished", "rejected"]
    assert r.summary["duration_s"] < 0.3
    b = json.loads((r.write(tmp_path / "out") / "vllm-bench.json").read_text())
    assert (b["duration"], b["completed"], b["failed"]) == (30.0, 2, 1)
    assert b["request_throughput"] == pytest.approx(2 / 30)
    assert b["output_throughput"] == pytest.approx(30 / 30)
    assert b["total_token_throughput"] == pytest.approx((900 + 30) / 30)
