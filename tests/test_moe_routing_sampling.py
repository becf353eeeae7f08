"""Per-iteration expert routing (``experts.routing.sampling: per_iteration``): the same statistics as
per-token routing on the same scenario, and clear refusals where it does not apply."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fleetwise
from fleetwise.errors import ConfigError
from fleetwise.moe import RoutingTrace, write_routing_trace


def _scenario(sampling: str, kind: str = "zipf", max_num_seqs: int = 64, requests: int = 300) -> dict:
    routing = {"kind": kind, "zipf_exponent": 0.8, "sampling": sampling}
    return {"name": "moe-sampling", "seed": 3,
            "cluster": {"pools": [{"name": "main", "gpu": "gh200", "model": "mixtral-8x7b",
                                   "scheduler": {"kind": "vllm", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": 16384},
                                   "experts": {"placement": "dram", "routing": routing, "cache": {"policy": "lru", "experts_per_layer": 2},
                                               "prefetch": {"accuracy": 0.9, "lead_layers": 1}}}]},
            "workload": {"arrivals": {"kind": "poisson", "rate": 4.0},
                         "lengths": {"kind": "lognormal", "prompt_median": 1000, "prompt_sigma": 0.4, "prompt_max": 4000,
                                     "output_median": 100, "output_sigma": 0.3, "output_max": 400},
                         "requests": requests}}


@pytest.mark.parametrize(("kind", "max_num_seqs"), [("zipf", 64), ("zipf", 8), ("uniform", 8), ("zipf", 4)])
def test_per_iteration_matches_per_token_statistics(kind, max_num_seqs):
    per_token = fleetwise.simulate(_scenario("per_token", kind, max_num_seqs)).summary
    per_iter = fleetwise.simulate(_scenario("per_iteration", kind, max_num_seqs)).summary
    a, b = per_token["experts"], per_iter["experts"]
    # Decode batches of 5-8 tokens (max_num_seqs 8) leave experts unused with the probabilities the
    # aggregate draws; 4 tokens x top-2 <= 8 experts are drawn token by token; prefills and batches
    # of 64 saturate every expert either way.
    assert b["experts_activated_per_iteration"] == pytest.approx(a["experts_activated_per_iteration"], rel=0.02)
    assert b["hit_rate"] == pytest.approx(a["hit_rate"], abs=0.01)
    assert b["cache_hit_rate"] == pytest.approx(a["cache_hit_rate"], abs=0.02)
    assert b["fetched_bytes_per_token"] == pytest.approx(a["fetched_bytes_per_token"], rel=0.03)
    assert per_iter["tpot_s"]["p50"] == pytest.approx(per_token["tpot_s"]["p50"], rel=0.03)
    assert per_iter["finished"] == per_token["finished"] == 300


def test_per_iteration_differs_from_per_token_draws_but_is_deterministic():
    sc = _scenario("per_iteration", requests=60)
    first = fleetwise.simulate(sc).summary
    assert fleetwise.simulate(copy.deepcopy(sc)).summary == first
    # A different random law of draws: not the same numbers as per-token routing.
    assert fleetwise.simulate(_scenario("per_token", requests=60)).summary["experts"] != first["experts"]


@pytest.mark.parametrize(("change", "says"), [
    ({"locality": 0.3}, "cannot model locality"),
    ({"kind": "trace", "trace": "x.jsonl"}, "trace routing replays"),
])
def test_per_iteration_refuses_what_it_cannot_model(change, says, tmp_path):
    sc = _scenario("per_iteration", requests=5)
    routing = sc["cluster"]["pools"][0]["experts"]["routing"]
    routing.update(change)
    if routing["kind"] == "trace":
        routing["trace"] = str(tmp_path / "t.jsonl")
        experts = np.tile(np.asarray([0, 1], dtype=np.uint16), (4, 32, 1))
        write_routing_trace(routing["trace"], RoutingTrace(32, 2, 8, np.asarray([0, 4]), experts, "mixtral-8x7b"))
    with pytest.raises(ConfigError, match=rf"cluster.pools.0.experts.routing.sampling: .*{says}"):
        fleetwise.simulate(sc)
    sc = _scenario("per_iteration", requests=5)
    sc["cluster"]["pools"][0]["experts"]["grouping"] = {"batch": 2}
    with pytest.raises(ConfigError, match=r"experts.routing.sampling: .*affinity"):
        fleetwise.simulate(sc)
    sc["cluster"]["pools"][0]["experts"]["grouping"] = {"batch": 2, "affinity": False}
    assert fleetwise.simulate(sc).summary["finished"] == 5
