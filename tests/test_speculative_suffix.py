"""Suffix decoding (vLLM's ``method: suffix`` on its Model Runner V2, docs/speculative-decoding.md):
drafts looked up in the sequence's own tokens and earlier responses on the GPUs, no model, always
k of them (up to 32). A step is the verify pass alone, to the nanosecond; the engine keeps its
asynchronous scheduling (unlike a CPU n-gram lookup); long drafts pay at low load and make the
verify pass compute-bound at high load, where adaptive verification trims them; bad settings are
errors naming the file and field (exit 2)."""

from __future__ import annotations

import json

import pytest

import fleetwise
from conftest import run_cli
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError
from test_speculative import _scenario, _tpot

RATES = [0.7] + [0.9] * 7
"""A repetitive (agentic) workload: a first slot matched 70% of the time, a match running on."""
SUFFIX = {"method": "suffix", "num_speculative_tokens": 8, "acceptance_rate": RATES}


def test_a_suffix_step_is_the_verify_pass_alone_and_the_engine_stays_asynchronous():
    # Every slot accepted, one request of 500 + 19 tokens: after the prefill's token, two steps of
    # 8 drafts + 1 (17 left but one: 8 granted, then 8 of 9 left).
    spec = {**SUFFIX, "acceptance_rate": 1.0}
    sc = _scenario(spec, 1, prompt=500, output=19)
    res = fleetwise.simulate(sc)
    s = res.summary["speculative"]
    assert (s["num_drafts"], s["num_draft_tokens"], s["num_accepted_tokens"]) == (2, 16, 16)
    row = res.requests.row(0, named=True)
    pool = core_config(fleetwise.scenario_from_dict(sc))["pools"][0]
    plain = core_config(fleetwise.scenario_from_dict(_scenario(None, 1)))["pools"][0]
    # No CPU lookup to wait for: the engine's CPU step still overlaps the GPUs (an n-gram pool's does not).
    assert pool["calibration"] == plain["calibration"] and plain["calibration"]["cpu_overlap"] is not None
    cm = cost_model(pool["model"], pool["gpu"], calibration=pool["calibration"], tp=4)
    steps = [cm.speculative_step_ns(json.dumps(pool["speculative"]), speculating=[(cached, 8)]) for cached in (500, 509)]
    assert row["completion_ns"] - row["first_token_ns"] == sum(steps)
    # No model: no weights or KV beside the target's, no draft step.
    assert cm.speculative_memory(json.dumps(pool["speculative"])) == (0, 0)
    eagle = {**pool["speculative"], "method": "eagle"}
    assert cm.speculative_step_ns(json.dumps(eagle), speculating=[(500, 8)]) > steps[0]


def test_long_drafts_pay_at_low_load_and_adaptive_verification_trims_them_at_high_load():
    # One request: about five tokens a step (1 + 0.7 + 0.63 + ...: 4.99) for one verify pass.
    assert _tpot(None, 1) / _tpot(SUFFIX, 1) > 4.0
    # 256 at once: nine query tokens per sequence make the pass compute-bound (47.0 ms, plain
    # decoding 48.2); verifying the slots that pay there is 10% faster (42.2 ms).
    plain, fixed, adaptive = _tpot(None, 256), _tpot(SUFFIX, 256), _tpot({**SUFFIX, "enable_adaptive_verification": True}, 256)
    assert adaptive < 0.92 * fixed and fixed < plain, (plain, fixed, adaptive)
    s = fleetwise.simulate(_scenario({**SUFFIX, "enable_adaptive_verification": True}, 256)).summary["speculative"]
    assert s["num_draft_tokens"] < 4 * s["num_drafts"], s


def test_estimate_prices_a_suffix_step_without_a_proposer():
    def estimate(batch: int, extra: str = "") -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024",
                    "--speculative", "method=suffix,num_speculative_tokens=8,acceptance_rate=" + "/".join(map(str, RATES)) + extra, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    one = estimate(1)
    assert one["proposer_seconds"] == 0.0 and one["proposer_weight_bytes"] == 0 and one["tokens_per_step"] == pytest.approx(4.987, abs=1e-3)
    assert one["speedup"] > 4.5
    for batch in (64, 256):
        fixed, adaptive = estimate(batch), estimate(batch, ",enable_adaptive_verification=true")
        assert adaptive["k"] < 8 and adaptive["speedup"] > fixed["speedup"], (batch, adaptive, fixed)


@pytest.mark.parametrize("speculative, field, says", [
    ({**SUFFIX, "num_speculative_tokens": 33, "acceptance_rate": 0.5}, "speculative", "a chain of method suffix drafts 1 to 32 tokens, got 33"),
    ({**SUFFIX, "draft_model": "llama-3-8b"}, "speculative", "suffix runs no model"),
    ({**SUFFIX, "proposal_rate": 0.5}, "speculative", "proposal_rate applies to method ngram only"),
    ({**SUFFIX, "num_speculative_tokens": 2, "acceptance_rate": 0.5, "speculative_token_tree": [[0], [1]]}, "speculative", "not suffix"),
])
def test_bad_suffix_settings_name_the_file_and_field(write_yaml, speculative, field, says):
    path = write_yaml(_scenario(speculative))
    with pytest.raises(ConfigError, match=f"cluster.pools.0.{field}") as err:
        fleetwise.load_scenario(path)
    assert says in str(err.value) and str(path) in str(err.value)
    r = run_cli("run", str(path))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
