"""Adaptive verification learning from history (``speculative.adaptive_estimate: history``,
docs/speculative-decoding.md): the instance scores every draft slot by the survival of its
position observed over its recent steps and verifies one number of drafts for every decode (vLLM's
DFlash), against scoring each request by its own class's rates (``request``, DSpark's confidence
head). With one rate the history learns it and chooses as the rates do; with classes one number
for all loses what verifying each class its own number gains; ``estimate`` prices the learned
choice; the setting without adaptive verification is refused naming the field (exit 2)."""

from __future__ import annotations

import pytest

import fleetwise
from conftest import run_cli
from test_speculative import _scenario
from test_speculative_classes import CODE_AND_CHAT, EAGLE

ADAPTIVE = {**EAGLE, "enable_adaptive_verification": True}
HISTORY = {**ADAPTIVE, "adaptive_estimate": "history"}


def _run(spec: dict | None, n: int):
    """TPOT mean (s) and the speculative summary of ``n`` requests of 500 + 400 tokens at once."""
    res = fleetwise.simulate(_scenario(spec, requests=n))
    return res.summary["tpot_s"]["mean"], res.summary.get("speculative")


@pytest.mark.parametrize("n, verified", [(64, 2.0), (256, 1.0)])
def test_with_one_rate_the_history_learns_it_and_chooses_as_the_rates_do(n, verified):
    # An EAGLE head at 0.6 a position: at 64 at once both verify two drafts a step, at 256 one
    # (the first steps verify all four while the history fills).
    tpot_r, sr = _run({**ADAPTIVE, "acceptance_rate": 0.6}, n)
    tpot_h, sh = _run({**HISTORY, "acceptance_rate": 0.6}, n)
    assert tpot_h == pytest.approx(tpot_r, rel=0.02)
    for s in (sr, sh):
        assert s["num_draft_tokens"] / s["num_drafts"] == pytest.approx(verified, abs=0.05), s
    # What is verified is accepted at the head's rates: the first position at 0.6.
    assert sh["per_position_acceptance_rate"][0] == pytest.approx(0.6, abs=0.03)


def test_one_number_for_all_classes_loses_what_scoring_each_request_gains():
    # 30% code at 0.9, 70% chat at 0.45, 256 at once: scored by request, code verifies its four
    # and chat about one (44.1 ms); learning one number from the mixed history verifies about one
    # for everyone (48.0 ms, plain decoding's 48.2 within 2%), faster than verifying all four (57.5).
    plain, _ = _run(None, 256)
    every, _ = _run({**EAGLE, "acceptance_classes": CODE_AND_CHAT}, 256)
    by_request, sr = _run({**ADAPTIVE, "acceptance_classes": CODE_AND_CHAT}, 256)
    by_history, sh = _run({**HISTORY, "acceptance_classes": CODE_AND_CHAT}, 256)
    assert by_request < 0.95 * by_history < 0.95 * every
    assert by_history == pytest.approx(plain, rel=0.02)
    # Code's acceptance: all four verified by request ((0.9 + ... + 0.9^4) / 4 = 0.77), about
    # one by history (0.9 at the first position).
    assert sr["per_class_acceptance_rate"][0] == pytest.approx(0.77, abs=0.02)
    assert sh["per_class_acceptance_rate"][0] > 0.85
    # Chat verifies about one either way (its first position: 0.45).
    assert sh["per_class_acceptance_rate"][1] == pytest.approx(0.45, abs=0.03)
    assert sr["per_class_acceptance_rate"][1] == pytest.approx(0.45, abs=0.03)
    # At 64 at once the same order: by request 16.4, by history 17.5, all four 18.2 ms.
    assert _run({**ADAPTIVE, "acceptance_classes": CODE_AND_CHAT}, 64)[0] < _run({**HISTORY, "acceptance_classes": CODE_AND_CHAT}, 64)[0] < _run({**EAGLE, "acceptance_classes": CODE_AND_CHAT}, 64)[0]


def test_estimate_prices_one_number_for_all_from_the_share_weighted_acceptance():
    base = ["estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "256", "--context", "900", "--speculative"]
    spec = "method=eagle,num_speculative_tokens=4,acceptance_classes=0.3:0.9+0.7:0.45,enable_adaptive_verification=true"
    by_request = run_cli(*base, spec)
    by_history = run_cli(*base, spec + ",adaptive_estimate=history")
    assert by_request.returncode == 0 and by_history.returncode == 0, by_history.stderr
    assert "k=4 verified adaptively," in by_request.stdout and "speedup 1.11x" in by_request.stdout, by_request.stdout
    # The share-weighted survival (0.585, 0.38, 0.25, 0.17 ...) pays for one draft at 256: about
    # 1 + 0.585 tokens a step, no faster than plain decoding.
    assert "k=1 of 4 at this batch verified adaptively by observed acceptance" in by_history.stdout, by_history.stdout
    assert "1.585 tokens per sequence" in by_history.stdout and "speedup 0.99x" in by_history.stdout, by_history.stdout


def test_history_without_adaptive_verification_is_refused_naming_the_field(write_yaml):
    path = write_yaml(_scenario({**EAGLE, "acceptance_rate": 0.6, "adaptive_estimate": "history"}, requests=2))
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert path.name in r.stderr and "cluster.pools.0.speculative.adaptive_estimate" in r.stderr and "enable_adaptive_verification" in r.stderr, r.stderr
    bad = write_yaml(_scenario({**ADAPTIVE, "acceptance_rate": 0.6, "adaptive_estimate": "oracle"}, requests=2))
    r = run_cli("run", str(bad))
    assert r.returncode == 2 and "adaptive_estimate" in r.stderr and "history" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("rate", [0.6, 0.3])
@pytest.mark.parametrize("n", [1, 8])
def test_one_early_rejection_does_not_end_speculation(rate, n):
    # At low load every draft pays; an instance that saw a decode's first draft rejected in its
    # first step must keep speculating (the pseudo-slot keeps the estimate above 0), so learning
    # from history decodes as scoring by the rate does, within 1%, for every seed tried.
    for seed in (11, 12, 13):
        by_rate = fleetwise.simulate(_scenario({**ADAPTIVE, "acceptance_rate": rate}, requests=n, seed=seed)).summary
        learned = fleetwise.simulate(_scenario({**HISTORY, "acceptance_rate": rate}, requests=n, seed=seed)).summary
        assert learned["tpot_s"]["mean"] == pytest.approx(by_rate["tpot_s"]["mean"], rel=0.01), seed
        assert learned["speculative"]["num_drafts"] >= 0.99 * by_rate["speculative"]["num_drafts"], seed
