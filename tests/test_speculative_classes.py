"""Acceptance that differs by request (``speculative.acceptance_classes``,
docs/speculative-decoding.md): each request is drawn into a class by the run's seed and its
index and accepts at its class's rates; the request table names each request's class and the
summary reports each class's acceptance; one
averaged rate misjudges what a mixed workload gains; adaptive verification verifies more of the
drafts of the class that accepts more; bad classes are refused naming the field (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import fleetwise
from conftest import run_cli
from reference.speculative import CLASS_STREAM, uniform_at
from test_speculative import _scenario

CODE_AND_CHAT = [{"name": "code", "share": 0.3, "acceptance_rate": 0.9}, {"name": "chat", "share": 0.7, "acceptance_rate": 0.45}]
"""Three requests in ten accepting 0.9 a position (code), the rest 0.45 (chat)."""
EAGLE = {"method": "eagle", "num_speculative_tokens": 4}


def _expected_tokens(a: float, k: int = 4) -> float:
    """1 + a + a^2 + ... + a^k: a step's tokens at a constant rate a."""
    return sum(a**i for i in range(k + 1))


def _classes(n: int, seed: int) -> np.ndarray:
    """The class (0 code, 1 chat) of each of ``n`` requests of a run seeded ``seed``, as the core
    draws it (the SimPy reference's SplitMix64)."""
    return np.array([0 if uniform_at(seed, CLASS_STREAM, i) < 0.3 else 1 for i in range(n)])


def test_each_class_accepts_at_its_own_rates():
    res = fleetwise.simulate(_scenario({**EAGLE, "acceptance_classes": CODE_AND_CHAT}, requests=64, output=600))
    s = res.summary["speculative"]
    # A class's acceptance (accepted / verified drafts) at a constant rate a: (a + ... + a^4) / 4.
    for c, a in enumerate((0.9, 0.45)):
        assert s["per_class_acceptance_rate"][c] == pytest.approx((_expected_tokens(a) - 1) / 4, rel=0.04), c
    assert sum(s["per_class_draft_tokens"]) == s["num_draft_tokens"]
    # Each request's class, drawn by seed and index (the SimPy reference's SplitMix64 agrees), in
    # the request table; the code requests finish sooner: more tokens a step.
    cls = _classes(64, 11)
    assert 0.15 < (cls == 0).mean() < 0.45
    assert res.requests["acceptance_class"].to_list() == [["code", "chat"][c] for c in cls]
    tpot = res.requests["tpot_s"].to_numpy()
    assert tpot[cls == 0].mean() < 0.7 * tpot[cls == 1].mean()
    # Shares and rates by class give the same run every time; another seed, other classes.
    again = fleetwise.simulate(_scenario({**EAGLE, "acceptance_classes": CODE_AND_CHAT}, requests=64, output=600))
    assert again.requests.equals(res.requests)
    assert (_classes(64, 12) != cls).any()


def test_one_averaged_rate_misjudges_a_mixed_workload():
    # Half the requests (by share) accept every draft, half 0.2 a position: per position 0.6 on
    # average. Sixteen at once (a memory-bound verify pass): each class's requests decode as a
    # run of that class alone does (within 12%: the batch thins as the fast class finishes),
    # 3.5x apart; one rate of 0.6 for all gives every request about the same TPOT, and a p90 TPOT
    # (9.8 ms) well below the mixed workload's (16.1 ms).
    mixed = [{"share": 0.5, "acceptance_rate": 1.0}, {"share": 0.5, "acceptance_rate": 0.2}]
    n = 16
    res = fleetwise.simulate(_scenario({**EAGLE, "acceptance_classes": mixed}, requests=n))
    cls = (res.requests["acceptance_class"] == "class 1").to_numpy().astype(int)
    tpot = res.requests["tpot_s"].to_numpy()
    alone = {a: fleetwise.simulate(_scenario({**EAGLE, "acceptance_rate": a}, requests=n)).summary["tpot_s"] for a in (1.0, 0.2, 0.6)}
    assert tpot[cls == 0].mean() == pytest.approx(alone[1.0]["mean"], rel=0.12)
    assert tpot[cls == 1].mean() == pytest.approx(alone[0.2]["mean"], rel=0.12)
    assert tpot[cls == 1].mean() > 3.0 * tpot[cls == 0].mean()
    assert alone[0.6]["p90"] == pytest.approx(alone[0.6]["mean"], rel=0.05)
    assert alone[0.6]["p90"] < 0.7 * res.summary["tpot_s"]["p90"], (alone[0.6], res.summary["tpot_s"])


def test_adaptive_verification_verifies_the_class_that_accepts_more():
    # 256 at once: verifying all four drafts of every request costs more than it gains (the
    # verify pass turns compute-bound: slower than plain decoding); adaptive verification keeps
    # all four of the code requests' drafts and verifies one of the chat requests': faster than
    # both, for both classes.
    spec = {**EAGLE, "acceptance_classes": CODE_AND_CHAT}
    runs = {name: fleetwise.simulate(_scenario(s, requests=256)) for name, s in (
        ("plain", None), ("all", spec), ("adaptive", {**spec, "enable_adaptive_verification": True}))}
    tpot = {name: r.summary["tpot_s"]["mean"] for name, r in runs.items()}
    assert tpot["adaptive"] < tpot["plain"] < tpot["all"], tpot
    every, adaptive = (runs[n].summary["speculative"] for n in ("all", "adaptive"))
    # Code: the same drafts verified (all four a step, accepted (0.9 + ... + 0.9^4) / 4 = 0.77).
    assert adaptive["per_class_draft_tokens"][0] == pytest.approx(every["per_class_draft_tokens"][0], rel=0.01)
    assert adaptive["per_class_acceptance_rate"][0] == pytest.approx((_expected_tokens(0.9) - 1) / 4, rel=0.03)
    # Chat: one draft a step (accepted 0.45 of the time) instead of four (0.195).
    assert adaptive["per_class_draft_tokens"][1] < 0.35 * every["per_class_draft_tokens"][1]
    assert adaptive["per_class_acceptance_rate"][1] == pytest.approx(0.45, rel=0.05)
    assert every["per_class_acceptance_rate"][1] == pytest.approx((_expected_tokens(0.45) - 1) / 4, rel=0.05)
    for c in ("code", "chat"):
        by_class = {n: runs[n].requests.filter(pl.col("acceptance_class") == c)["tpot_s"].mean() for n in ("all", "adaptive")}
        assert by_class["adaptive"] < 0.8 * by_class["all"], (c, by_class)


def test_estimate_prices_the_classes_apportioned_by_share():
    def estimate(extra: str) -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "256", "--context", "1024",
                    "--speculative", "method=eagle,num_speculative_tokens=4,acceptance_classes=0.3:0.9+0.7:0.45" + extra, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    fixed, adaptive = estimate(""), estimate(",enable_adaptive_verification=true")
    assert fixed["tokens_per_step"] == pytest.approx(0.3 * _expected_tokens(0.9) + 0.7 * _expected_tokens(0.45))
    assert fixed["acceptance"] == "0.3 at 0.9; 0.7 at 0.45"
    assert adaptive["speedup"] > fixed["speedup"] and adaptive["k"] == 4
    assert adaptive["tokens_per_step"] < fixed["tokens_per_step"]


@pytest.mark.parametrize("speculative, says", [
    ({**EAGLE, "acceptance_rate": 0.6, "acceptance_classes": CODE_AND_CHAT}, "not both"),
    ({**EAGLE}, "acceptance_rate is required"),
    ({**EAGLE, "acceptance_classes": [{"share": 0.3, "acceptance_rate": 0.9}, {"share": 0.6, "acceptance_rate": 0.4}]}, "acceptance_classes: the shares must sum to 1, got 0.9"),
    ({**EAGLE, "acceptance_classes": [{"share": 0.0, "acceptance_rate": 0.9}, {"share": 1.0, "acceptance_rate": 0.4}]}, "acceptance_classes.0.share"),
    ({**EAGLE, "acceptance_classes": [{"share": 1.0, "acceptance_rate": [0.9, 0.8]}]}, "acceptance_classes[0].acceptance_rate: a per-position list needs num_speculative_tokens = 4 rates, got 2"),
    ({**EAGLE, "acceptance_classes": [{"share": 1.0, "acceptance_rate": 1.5}]}, "acceptance_classes[0].acceptance_rate must be a probability"),
    ({**EAGLE, "acceptance_classes": []}, "acceptance_classes"),
    ({**EAGLE, "acceptance_classes": [{"share": 1.0, "acceptance_rate": 0.5, "weight": 2}]}, "weight"),
])
def test_bad_classes_are_refused_naming_the_field(speculative, says, write_yaml):
    path = write_yaml(_scenario(speculative, requests=2))
    r = run_cli("run", str(path))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert str(path.name) in r.stderr and "cluster.pools.0.speculative" in r.stderr, r.stderr


def test_bad_classes_on_the_command_line_are_refused():
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "8", "--context", "1024",
                "--speculative", "method=eagle,num_speculative_tokens=4,acceptance_classes=0.3+0.7:0.5")
    assert r.returncode == 2 and "acceptance_classes takes SHARE:RATES" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_class_with_short_matches_drafts_fewer_tokens():
    # Suffix decoding drafting up to 8, every draft accepted: requests whose matches are long
    # draft 8 a step (9 tokens: 44 steps of 8 drafts, then 2 for the last 3 tokens), those whose
    # matches are short 1 (199 steps of one draft, then none for the last token); 400 outputs.
    classes = [{"name": "long", "share": 0.4, "acceptance_rate": 1.0}, {"name": "short", "share": 0.6, "acceptance_rate": 1.0, "num_speculative_tokens": 1}]
    res = fleetwise.simulate(_scenario({"method": "suffix", "num_speculative_tokens": 8, "acceptance_classes": classes}, requests=16))
    counts = res.requests["acceptance_class"].value_counts()
    n = dict(zip(counts["acceptance_class"].to_list(), counts["count"].to_list()))
    s = res.summary["speculative"]
    assert s["per_class_draft_tokens"] == [n["long"] * (44 * 8 + 2), n["short"] * 199], (n, s)
    assert s["per_class_acceptance_rate"] == [1.0, 1.0]
    by_class = {c: res.requests.filter(pl.col("acceptance_class") == c)["tpot_s"].mean() for c in ("long", "short")}
    assert by_class["short"] > 3 * by_class["long"], by_class
    # A class's own k past the pool's is refused, naming the field.
    bad = {**EAGLE, "acceptance_classes": [{"share": 1.0, "acceptance_rate": 0.5, "num_speculative_tokens": 5}]}
    with pytest.raises(fleetwise.ConfigError, match=r"acceptance_classes\.0\.num_speculative_tokens: must be 1 to the pool's num_speculative_tokens \(4\), got 5"):
        fleetwise.simulate(_scenario(bad, requests=2))
