"""Tree speculation (vLLM's ``speculative_token_tree``, docs/speculative-decoding.md): a pool's
proposer drafts a tree of candidates level by level and the target verifies every node in one
pass. At low load a tree's longer accepted paths pay for its wider verify pass; at high load its
query tokens per sequence make the pass compute-bound and a chain of the same depth wins. The
tree is read in vLLM's string form or as a list, per-level acceptance shows in the summary, and
bad trees are configuration errors naming the node (exit 2)."""

from __future__ import annotations

import json

import pytest

import fleetwise
from conftest import run_cli
from fleetwise.cluster import core_config
from fleetwise.errors import ConfigError
from test_speculative import SCENARIO, _scenario

BINARY = [[0], [1], [0, 0], [0, 1], [1, 0], [1, 1]]
"""Two candidates per node over two levels: 6 nodes."""
TREE = {"method": "eagle", "num_speculative_tokens": 6, "acceptance_rate": 0.75, "speculative_token_tree": BINARY}
CHAIN = {"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.6}
"""A chain of the tree's depth whose one candidate per level is accepted less often."""


def _tpot(speculative: dict, rate: float) -> float:
    """Mean TPOT of the speculative-decoding scenario (Llama-3-70B, 4 H100s) at ``rate`` req/s."""
    sc = fleetwise.load_scenario(SCENARIO)
    raw = sc.model_dump(mode="json", exclude_none=True)
    raw["cluster"]["pools"][0]["speculative"] = speculative
    raw["workload"]["arrivals"]["rate"] = rate
    return fleetwise.simulate(fleetwise.scenario_from_dict(raw)).summary["tpot_s"]["mean"]


def test_a_tree_pays_at_low_load_and_a_chain_wins_at_high_load():
    low, high = (_tpot(TREE, 1.0), _tpot(CHAIN, 1.0)), (_tpot(TREE, 40.0), _tpot(CHAIN, 40.0))
    assert low[0] < 0.95 * low[1], low
    assert high[0] > 1.1 * high[1], high


def test_a_tree_in_any_order_is_read_breadth_first_as_vllm_sorts_it():
    shuffled = {**TREE, "speculative_token_tree": [[1, 1], [0], [0, 1], [1], [1, 0], [0, 0]]}
    assert core_config(fleetwise.scenario_from_dict(_scenario(shuffled)))["pools"][0]["speculative"]["speculative_token_tree"] == BINARY
    assert fleetwise.simulate(_scenario(shuffled, requests=4)).summary == fleetwise.simulate(_scenario(TREE, requests=4)).summary


def test_vllms_string_form_is_the_same_tree():
    as_string = {**TREE, "speculative_token_tree": "[(0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]"}
    core = core_config(fleetwise.scenario_from_dict(_scenario(as_string)))["pools"][0]["speculative"]
    assert core["speculative_token_tree"] == BINARY
    a, b = fleetwise.simulate(_scenario(as_string, requests=4)), fleetwise.simulate(_scenario(TREE, requests=4))
    assert a.summary == b.summary


def test_the_summary_counts_every_node_and_accepts_per_level():
    # Every level accepted: 3 tokens a step; 400-token outputs: the prefill's token, then 131
    # full trees (to 394), two first-level-only steps (5 and 3 nodes left hold one level: to 398)
    # and two plain decodes: 133 drafts, 131 x 6 + 2 x 2 nodes, 131 x 2 + 2 accepted.
    s = fleetwise.simulate(_scenario({**TREE, "acceptance_rate": 1.0})).summary["speculative"]
    assert (s["num_drafts"], s["num_draft_tokens"], s["num_accepted_tokens"]) == (133, 131 * 6 + 2 * 2, 131 * 2 + 2)
    assert s["per_position_acceptance_rate"] == [1.0, 131 / 133]
    # Per-level rates: unconditional acceptance of level 2 is a_1 a_2.
    r = fleetwise.simulate(_scenario({**TREE, "acceptance_rate": [0.9, 0.5]}, requests=16)).summary["speculative"]
    assert r["per_position_acceptance_rate"][0] == pytest.approx(0.9, abs=0.03)
    assert r["per_position_acceptance_rate"][1] == pytest.approx(0.45, abs=0.03)


@pytest.mark.parametrize("tree, field, says", [
    ({"speculative_token_tree": [[0], [1], [0, 0]], "num_speculative_tokens": 3}, "speculative", "speculative_token_tree[2]: [0, 0]: every node of level 1 needs the same number of children"),
    ({"speculative_token_tree": [[0], [1, 0]], "num_speculative_tokens": 2}, "speculative", "its parent [1] is not in the tree"),
    ({"speculative_token_tree": [[0], []], "num_speculative_tokens": 2}, "speculative", "speculative_token_tree[1]: []: a node is a non-empty path"),
    ({"speculative_token_tree": [[0], [0]], "num_speculative_tokens": 2}, "speculative", "[0] is listed twice"),
    ({"num_speculative_tokens": 4}, "speculative", "num_speculative_tokens must be the number of nodes of speculative_token_tree (6), got 4"),
    ({"acceptance_rate": [0.9, 0.8, 0.7]}, "speculative", "a per-level list needs one rate per level of speculative_token_tree (2), got 3"),
    ({"method": "ngram"}, "speculative", "speculative_token_tree applies to methods draft, eagle and eagle3"),
    ({"num_speculative_tokens_per_batch_size": [[1, 8, 2]]}, "speculative", "cannot be combined with num_speculative_tokens_per_batch_size"),
    ({"speculative_token_tree": "[(0,), (1,"}, "speculative.speculative_token_tree", "is not a list of paths"),
    ({"speculative_token_tree": [[0], [True]]}, "speculative.speculative_token_tree.1.0", "true, a boolean, where a child rank is expected"),
    ({"speculative_token_tree": [[0], [-1]], "num_speculative_tokens": 2}, "speculative", "child ranks (0 or more)"),
    ({"speculative_token_tree": [[0], [1, 0], [1], [0, 0], [2, 0]], "num_speculative_tokens": 5}, "speculative", "speculative_token_tree[4]: [2, 0]: its parent [2] is not in the tree"),
])
def test_bad_trees_name_the_file_and_node(write_yaml, tree, field, says):
    path = write_yaml(_scenario({**TREE, **tree}))
    with pytest.raises(ConfigError, match=f"cluster.pools.0.{field}") as err:
        fleetwise.load_scenario(path)
    assert says in str(err.value) and str(path) in str(err.value)
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr


def test_estimate_prices_a_tree_given_by_its_children_per_level():
    def run(batch: int, spec: str) -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024", "--speculative", spec, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    tree = "method=eagle,num_speculative_tokens=6,acceptance_rate=0.75,speculative_token_tree=2/2"
    one = run(1, tree)
    assert one["speculative_token_tree"] == BINARY and one["k"] == 6
    assert one["tokens_per_step"] == pytest.approx(1 + 0.75 + 0.75**2)
    chain = "method=eagle,num_speculative_tokens=2,acceptance_rate=0.6"
    assert one["speedup"] > run(1, chain)["speedup"] > 1.5
    assert run(256, tree)["speedup"] < run(256, chain)["speedup"]
    r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "1", "--context", "1024", "--speculative", "method=eagle,num_speculative_tokens=6,acceptance_rate=0.7,speculative_token_tree=1000000000/2")
    assert r.returncode == 2 and "has more than 64 nodes" in r.stderr
