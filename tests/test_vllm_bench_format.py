"""Results in ``vllm bench serve``'s format: the keys and meanings vLLM writes, read back by the
request-log reader that reads real vLLM results."""

from __future__ import annotations

import json

import numpy as np
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
    assert b["duration"] == result.summary["duration_s"]
    assert b["total_output_tokens"] == int(q["output_tokens"].sum())
    assert b["request_throughput"] == pytest.approx(result.summary["throughput"]["requests_per_s"])
    assert b["median_ttft_ms"] == pytest.approx(np.median(q["ttft_s"].to_numpy()) * 1e3)
    assert b["p99.9_e2el_ms"] == pytest.approx(np.percentile(q["e2e_s"].to_numpy(), 99.9) * 1e3)
    assert b["p90_tpot_ms"] == pytest.approx(result.summary["tpot_s"]["p90"] * 1e3)
    assert b["mean_itl_ms"] == pytest.approx(result.summary["itl_s"]["mean"] * 1e3) and b["std_itl_ms"] is None
    # vLLM's goodput: SLO-meeting completed requests per second at this load.
    ok = (q["ttft_s"] <= 0.1) & (q["tpot_s"].fill_null(0.0) <= 0.03)
    assert b["request_goodput"] == pytest.approx(int(ok.sum()) / b["duration"])
    assert result.summary["slo"]["request_goodput"] == pytest.approx(b["request_goodput"])
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
        assert vllm_bench_result(r._requests, r.summary)["request_goodput"] == pytest.approx(good, rel=1e-12)
    # Outputs of one token leave no inter-token gap: vLLM writes 0 ms (np.mean(itls or 0)), not null.
    sc = small_scenario()
    wl = Workload(arrival_ns=np.array([0, 10_000_000]), prompt_tokens=np.array([500, 400]), output_tokens=np.array([1, 1]))
    r = fleetwise.simulate(sc, workload=wl)
    b = vllm_bench_result(r._requests, r.summary)
    assert (b["mean_itl_ms"], b["median_itl_ms"], b["p99_itl_ms"]) == (0.0, 0.0, 0.0)
