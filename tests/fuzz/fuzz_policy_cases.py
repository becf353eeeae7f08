"""Hypothesis strategies for scenarios run by the hostile scripted policies of ``fuzz_policies``."""

from __future__ import annotations

import math

from hypothesis import strategies as st

_RAISES = ["value", "key", "recursion", "custom", "memory", "zero"]
_RETURNS = ["none", "int", "str", "float", "nan", "list", "dict", "tuple"]
_ORDERS = ["none", "reversed", "unknown", "duplicates", "strings", "shortest", "empty", "generator"]
_VALID_ORDERS = ["none", "reversed", "duplicates", "shortest", "empty"]
_HOSTILE_INDEX = [-1, 3, 99, 2**63, 1.5, math.nan, "0", None, True]


def _script(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """One to four valid actions, and in half the scripts one hostile action at a random place
    (the script cycles, so the hostile answer comes mid-run, with requests in flight)."""

    @st.composite
    def build(draw):
        script = draw(st.lists(valid, min_size=1, max_size=4))
        if draw(st.booleans()):
            script.insert(draw(st.integers(0, len(script))), draw(hostile))
        return script

    return build()


def _router_valid() -> st.SearchStrategy:
    return st.just(["valid"])


def _router_action() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("index"), st.one_of(st.integers(0, 2), st.sampled_from(_HOSTILE_INDEX))).map(list),
        st.tuples(st.just("pair"), st.integers(-1, 3), st.one_of(st.integers(-1, 3), st.none())).map(list),
        st.tuples(st.just("raise"), st.sampled_from(_RAISES)).map(list),
        st.tuples(st.just("return"), st.sampled_from(_RETURNS)).map(list),
    )


def _scheduler_valid() -> st.SearchStrategy:
    budget = st.integers(1, 4096)
    seqs = st.integers(1, 64)
    chunk = st.one_of(st.none(), st.integers(1, 2048))
    orders = st.sampled_from(_VALID_ORDERS)
    return st.tuples(st.just("plan"), budget, seqs, orders, orders, chunk).map(list)


def _scheduler_action() -> st.SearchStrategy:
    budget = st.one_of(st.integers(1, 4096), st.sampled_from([1, 16, 2**31, 2**63 - 1]))
    seqs = st.one_of(st.integers(1, 64), st.sampled_from([1, 2**31, 2**63 - 1]))
    chunk = st.one_of(st.none(), st.integers(1, 2048))
    return st.one_of(
        st.tuples(st.just("plan"), budget, seqs, st.sampled_from(_ORDERS), st.sampled_from(_ORDERS), chunk).map(list),
        st.tuples(st.just("duck"), st.sampled_from([0, -1, 1.5, math.nan, 2**64, "8", None, 512]), st.sampled_from([0, -1, 2**64, 8])).map(list),
        st.tuples(st.just("raise"), st.sampled_from(_RAISES)).map(list),
        st.tuples(st.just("return"), st.sampled_from(_RETURNS)).map(list),
    )


@st.composite
def policy_cases(draw) -> dict:
    """A tiny scenario whose router or scheduler (or both) is a scripted hostile policy."""
    disaggregated = draw(st.booleans())
    pools = (
        [{"name": "prefill", "count": 2, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "prefill"}, {"name": "decode", "count": 1, "gpu": "h100-sxm", "model": "llama-3-8b", "role": "decode"}]
        if disaggregated
        else [{"name": "main", "count": 3, "gpu": "h100-sxm", "model": "llama-3-8b"}]
    )
    for p in pools:
        p["memory"] = {"gpu_memory_utilization": draw(st.sampled_from([0.9, 0.3, 0.25]))}
        if draw(st.booleans()):
            p["scheduler"] = {"kind": "policy", "name": "fuzz_policies:ScriptedScheduler", "params": {"script": draw(_script(_scheduler_valid(), _scheduler_action())), "seed": draw(st.integers(0, 9))}, "max_num_seqs": 64, "max_num_batched_tokens": 4096}
    router = {"kind": "least-outstanding-tokens"}
    if draw(st.booleans()) or not any("scheduler" in p for p in pools):
        router = {"kind": "policy", "name": "fuzz_policies:ScriptedRouter", "params": {"script": draw(_script(_router_valid(), _router_action())), "seed": draw(st.integers(0, 9))}}
    return {
        "name": "fuzz-policy",
        "seed": draw(st.integers(0, 99)),
        "cluster": {"pools": pools, "router": router},
        "workload": {
            "arrivals": {"kind": "poisson", "rate": draw(st.sampled_from([5.0, 50.0, 500.0]))},
            "lengths": {"kind": "lognormal", "prompt_median": 1500, "prompt_sigma": 1.0, "prompt_max": 7000, "output_median": 50, "output_sigma": 0.8, "output_max": 400},
            "requests": draw(st.integers(1, 40)),
        },
    }


def policy_request(sc: dict) -> dict:
    """The worker request simulating a policy case."""
    return {"op": "simulate", "scenario": sc}
