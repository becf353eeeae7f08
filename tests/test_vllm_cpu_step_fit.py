"""vLLM's measured CPU time per engine step (calibration/vllm-cpu/, tools/fidelity/measure_vllm_step.py)
and its fit (cpu_step.yaml, tools/fidelity/cpu_step_fit.py): the fit file is the fit of the saved
data, predicts every saved point within its stated residuals, and grows with the batch."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import polars as pl
import pytest
import yaml

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed; the CPU-step data describe the installed vLLM", allow_module_level=True)

from tools.fidelity.cpu_step_fit import DATA, DECODE_ONLY, build, coefficients, load_runner, load_steps, relative_errors

FIT = DATA / "cpu_step.yaml"


@pytest.fixture(scope="module")
def fit() -> dict:
    """The committed fit file."""
    assert FIT.exists(), f"{FIT} is missing; run python -m tools.fidelity.cpu_step_fit"
    return yaml.safe_load(FIT.read_text())


def test_fit_file_is_the_fit_of_the_saved_data(fit):
    assert fit == yaml.safe_load(yaml.safe_dump(build(DATA), sort_keys=False)), "cpu_step.yaml differs from a refit of the CSVs; rerun python -m tools.fidelity.cpu_step_fit"


def test_fit_predicts_every_point_within_its_stated_residuals(fit):
    steps = load_steps()
    runner = load_runner()
    assert steps.height >= 30 and runner.height >= 10
    for parts, df in ((fit["parts"], steps), (fit["runner_parts"], runner)):
        for name, part in parts.items():
            rows = steps.filter(pl.col("kind") == "decode") if name in DECODE_ONLY else df
            assert part["residuals"]["points"] == rows.height
            rel = np.abs(relative_errors(rows, coefficients(part), f"{name}_median_us"))
            assert rel.max() <= part["residuals"]["max_rel"] + 1e-4, name
            assert np.median(rel) <= part["residuals"]["median_rel"] + 1e-4, name
    assert fit["residuals"]["max_rel"] == max(fit["parts"]["engine_core"]["residuals"]["max_rel"], fit["runner_parts"]["host"]["residuals"]["max_rel"])


def test_cpu_step_is_the_scheduler_plus_the_runner_host_work(fit):
    core, host = coefficients(fit["parts"]["engine_core"]), coefficients(fit["runner_parts"]["host"])
    for term, value in fit["cpu_step"].items():
        assert value == pytest.approx(core.get(term, 0.0) + host.get(term, 0.0), rel=1e-3), term
    # a decode step of 64 sequences: the sum of both parts' measured medians, within the stated error
    steps, runner = load_steps(), load_runner()
    measured = steps.filter((pl.col("kind") == "decode") & (pl.col("num_seqs") == 64) & (pl.col("num_waiting") == 0))["engine_core_median_us"][0]
    measured += runner.filter((pl.col("num_seqs") == 64) & (pl.col("num_batched_tokens") == 64))["host_median_us"][0]
    predicted = (fit["cpu_step"]["base"] + 64 * fit["cpu_step"]["per_seq"] + 64 * fit["cpu_step"]["per_token"]) * 1e6
    assert abs(predicted - measured) / measured <= fit["residuals"]["max_rel"] + 1e-3


def test_cost_grows_with_the_batch(fit):
    step = fit["cpu_step"]
    assert step["per_seq"] > 0 and step["base"] > 0
    df = load_steps().filter((pl.col("kind") == "decode") & (pl.col("num_waiting") == 0))
    idle = df.filter(pl.col("num_seqs") == 1)["engine_core_median_us"][0]
    full = df.filter(pl.col("num_seqs") == 256)["engine_core_median_us"][0]
    assert full > 20 * idle  # 256 sequences cost far more than one


def test_device_record_names_the_machine_and_version():
    device = json.loads((DATA / "device.json").read_text())
    assert device["cpu_model"] and device["vllm_version"] and device["date_utc"]


def test_ngram_lookup_fit_predicts_every_point_and_the_vllm_profile_carries_it(fit):
    # vLLM's n-gram proposer on this host (ngram_lookup.csv, tools/fidelity/measure_vllm_ngram.py):
    # every point within the stated residuals; the lookup scans whole contexts (time grows with
    # them at a fixed batch) whether it matches or not (random and repeating contexts cost alike).
    from fleetwise.catalog.engine import load_engine
    from tools.fidelity.ngram_lookup_fit import TERMS, design

    lookup = fit["ngram_lookup"]
    df = pl.read_csv(DATA / "ngram_lookup.csv")
    assert df.height == lookup["residuals"]["points"] >= 40
    pred = design(df) @ np.array([lookup[t] for t in TERMS]) * 1e6
    rel = np.abs(pred / df["lookup_median_us"].to_numpy() - 1)
    assert rel.max() <= lookup["residuals"]["max_rel"] + 1e-4 and np.median(rel) <= lookup["residuals"]["median_rel"] + 1e-4
    at = lambda b, n, rep: df.filter((pl.col("num_seqs") == b) & (pl.col("context_tokens") == n) & (pl.col("repeating") == rep))  # noqa: E731
    assert at(256, 8192, 0)["lookup_median_us"][0] > 3 * at(256, 256, 0)["lookup_median_us"][0]
    assert at(256, 8192, 1)["matched"][0] == 256 and at(256, 8192, 0)["matched"][0] == 0
    assert at(256, 8192, 1)["lookup_median_us"][0] == pytest.approx(at(256, 8192, 0)["lookup_median_us"][0], rel=0.15)
    assert load_engine("vllm").cpu_step.ngram_lookup.model_dump() == {t: lookup[t] for t in TERMS}
