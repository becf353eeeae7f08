"""Idealized runtime (Narayanan et al. 2023): each request alone on a reference GPU and engine."""

from __future__ import annotations

import numpy as np
import pytest

import fleetwise
from conftest import small_scenario
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError
from fleetwise.estimate import estimate_request
from fleetwise.metrics.idealized import IdealizedRuntime
from fleetwise.workload import Workload


def test_runtime_is_one_prefill_then_one_decode_per_further_token():
    rt = IdealizedRuntime.build("llama-3-8b", "a100-80gb-sxm", "vllm", max_tokens=2000)
    cm = cost_model("llama-3-8b", "a100-80gb-sxm", engine="vllm")
    by_hand = cm.iteration_seconds([(700, 0, True)], []) + sum(cm.iteration_seconds([], [c]) for c in range(701, 700 + 40))
    got = rt.seconds(np.array([700, 700, 1]), np.array([40, 1, 1]))
    assert got[0] == pytest.approx(by_hand, rel=1e-12)
    assert got[1] == pytest.approx(cm.iteration_seconds([(700, 0, True)], []), rel=1e-12), "one output token: the prefill alone"
    assert rt.gpus == 1 and (rt.gpu_seconds(np.array([700]), np.array([40])) == got[0]).all()


def test_tables_tabulated_in_one_call_are_the_single_iterations_bit_for_bit():
    # The runtime's tables come from one core call each; every entry is the iteration alone.
    cm = cost_model("llama-3-8b", "a100-80gb-sxm", engine="vllm")
    decode = cm.solo_decode_seconds(300)
    assert len(decode) == 300 and decode == [cm.iteration_seconds([], [c]) for c in range(1, 301)]
    lengths = [1, 17, 700, 4096]
    assert cm.solo_prefill_seconds(lengths) == [cm.iteration_seconds([(p, 0, True)], []) for p in lengths]
    assert decode[99] < decode[299], "a longer context reads more KV"


def test_cost_aware_variant_counts_the_gpus_that_hold_the_model():
    # Llama-3-70B's 141 GB of weights need two 80 GB A100s (90% usable), so a request costs
    # twice its runtime in GPU-seconds; on H200s (141 GB) one GPU is not enough either.
    r = estimate_request("llama-3-70b", "a100-80gb-sxm", 1000, 200)
    assert r["gpus"] == 2 and r["idealized_gpu_seconds"] == pytest.approx(2 * r["idealized_runtime_s"])
    assert estimate_request("llama-3-8b", "a100-80gb-sxm", 1000, 200)["gpus"] == 1
    assert r["prefill_s"] < r["idealized_runtime_s"]
    with pytest.raises(ConfigError, match="context"):
        estimate_request("llama-3-8b", "a100-80gb-sxm", 8000, 500)


def test_independent_of_the_serving_cluster_and_load():
    base = small_scenario(seed=9)
    base["workload"]["requests"] = 200
    busy = small_scenario(seed=9)
    busy["workload"]["requests"] = 200
    busy["workload"]["arrivals"]["rate"] = 80.0
    busy["cluster"]["pools"][0].update(count=1, gpu="l40s")
    a, b = fleetwise.simulate(base), fleetwise.simulate(busy)
    assert (a.requests["prompt_tokens"] == b.requests["prompt_tokens"]).all()
    np.testing.assert_array_equal(a.requests["idealized_runtime_s"].to_numpy(), b.requests["idealized_runtime_s"].to_numpy())
    assert a.summary["idealized"]["gpus"] == {"llama-3-8b": 1} and a.summary["idealized"]["gpu"] == "a100-80gb-sxm"
    # On its own GPU and engine, a request served beside others is never faster than alone.
    own = small_scenario(seed=9)
    own["workload"]["requests"] = 200
    own["idealized"] = {"gpu": "h100-sxm"}
    r = fleetwise.simulate(own).requests
    assert (r["e2e_s"].to_numpy() >= r["idealized_runtime_s"].to_numpy() * (1 - 1e-9)).all()
    assert np.median(r["e2e_s"].to_numpy() / r["idealized_runtime_s"].to_numpy()) > 1.05


def test_bad_reference_gpu_is_a_clear_error():
    sc = small_scenario()
    sc["idealized"] = {"gpu": "no-such-gpu"}
    with pytest.raises(ConfigError, match="idealized"):
        fleetwise.simulate(sc)


def test_a_process_reuses_a_runtime_only_for_the_same_model_gpu_engine_length_and_specs():
    from fleetwise.catalog import lookup
    from fleetwise.metrics.idealized import idealized_runtime

    a = idealized_runtime("llama-3-8b", "a100-80gb-sxm", "vllm", 3000)
    assert idealized_runtime("llama-3-8b", "a100-80gb-sxm", "vllm", 3000) is a
    assert idealized_runtime("llama-3-8b", "a100-80gb-sxm", "vllm", 3001) is not a
    assert idealized_runtime("llama-3-8b", "h100-sxm", "vllm", 3000) is not a
    # A scenario's own spec under a catalogue name is part of the key: half the bandwidth, slower decodes.
    spec = lookup("gpu", "a100-80gb-sxm", {}, "gpu")
    slow = spec.model_copy(update={"memory_bandwidth": spec.memory_bandwidth / 2})
    b = idealized_runtime("llama-3-8b", "a100-80gb-sxm", "vllm", 3000, user_gpus={"a100-80gb-sxm": slow})
    assert b is not a
    prompt, output = np.array([700, 20, 700]), np.array([300, 5, 300])
    assert (b.seconds(prompt, output) > a.seconds(prompt, output)).all()
    # Memoised prefills give what a fresh table gives, the second time too.
    fresh = IdealizedRuntime.build("llama-3-8b", "a100-80gb-sxm", "vllm", 3000)
    for _ in range(2):
        np.testing.assert_array_equal(a.seconds(prompt, output), fresh.seconds(prompt, output))


def test_a_rejected_request_too_long_for_the_reference_leaves_the_run_intact():
    # One request longer than any reference could hold (it is rejected for the model's context):
    # the reference is sized for the others, and the rejected one has no idealized runtime.
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = 1
    wl = Workload(arrival_ns=np.array([0, 10**8, 2 * 10**8]), prompt_tokens=np.array([791, 30_000_000, 300]),
                            output_tokens=np.array([87, 10, 10]))
    res = fleetwise.simulate(sc, workload=wl)
    assert res.requests["status"].to_list() == ["finished", "rejected", "finished"]
    ideal = res.requests["idealized_runtime_s"].to_list()
    assert ideal[1] is None and ideal[0] > 0 and ideal[2] > 0
    assert res.summary["idealized"]["total_runtime_s"] == pytest.approx(ideal[0] + ideal[2])


def test_a_slice_of_the_idealized_column_computes_only_its_rows(monkeypatch):
    # The summaries read a long table a slice at a time; in the elementwise form each slice's
    # idealized runtimes are computed from its own rows (the gathers of the default form look up
    # the whole column per slice), equal to `seconds` and to the default form bit for bit, with a
    # row outside the tables given a meaningless value (masked by the caller) rather than failing.
    import polars as pl

    rt = IdealizedRuntime.build("llama-3-8b", "a100-80gb-sxm", "vllm", max_tokens=3000)
    rng = np.random.default_rng(5)
    prompt, output = rng.integers(1, 2000, 5000), rng.integers(1, 900, 5000)
    prompt[7], output[7] = 9000, 5  # past the tables: a meaningless, masked value, not an error
    lf = pl.LazyFrame({"prompt_tokens": prompt, "output_tokens": output})
    lengths = np.unique(prompt[prompt <= 3000])
    expr = rt.seconds_expr(lengths, pl.col("prompt_tokens"), pl.col("output_tokens"), elementwise=True)
    gathered = lf.select(rt.seconds_expr(lengths, pl.col("prompt_tokens"), pl.col("output_tokens"))).collect().to_series().to_numpy()
    rows_seen: list[int] = []
    gather = pl.Series.gather

    def counting_gather(self, indices):
        rows_seen.append(len(indices))
        return gather(self, indices)

    monkeypatch.setattr(pl.Series, "gather", counting_gather)
    table = lf.with_columns(expr.alias("s"))
    got = table.slice(1000, 300).select("s").collect().to_series().to_numpy()
    assert sum(rows_seen) == 3 * 300, rows_seen  # three lookups per batch: the slice's rows only
    assert (got == rt.seconds(prompt[1000:1300], output[1000:1300])).all()
    whole = table.select("s").collect().to_series().to_numpy()
    keep = np.arange(5000) != 7
    assert (whole[keep] == rt.seconds(prompt[keep], output[keep])).all() and np.isfinite(whole[7])
    assert (whole == gathered).all(), "the two forms of the expression give the same values, bit for bit"
