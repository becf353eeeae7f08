"""Differential test of speculative decoding: the Rust core against the SimPy reference model on
the randomized small vllm, Sarathi-Serve, Sarathi and Orca clusters of ``test_reference.py``,
each pool speculating with a small draft model at acceptance rates of 0 or 1 (so the accepted
count is fixed: the leading ones), some of them in KV caches of a few hundred blocks where the
lookahead does not always fit, and under token budgets that the verify passes' 1 + k tokens per
decode fill. Every request's instance, status, first-scheduled, first-token and completion times
and preemptions must agree exactly."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import polars as pl

import fleetwise
from fleetwise.cluster import core_config
from fleetwise.cost import cost_model
from reference_cases import assert_agreement, assert_exercised, make_batch_scenario, make_scenario, pin_to_iteration_ends

DRAFT_MODEL = {"num_layers": 2, "hidden_size": 256, "num_heads": 4, "num_kv_heads": 4, "head_dim": 64,
               "intermediate_size": 704, "vocab_size": 32000, "max_position_embeddings": 4096}
"""A draft for the reference's tiny model: same vocabulary, half its layers, half its width."""

RATES = [[1.0, 1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
"""Per-position acceptance of the cases (by seed): a fixed accepted count of 2, 2, 0 and 4."""


def speculating(seed: int, scenario: dict, workload, facts: dict):
    """``scenario`` with every pool speculating at ``RATES[seed % 4]``; a tiny GPU gets the
    draft's weights and its KV of 3000 tokens on top, and three requests arrive exactly when
    iterations of the speculating core end."""
    rates = RATES[seed % len(RATES)]
    scenario["models"]["tiny-draft"] = DRAFT_MODEL
    for pool in scenario["cluster"]["pools"]:
        pool["speculative"] = {"method": "draft", "draft_model": "tiny-draft", "num_speculative_tokens": len(rates), "acceptance_rate": rates}
    if facts["tiny_kv"]:
        pool = core_config(fleetwise.scenario_from_dict(scenario))["pools"][0]
        draft = cost_model({**DRAFT_MODEL, "name": "d"}, pool["gpu"], calibration=pool["calibration"])
        scenario["gpus"]["small-gpu"]["memory_bytes"] += float(draft.weight_bytes_per_gpu() + 3000 * draft.kv_bytes_per_token())
    sc = fleetwise.scenario_from_dict(scenario)
    workload = pin_to_iteration_ends(sc, workload, np.random.default_rng(3000 + seed), count=3)
    return scenario, workload


def make_speculative_scenario(seed: int):
    """``make_scenario(seed)`` (vllm pools), speculating (see ``speculating``)."""
    return speculating(seed, *make_scenario(seed))


def check(cases, totals: dict) -> None:
    """Asserts agreement on every ``(label, scenario, workload)`` of ``cases``; adds the core's
    accepted draft tokens and denied lookaheads to ``totals``."""
    for label, scenario, workload in cases:
        assert_agreement(label, scenario, workload, totals)
        spec = fleetwise.simulate(scenario, workload=workload).summary["speculative"]
        totals["accepted"] = totals.get("accepted", 0) + spec["num_accepted_tokens"]
        totals["lookahead_denied"] = totals.get("lookahead_denied", 0) + spec["lookahead_denied"]


def test_speculating_vllm_pools_match_simpy_reference():
    """Every case agrees exactly; the cases accept drafts, deny some lookaheads, preempt, reject."""
    totals: dict = {}
    seeds = range(12)
    check(((f"speculative seed {s}", *make_speculative_scenario(s)) for s in seeds), totals)
    assert totals["accepted"] > 0 and totals["lookahead_denied"] > 0 and totals["preemptions"] > 0, totals
    assert_exercised(totals, len(seeds))


def test_speculating_chunked_and_orca_pools_match_simpy_reference():
    """Sarathi-Serve (whose token budget counts each decode's 1 + k verified tokens), Sarathi and
    Orca pools speculating agree exactly with the reference, with drafts accepted, lookaheads
    denied and preemptions."""
    totals: dict = {}
    cases = [("sarathi-serve", s) for s in range(8)] + [("sarathi", s) for s in range(4)] + [("orca-oracle", s) for s in range(3)]
    check(((f"speculative {kind} seed {s}", *speculating(s, *make_batch_scenario(kind, s))) for kind, s in cases), totals)
    assert totals["accepted"] > 0 and totals["lookahead_denied"] > 0 and totals["preemptions"] > 0, totals
    assert_exercised(totals, len(cases))


def dynamic(seed: int, scenario: dict, workload):
    """``scenario`` with every speculating pool's k set by its previous step's request count:
    all of k at 1-2 requests, 1 at 3-5, none from 6 (its decodes then run through one draft
    step, verified plainly)."""
    for pool in scenario["cluster"]["pools"]:
        k = pool["speculative"]["num_speculative_tokens"]
        pool["speculative"]["num_speculative_tokens_per_batch_size"] = [[1, 2, k], [3, 5, 1], [6, 10**6, 0]]
    return scenario, workload


def test_dynamic_speculation_matches_simpy_reference():
    """Pools whose k follows the previous step's batch size agree exactly with the reference, on
    vllm and Sarathi-Serve pools, with steps at every k."""
    totals: dict = {}
    cases = [(f"dynamic vllm seed {s}", *dynamic(s, *make_speculative_scenario(s))) for s in range(6)]
    cases += [(f"dynamic sarathi-serve seed {s}", *dynamic(s, *speculating(s, *make_batch_scenario("sarathi-serve", s)))) for s in range(4)]
    check(cases, totals)
    assert totals["accepted"] > 0 and totals["preemptions"] > 0, totals
    # The tables cut k: fewer draft tokens than the same cases with k fixed, and steps with none.
    drafted = {"fixed": 0, "dynamic": 0}
    big_batches = 0
    for label, scenario, workload in cases[:6]:
        res = fleetwise.simulate(scenario, workload=workload, record_iterations=True)
        drafted["dynamic"] += res.summary["speculative"]["num_draft_tokens"]
        big_batches += int((res.iterations["decode_seqs"] >= 6).sum())
        for pool in scenario["cluster"]["pools"]:
            del pool["speculative"]["num_speculative_tokens_per_batch_size"]
        drafted["fixed"] += fleetwise.simulate(scenario, workload=workload).summary["speculative"]["num_draft_tokens"]
    assert drafted["dynamic"] < drafted["fixed"] and big_batches > 0, (drafted, big_batches)


def adaptive(scenario: dict, workload):
    """``scenario`` with every speculating pool verifying adaptively (the k of 0..k with the most
    tokens per second for the previous step's decodes)."""
    for pool in scenario["cluster"]["pools"]:
        pool["speculative"]["enable_adaptive_verification"] = True
    return scenario, workload


def test_adaptive_verification_matches_simpy_reference():
    """Pools verifying adaptively agree exactly with the reference on vllm and Sarathi-Serve
    pools; positions never accepted are never verified (rates [1, 1, 0]: two of three; [0, 0]:
    none, every decode step verified plainly while the draft still runs)."""
    totals: dict = {}
    cases = [(f"adaptive vllm seed {s}", *adaptive(*make_speculative_scenario(s))) for s in range(6)]
    cases += [(f"adaptive sarathi-serve seed {s}", *adaptive(*speculating(s, *make_batch_scenario("sarathi-serve", s)))) for s in range(4)]
    check(cases, totals)
    assert totals["accepted"] > 0 and totals["preemptions"] > 0, totals
    for label, scenario, workload in (cases[0], cases[2], cases[4]):
        spec = fleetwise.simulate(scenario, workload=workload).summary["speculative"]
        rates = scenario["cluster"]["pools"][0]["speculative"]["acceptance_rate"]
        if rates == [0.0, 0.0]:
            assert spec["num_drafts"] == 0, (label, spec)
        else:
            # [1, 1, 0]: two verified a step, both accepted.
            assert spec["num_drafts"] > 0 and spec["num_draft_tokens"] == spec["num_accepted_tokens"] <= 2 * spec["num_drafts"], (label, spec)


TREE_RATES = [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
"""Per-level acceptance of the tree cases (by seed): a fixed accepted depth of 2, 1, 0 and 2."""


def tree(seed: int, scenario: dict, workload):
    """``scenario`` with every speculating pool drafting vLLM's two-by-two token tree (6 nodes
    over 2 levels; seed 3: three then one candidates, 6 nodes) at ``TREE_RATES[seed % 4]``."""
    shapes = [[[0], [1], [0, 0], [0, 1], [1, 0], [1, 1]]] * 3 + [[[0], [1], [2], [0, 0], [1, 0], [2, 0]]]
    for pool in scenario["cluster"]["pools"]:
        nodes = shapes[seed % 4]
        pool["speculative"].update(num_speculative_tokens=len(nodes), acceptance_rate=TREE_RATES[seed % 4], speculative_token_tree=nodes)
    return scenario, workload


def test_tree_speculation_matches_simpy_reference():
    """Pools drafting a token tree agree exactly with the reference on vllm and Sarathi-Serve
    pools: each decode is granted up to the tree's nodes and speculates the whole levels its
    grant holds (in small KV caches and near the end of an output, fewer)."""
    totals: dict = {}
    cases = [(f"tree vllm seed {s}", *tree(s, *make_speculative_scenario(s))) for s in range(6)]
    cases += [(f"tree sarathi-serve seed {s}", *tree(s, *speculating(s, *make_batch_scenario("sarathi-serve", s)))) for s in range(4)]
    check(cases, totals)
    assert totals["accepted"] > 0 and totals["lookahead_denied"] > 0, totals
    # Drafts count every node: 6 a full step, 2 or 3 for a grant holding the first level only.
    spec = fleetwise.simulate(cases[0][1], workload=cases[0][2]).summary["speculative"]
    assert spec["num_draft_tokens"] > 2 * spec["num_drafts"] and spec["num_accepted_tokens"] <= 2 * spec["num_drafts"], spec


CLASSES = [{"name": "all", "share": 0.4, "acceptance_rate": 1.0, "num_speculative_tokens": 2}, {"name": "first", "share": 0.35, "acceptance_rate": [1.0, 0.0, 0.0]},
           {"name": "none", "share": 0.25, "acceptance_rate": 0.0}]
"""Acceptance classes of the class cases: requests accepting all their drafts (two at most a
step), the first of three, none."""


def with_classes(scenario: dict, workload, adaptive: bool):
    """``scenario`` with every speculating pool drafting 3 at ``CLASSES``' rates by request,
    verifying adaptively or not."""
    for pool in scenario["cluster"]["pools"]:
        spec = pool["speculative"]
        del spec["acceptance_rate"]
        spec.update(num_speculative_tokens=3, acceptance_classes=[dict(c) for c in CLASSES], enable_adaptive_verification=adaptive)
    return scenario, workload


def test_acceptance_classes_match_simpy_reference():
    """Pools whose requests accept by class (drawn by the run's seed and the request's index, as
    the core draws them) agree exactly with the reference on vllm and Sarathi-Serve pools, all
    drafts verified or adaptively: every class accepts at its rates, and verifying adaptively
    never verifies the class that accepts nothing."""
    totals: dict = {}
    cases = [(f"classes vllm seed {s}", *with_classes(*make_speculative_scenario(s), s % 2 == 1)) for s in range(6)]
    cases += [(f"classes sarathi-serve seed {s}", *with_classes(*speculating(s, *make_batch_scenario("sarathi-serve", s)), s % 2 == 0)) for s in range(4)]
    check(cases, totals)
    assert totals["accepted"] > 0 and totals["preemptions"] > 0, totals
    for label, scenario, workload in cases:
        spec = fleetwise.simulate(scenario, workload=workload).summary["speculative"]
        drafted, rate = spec["per_class_draft_tokens"], spec["per_class_acceptance_rate"]
        assert rate[0] == 1.0 and rate[2] in (0.0, None), (label, spec)
        # The first class drafts two at most: its drafts are all accepted, two a step at most.
        assert spec["per_position_acceptance_rate"][1] >= spec["per_position_acceptance_rate"][2], (label, spec)
        if scenario["cluster"]["pools"][0]["speculative"]["enable_adaptive_verification"]:
            # Only the slots that are accepted are verified: class "first" its first draft.
            assert drafted[2] == 0 and rate[1] in (1.0, None), (label, spec)
        else:
            assert drafted[2] > 0 and 0 < rate[1] < 1.0, (label, spec)


def named_classes(workload, seed: int):
    """``workload`` with every third request's class left to the draw and the others named
    by the workload (``all``, ``first`` and ``none`` in turn, the unnamed ``class 1`` label for
    ``first`` on odd seeds)."""
    names = ["all", "class 1" if seed % 2 else "first", "none"]
    given = [None if i % 3 == 2 else names[(i // 3 + i) % 3] for i in range(len(workload))]
    return dataclasses.replace(workload, acceptance_class=given)


def test_classes_the_workload_names_match_simpy_reference():
    """Classes named by the workload (a trace's ``acceptance_class`` column), the unnamed ones
    drawn, agree exactly with the reference, all drafts verified or adaptively; the request table
    names each request's class as the workload does."""
    totals: dict = {}
    cases = []
    for s in range(4):
        scenario, workload = with_classes(*make_speculative_scenario(s), s % 2 == 1)
        for pool in scenario["cluster"]["pools"] if s % 2 else []:
            del pool["speculative"]["acceptance_classes"][1]["name"]
        cases.append((f"named classes vllm seed {s}", scenario, named_classes(workload, s)))
    check(cases, totals)
    assert totals["accepted"] > 0, totals
    for label, scenario, workload in cases:
        table = fleetwise.simulate(scenario, workload=workload).requests.sort("request_id")
        named = workload.acceptance_class.to_list()
        got = table["acceptance_class"].cast(pl.String).to_list()
        assert all(g == n for g, n in zip(got, named) if n is not None), label
        assert any(n is None for n in named) and set(got) >= {"all", "none"}, label


def learning(scenario: dict, workload):
    """``scenario`` with every speculating pool verifying adaptively by the acceptance its
    instances observe (``adaptive_estimate: history``)."""
    for pool in scenario["cluster"]["pools"]:
        pool["speculative"].update(enable_adaptive_verification=True, adaptive_estimate="history")
    return scenario, workload


def test_adaptive_verification_learning_from_history_matches_simpy_reference():
    """Pools verifying adaptively by their observed acceptance (decayed counts by position, one
    number of drafts for every decode) agree exactly with the reference, one rate or classes:
    with the classes every class verifies the same number (at most its own k), so the class
    that accepts nothing still has its first draft verified (where scoring by request never
    verifies it) and the class that accepts all has drafts rejected past its first."""
    totals: dict = {}
    cases = [(f"history vllm seed {s}", *learning(*make_speculative_scenario(s))) for s in range(4)]
    cases += [(f"history classes vllm seed {s}", *learning(*with_classes(*make_speculative_scenario(s), True))) for s in range(4, 8)]
    cases += [(f"history classes sarathi-serve seed {s}", *learning(*with_classes(*speculating(s, *make_batch_scenario("sarathi-serve", s)), True))) for s in range(3)]
    check(cases, totals)
    assert totals["accepted"] > 0 and totals["preemptions"] > 0, totals
    verified_none = 0
    for label, scenario, workload in cases[4:]:
        spec = fleetwise.simulate(scenario, workload=workload).summary["speculative"]
        drafted, rate = spec["per_class_draft_tokens"], spec["per_class_acceptance_rate"]
        assert rate[0] == 1.0 and rate[2] in (0.0, None), (label, spec)
        verified_none += drafted[2]
    assert verified_none > 0


def test_adaptive_verification_priced_at_a_profile_context_matches_simpy_reference():
    """Adaptive verification pricing its candidate steps at one profiled context (vLLM's cost
    table), by request or learning from history, agrees exactly with the reference; priced at a
    long profiled context the classes' mixed history verifies otherwise than at the decodes' own."""
    totals: dict = {}
    cases = []
    for s in range(6):
        scenario, workload = with_classes(*make_speculative_scenario(s), True)
        if s % 3:
            learning(scenario, workload)
        for pool in scenario["cluster"]["pools"]:
            pool["speculative"]["adaptive_profile_context"] = [8192, 65536][s % 2]
        cases.append((f"profiled adaptive vllm seed {s}", scenario, workload))
    check(cases, totals)
    assert totals["accepted"] > 0, totals
    differs = 0
    for label, scenario, workload in cases:
        own = copy.deepcopy(scenario)
        for pool in own["cluster"]["pools"]:
            del pool["speculative"]["adaptive_profile_context"]
        drafted = [fleetwise.simulate(sc, workload=workload).summary["speculative"]["num_draft_tokens"] for sc in (scenario, own)]
        differs += drafted[0] != drafted[1]
    assert differs > 0
