"""Draft lengths that vary step by step (``speculative.draft_lengths``, docs/speculative-decoding.md):
a model-free proposer (suffix decoding, n-gram lookup) proposes as many tokens as its match
continues, drawn each step; the verify pass checks that many; ``estimate`` takes the expectation
over the lengths; a model proposer, adaptive verification or bad probabilities are refused naming
the field (exit 2)."""

from __future__ import annotations

import pytest

import fleetwise
from conftest import run_cli
from test_speculative import _scenario

SUFFIX = {"method": "suffix", "num_speculative_tokens": 8, "acceptance_rate": 0.9}
"""Suffix decoding on Llama-3-70B (4 H100s) proposing up to 8 tokens, each accepted at 0.9."""
LENGTHS = [0.5, 0.25, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0]
"""Half the proposals hold 1 token, a quarter 2, an eighth 3 and 4: 1.875 on average."""


def _run(spec: dict | None, n: int, output: int = 400):
    """Mean TPOT and the speculative summary of ``n`` requests of 500 + ``output`` tokens at once."""
    res = fleetwise.simulate(_scenario(spec, requests=n, output=output))
    return res.summary["tpot_s"]["mean"], res.summary.get("speculative")


@pytest.mark.parametrize("n", [1, 16])
def test_proposals_hold_their_drawn_lengths_and_decode_as_short_drafts_do(n):
    _, s = _run({**SUFFIX, "draft_lengths": LENGTHS}, n, output=2000)
    assert s["num_draft_tokens"] / s["num_drafts"] == pytest.approx(1.875, abs=0.08), s
    # Position i is verified by the proposals of i tokens or more, each accepted at 0.9 given the
    # earlier ones: vLLM's per-position rate (accepted at i / proposals) 0.9, 0.5 * 0.81, ...
    per_position = s["per_position_acceptance_rate"]
    for i, want in enumerate([0.9, 0.5 * 0.81, 0.25 * 0.729, 0.125 * 0.6561]):
        assert per_position[i] == pytest.approx(want, abs=0.06), (i, per_position)
    assert all(p in (0.0, None) for p in per_position[4:]), per_position
    tpot, _ = _run({**SUFFIX, "draft_lengths": LENGTHS}, n)
    # Proposals of all eight are 1.9-2.3x faster (2.7 and 3.9 ms); of 1.9 on average about as fast
    # as k = 2 (within 6%); plain decoding 2.4-2.7x slower (at 1 and 16 at once: 6.1 and 7.3 ms
    # against 16.4 and 17.3).
    all_eight, _ = _run(SUFFIX, n)
    two, _ = _run({**SUFFIX, "num_speculative_tokens": 2}, n)
    plain, _ = _run(None, n)
    assert 1.8 * all_eight < tpot < 0.45 * plain
    assert tpot == pytest.approx(two, rel=0.06)


def test_an_ngram_lookup_draws_its_match_then_its_length():
    # Matching in 60% of the steps, proposals of 1 or 3 tokens (1 + 3) / 2 = 2 on average.
    spec = {"method": "ngram", "num_speculative_tokens": 3, "acceptance_rate": 1.0, "proposal_rate": 0.6, "draft_lengths": [0.5, 0.0, 0.5]}
    res = fleetwise.simulate(_scenario(spec, requests=1, output=2000))
    s = res.summary["speculative"]
    assert s["num_draft_tokens"] / s["num_drafts"] == pytest.approx(2.0, abs=0.1), s
    assert s["num_accepted_tokens"] == s["num_draft_tokens"]
    # Steps: 1999 tokens after the first, 1 + 0.6 * 2 = 2.2 a step: about 909.
    steps = s["num_drafts"] / 0.6
    assert steps == pytest.approx(1999 / 2.2, rel=0.06)


def test_estimate_takes_the_expectation_over_the_lengths():
    base = ["estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "900", "--speculative"]
    r = run_cli(*base, "method=suffix,num_speculative_tokens=8,acceptance_rate=0.9,draft_lengths=0.5/0.25/0.125/0.125/0/0/0/0")
    assert r.returncode == 0, r.stderr
    # 0.5 (1 + 0.9) + 0.25 (1 + 0.9 + 0.81) + 0.125 (3.439) + 0.125 (4.0951) = 2.569 tokens a step.
    assert "2.569 tokens per sequence" in r.stdout and "proposals of 1.88 tokens on average" in r.stdout, r.stdout
    all_eight = run_cli(*base, "method=suffix,num_speculative_tokens=8,acceptance_rate=0.9")
    assert "6.126 tokens per sequence" in all_eight.stdout, all_eight.stdout


@pytest.mark.parametrize("spec, says", [
    ({"method": "eagle", "num_speculative_tokens": 4, "acceptance_rate": 0.6, "draft_lengths": [0.25] * 4}, "method eagle drafts all k"),
    ({**SUFFIX, "draft_lengths": [0.5, 0.5]}, "one probability per length 1..k (8), got 2"),
    ({**SUFFIX, "draft_lengths": [0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}, "must sum to 1"),
    ({**SUFFIX, "draft_lengths": [1.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}, "draft_lengths.0"),
])
def test_bad_draft_lengths_are_refused_naming_the_field(spec, says, write_yaml):
    path = write_yaml(_scenario(spec, requests=2))
    r = run_cli("run", str(path))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert path.name in r.stderr and "cluster.pools.0.speculative.draft_lengths" in r.stderr, r.stderr


def test_adaptive_verification_weighs_each_slot_by_the_chance_a_proposal_reaches_it():
    # Suffix decoding at 0.7 then 0.9 a position, proposals of 1 to 7 tokens with 0.1 each and of
    # 8 with 0.3. At 256 at once verifying whatever is proposed (5.2 a proposal) costs more than
    # it gains (45.0 ms); adaptive verification, each slot's survival weighed by the chance a
    # proposal reaches it and the step priced with the lengths apportioned, verifies about 2
    # (42.2 ms); learning from history the same. At one at once everything pays: the same run.
    spec = {"method": "suffix", "num_speculative_tokens": 8, "acceptance_rate": [0.7] + [0.9] * 7, "draft_lengths": [0.1] * 7 + [0.3]}
    fixed, sf = _run(spec, 256)
    adaptive, sa = _run({**spec, "enable_adaptive_verification": True}, 256)
    learned, sh = _run({**spec, "enable_adaptive_verification": True, "adaptive_estimate": "history"}, 256)
    assert sf["num_draft_tokens"] / sf["num_drafts"] == pytest.approx(5.2, abs=0.1)
    for s in (sa, sh):
        assert s["num_draft_tokens"] / s["num_drafts"] == pytest.approx(1.94, abs=0.1), s
    assert adaptive < 0.96 * fixed and learned < 0.96 * fixed
    assert _run({**spec, "enable_adaptive_verification": True}, 1) == _run(spec, 1)
