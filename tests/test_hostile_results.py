"""No wrong number with exit 0: absurd hardware figures, calibration and power caps are refused with
the field named; a run where nothing finishes writes strict JSON (null, never NaN), says why and
exits 2; rejection reasons reach the summary and the request table."""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import REPO, run_cli, small_scenario, tiny_gpu

QUICKSTART = str(REPO / "scenarios" / "quickstart.yaml")


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("cluster.pools.0.calibration={iteration_overhead: 1e9}", "cluster.pools.0.calibration.iteration_overhead", "between 0 and 10 seconds"),
        ("cluster.pools.0.calibration={gemm_compute: 1e-300}", "cluster.pools.0.calibration.gemm_compute", "[0.01, 1]"),
        ("cluster.pools.0.power_cap_watts=1e-9", "cluster.pools.0.power_cap_watts", "idle power of 70 W"),
        # Above TDP a cap limits nothing, but place/designs charged its watts to the power budget.
        ("cluster.pools.0.power_cap_watts=5000", "cluster.pools.0.power_cap_watts", "at most h100-sxm's TDP of 700 W"),
    ],
)
def test_values_that_would_overflow_the_clock_are_refused(tmp_path, override, field, allowed):
    r = run_cli("run", QUICKSTART, "--set", "workload.requests=50", "--set", override, "-o", str(tmp_path / "o"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "quickstart.yaml" in r.stderr and field in r.stderr and allowed in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_a_user_gpu_with_an_absurd_peak_is_refused(tmp_path, write_yaml):
    gpus = tiny_gpu(80)
    gpus["tiny"]["peak_flops"] = 1e-300
    sc = small_scenario(gpus=gpus)
    sc["cluster"]["pools"][0]["gpu"] = "tiny"
    r = run_cli("run", str(write_yaml(sc)), "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "peak_flops" in r.stderr and "1e9" in r.stderr and "Traceback" not in r.stderr


def test_slow_but_legal_figures_give_ordered_times(tmp_path):
    # 9.9 s per iteration is legal: the run is slow in simulated time, never negative or wrapped.
    out = tmp_path / "slow"
    r = run_cli("run", str(REPO / "scenarios" / "splitwise.yaml"), "--set", "workload.requests=40", "--set", "cluster.pools.1.calibration={iteration_overhead: 9.9}", "-o", str(out))
    assert r.returncode == 0, r.stderr
    req = pl.read_parquet(out / "requests.parquet")
    assert req["status"].to_list() == ["finished"] * 40
    assert (req["first_token_ns"] >= req["arrival_ns"]).all() and (req["completion_ns"] >= req["first_token_ns"]).all()
    # Every decode iteration costs at least the 9.9 s overhead.
    assert req["tpot_s"].min() >= 9.9
    summary = _strict_json(out / "summary.json")
    assert summary["finished"] == 40 and summary["ttft_s"]["p50"] > 0


def test_nothing_finishes_strict_json_reasons_and_exit_2(tmp_path):
    out = tmp_path / "rej"
    r = run_cli("run", QUICKSTART, "--set", "workload.requests=60", "--set", "cluster.pools.0.scheduler.max_num_batched_tokens=16", "-o", str(out))
    assert r.returncode == 2
    assert "no request finished (60 of 60 rejected" in r.stderr and "exceeds max_num_batched_tokens=16" in r.stderr
    assert "rejected 60 request(s)" in r.stdout and "nan" not in r.stdout.lower()
    summary = _strict_json(out / "summary.json")
    assert summary["finished"] == 0 and summary["rejected"] == 60
    assert summary["ttft_s"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert summary["slo"]["attainment"] == 0.0
    assert summary["energy"]["joules_per_output_token"] is None
    assert summary["rejections"][0]["count"] == 60 and "max_num_batched_tokens=16" in summary["rejections"][0]["reason"]
    req = pl.read_parquet(out / "requests.parquet")
    assert req.height == 60 and req["reject_reason"].null_count() == 0


def test_some_rejected_are_counted_by_reason():
    import fleetwise

    sc = small_scenario()
    sc["workload"] = {"arrivals": {"kind": "poisson", "rate": 5.0}, "lengths": {"kind": "uniform", "prompt_min": 100, "prompt_max": 9000, "output_min": 10, "output_max": 20}, "requests": 200}
    res = fleetwise.simulate(sc)
    s = res.summary
    rejected = res.requests.filter(pl.col("status") == "rejected")
    assert s["rejected"] == rejected.height > 0 and s["finished"] == 200 - rejected.height
    # Over the model's 8,192-token context: one reason, the numbers differ per request.
    assert sum(x["count"] for x in s["rejections"]) == rejected.height
    assert "exceeds the model's 8192-token context" in s["rejections"][0]["reason"]
    assert res.requests.filter(pl.col("status") == "finished")["reject_reason"].null_count() == s["finished"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--decode-batch", "99999999999999999999", "--context", "10"), "--decode-batch"),
        (("--decode-batch", "4", "--context", "99999999999999999999"), "--context"),
        (("--prefill", "100000"), "100000 tokens, over llama-3-8b's 8192-token context"),
        (("--decode-batch", "4", "--context", "8192"), "over llama-3-8b's 8192-token context"),
        (("--prefill", "100", "--power-cap", "1e-9"), "--power-cap"),
        (("--prefill", "100", "--power-cap", "5000"), "TDP of 700 W"),
        # A cap just above idle clocked the prefill at ~0% (a 2000-token prefill took 9,464 s).
        (("--prefill", "100", "--power-cap", "70.001"), "the lowest cap this GPU's power model accepts is 120 W"),
        (("--prefill", "100", "--microbatches", "4"), "--microbatches 4: splits a batch over pipeline stages; give --pp 2 or more"),
    ],
)
def test_estimate_refuses_what_the_model_or_gpu_cannot_run(args, message):
    r = run_cli("estimate", "--model", "llama-3-8b", "--gpu", "h100-sxm", *args)
    assert r.returncode == 2, r.stdout
    assert message in r.stdout + r.stderr and "Traceback" not in r.stderr
