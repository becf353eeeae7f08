"""N-gram (prompt lookup) speculation (docs/speculative-decoding.md, "N-gram lookup"): a decode
drafts as often as its lookup matches, the proposer holds no memory and runs no model, and the
engine's CPU lookup (vLLM's own, measured: ``cpu_step.ngram_lookup``) follows every step on an
engine without asynchronous scheduling, in runs and in ``fleetwise estimate``."""

from __future__ import annotations

import json

import pytest

import fleetwise
from conftest import run_cli
from fleetwise.catalog.engine import load_engine
from test_speculative import _scenario

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "acceptance_rate": [0.8, 0.6, 0.45]}


def test_an_ngram_lookup_drafts_as_often_as_it_matches_and_costs_no_gpu_time():
    # Never matching: plain decoding on a synchronous engine (vLLM turns asynchronous scheduling
    # off for a CPU n-gram proposer) plus the lookup's CPU time after each step: 4 decodes whose
    # contexts hold 4 x (500 + i) tokens at step i of 399.
    never = fleetwise.simulate(_scenario({**NGRAM, "proposal_rate": 0.0}, requests=4))
    sync = _scenario(None, requests=4)
    sync["cluster"]["pools"][0]["calibration"] = {"cpu_overlap": False}
    lookup = load_engine("vllm").cpu_step.ngram_lookup
    per_step = [lookup.base + 4 * lookup.per_seq + 16 * lookup.per_seq_squared + 4 * (500 + i) * lookup.per_context_token for i in range(1, 400)]
    extra = never.summary["tpot_s"]["mean"] - fleetwise.simulate(sync).summary["tpot_s"]["mean"]
    assert extra == pytest.approx(sum(per_step) / len(per_step), abs=1e-9)
    assert never.summary["speculative"]["num_drafts"] == 0
    # Always matching at EAGLE's rates: the same verify passes without the head's steps, and no
    # proposer memory.
    always, eagle = fleetwise.simulate(_scenario(NGRAM)), fleetwise.simulate(_scenario({**NGRAM, "method": "eagle"}))
    assert always.summary["tpot_s"]["mean"] < eagle.summary["tpot_s"]["mean"]
    plain = fleetwise.simulate(_scenario(None)).instances
    assert (always.instances["kv_bytes"][0], always.instances["kv_bytes_per_token"][0]) == (plain["kv_bytes"][0], plain["kv_bytes_per_token"][0])
    # Half the steps match: half the decode steps draft (output 1500: ~1500 / 1.75 steps).
    half = fleetwise.simulate(_scenario({**NGRAM, "proposal_rate": 0.5}, output=1500)).summary["speculative"]
    steps = 1499 - half["num_accepted_tokens"]
    assert half["num_drafts"] / steps == pytest.approx(0.5, abs=0.04)
    assert half["mean_acceptance_length"] == pytest.approx(1 + 0.8 + 0.48 + 0.216, rel=0.05)


def test_estimate_prices_an_ngram_lookup_by_its_proposal_rate():
    def run(spec: str) -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "1024", "--speculative", spec, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    full = run("method=ngram,num_speculative_tokens=3,acceptance_rate=0.7")
    half = run("method=ngram,num_speculative_tokens=3,acceptance_rate=0.7,proposal_rate=0.5")
    # The proposer is the CPU lookup over one context of 1025 tokens; no weights.
    lookup = load_engine("vllm").cpu_step.ngram_lookup
    assert full["proposer_seconds"] == pytest.approx(lookup.base + lookup.per_seq + lookup.per_seq_squared + 1025 * lookup.per_context_token, rel=1e-9)
    assert full["proposer_weight_bytes"] == 0
    e = 1 + 0.7 + 0.49 + 0.343
    assert full["tokens_per_step"] == pytest.approx(e) and half["tokens_per_step"] == pytest.approx(0.5 * e + 0.5)
    # A step without a match: the plain decode on the synchronous engine, after the same lookup
    # (the CPU step no longer hides under the GPU's: slower than the asynchronous plain decode).
    unmatched = 2 * half["step_seconds"] - full["step_seconds"]
    cpu = load_engine("vllm").cpu_step
    assert unmatched - full["proposer_seconds"] - full["plain_seconds_per_token"] == pytest.approx(cpu.base + cpu.per_seq + cpu.per_token, abs=1e-9)
    assert 1.0 < half["speedup"] < full["speedup"]
