"""Trend tests of the seed systems on their scenarios (orderings and ratios, not exact numbers)."""

from __future__ import annotations

import json

import pytest

import fleetwise
from fleetwise.config.load import load_scenario

from conftest import REPO, SHARED_TRACES, run_cli

ARXIV = SHARED_TRACES / "arxiv_summarization_lengths_llama2tok.csv"


def _capacity(kind: str, rates: list[float], tbt_p99: float, ttft_p50: float) -> float:
    """Highest rate of ``rates`` whose P99 time between tokens and median TTFT meet the SLO."""
    best = 0.0
    for rate in rates:
        sched = "{kind: %s, max_num_seqs: 128}" % kind
        sc = load_scenario(REPO / "scenarios" / "sarathi-serve.yaml", [f"cluster.pools.0.scheduler={sched}", f"workload.arrivals.rate={rate}"])
        s = fleetwise.simulate(sc).summary
        if s["itl_s"]["p99"] <= tbt_p99 and s["ttft_s"]["p50"] <= ttft_p50:
            best = rate
    return best


@pytest.mark.skipif(not ARXIV.exists(), reason=f"needs the arXiv-summarization length file at {ARXIV}")
def test_sarathi_serve_capacity_beats_vllm_beats_orca_under_strict_tbt_slo():
    rates = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]
    caps = {k: _capacity(k, rates, tbt_p99=0.1, ttft_p50=2.0) for k in ("sarathi-serve", "vllm", "orca")}
    assert caps["sarathi-serve"] > caps["vllm"] > caps["orca"] > 0, caps
    assert caps["sarathi-serve"] >= 3 * caps["vllm"], caps


def test_decodes_piggybacked_on_a_prefill_chunk_cost_far_less_than_alone():
    def secs(*args):
        r = run_cli("estimate", "--model", "mistral-7b", "--gpu", "a100-80gb-sxm", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["seconds"]

    chunk = secs("--prefill", "512", "--prefill-context", "1024")
    decodes = secs("--decode-batch", "32", "--context", "2000")
    mixed = secs("--prefill", "512", "--prefill-context", "1024", "--decode-batch", "32", "--context", "2000")
    # The decodes' marginal cost in the mixed batch (their attention, a few more GEMM rows) is a
    # small fraction of a decode-only batch, which must stream all the weights itself.
    assert (mixed - chunk) < 0.5 * decodes


def test_compare_prints_policies_side_by_side(tmp_path, write_yaml):
    from conftest import small_scenario

    sc = small_scenario()
    sc["workload"]["requests"] = 200
    p = write_yaml(sc)
    r = run_cli(
        "compare", str(p), "--slo", "ttft_p90=1", "-o", str(tmp_path / "cmp"),
        "--variant", "vllm: cluster.pools.0.scheduler={kind: vllm, max_num_seqs: 64}",
        "--variant", "sarathi-serve: cluster.pools.0.scheduler={kind: sarathi-serve, token_budget: 256}",
    )
    assert r.returncode == 0, r.stderr
    assert "vllm" in r.stdout and "sarathi-serve" in r.stdout and "SLO attainment" in r.stdout
    assert (tmp_path / "cmp" / "vllm" / "requests.parquet").exists() and (tmp_path / "cmp" / "sarathi-serve" / "summary.json").exists()
    r = run_cli("compare", str(p), "--variant", "nonsense")
    assert r.returncode == 2 and "LABEL: PATH=VALUE" in r.stderr
