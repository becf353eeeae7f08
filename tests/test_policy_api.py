"""The public policy API: Python policies inside the simulator make exactly the decisions the
built-in Rust ones make, their plans are applied with vLLM v1's loop, errors surface clearly, and
the conformance checker tells conforming policies from broken ones."""

from __future__ import annotations

import random

import numpy as np

import pytest

import fleetwise
import fleetwise.policy as P
from fleetwise.config.load import load_scenario
from fleetwise.moe import cache_hits
from fleetwise.policy import conformance
from fleetwise.policy.builtin import make_policy_scheduler
from fleetwise.workload import Workload

from conftest import REPO, run_cli, small_scenario


def _three(router=None, scheduler=None):
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = 3
    if router:
        sc["cluster"]["router"] = router
    if scheduler:
        sc["cluster"]["pools"][0]["scheduler"] = scheduler
    return sc


@pytest.mark.parametrize("rust, python", [("least-outstanding-tokens", "least-outstanding-tokens"), ("round-robin", "round-robin")])
def test_python_profile_router_equals_the_rust_router_request_by_request(rust, python):
    native = fleetwise.simulate(_three({"kind": rust}))
    plugged = fleetwise.simulate(_three({"kind": rust}), router=P.create("router", python))
    assert plugged.requests.equals(native.requests)
    # Named in the scenario instead of passed in: the same.
    named = fleetwise.simulate(_three({"kind": "policy", "name": python}))
    assert named.requests.equals(native.requests)


def test_python_fcfs_plan_equals_the_native_vllm_v1_scheduler():
    limits = {"kind": "vllm-v1", "max_num_seqs": 64, "max_num_batched_tokens": 512}
    native = fleetwise.simulate(_three(scheduler=limits), record_iterations=True)
    plugged = fleetwise.simulate(_three(scheduler=limits), schedulers={"main": lambda: P.Fcfs(64, 512)}, record_iterations=True)
    assert plugged.requests.equals(native.requests)
    assert plugged.iterations.equals(native.iterations)
    # Chunked prefill: no iteration exceeds the budget, and prompts longer than it were split.
    assert int(native.iterations["prefill_tokens"].max() + native.iterations["decode_seqs"].max()) <= 512 + 64
    assert (native.iterations["prefill_tokens"] + native.iterations["decode_seqs"]).max() <= 512


def test_policy_scheduler_by_module_path_with_params_in_a_scenario():
    sc = _three(scheduler={"kind": "policy", "name": "fleetwise.policy.scheduler:ShortestPromptFirst", "params": {"max_num_seqs": 32, "max_num_batched_tokens": 1024}, "max_num_seqs": 32, "max_num_batched_tokens": 1024})
    r = fleetwise.simulate(sc)
    assert (r.requests["status"] == "finished").all() and r.requests.height == 600


def test_shortest_prompt_first_lowers_median_ttft_under_load():
    # Overloaded single instance with mixed prompt lengths: SJF on prompts serves the many short
    # prompts before the few long ones, so the median waits less (and the longest wait more).
    sc = small_scenario()
    sc["cluster"]["pools"][0]["count"] = 1
    sc["workload"]["arrivals"]["rate"] = 20.0
    lim = {"max_num_seqs": 16, "max_num_batched_tokens": 2048}
    fcfs = fleetwise.simulate(sc | {"cluster": sc["cluster"] | {"pools": [sc["cluster"]["pools"][0] | {"scheduler": {"kind": "vllm-v1", **lim}}]}})
    sjf = fleetwise.simulate(sc | {"cluster": sc["cluster"] | {"pools": [sc["cluster"]["pools"][0] | {"scheduler": {"kind": "policy", "name": "shortest-prompt-first", "params": lim, **lim}}]}})
    assert sjf.summary["ttft_s"]["p50"] < 0.5 * fcfs.summary["ttft_s"]["p50"]
    assert sjf.requests["ttft_s"].max() > fcfs.requests["ttft_s"].max()


def test_plan_loop_by_hand_chunks_and_orders():
    # Budget 64: the shortest prompt (10) is admitted first, then 30, then 24 of the 50-token one.
    s = make_policy_scheduler(P.ShortestPromptFirst(8, 64), num_blocks=100, max_num_seqs=8, max_num_batched_tokens=64)
    for rid, prompt in (("a", 50), ("b", 30), ("c", 10)):
        s.add(rid, prompt, 2)
    assert s.schedule() == [("c", 10), ("b", 30), ("a", 24)]
    assert s.complete() == [("c", False), ("b", False)]
    # Running first: two decodes, then the rest of "a" (26 tokens) which samples its first token.
    assert s.schedule() == [("c", 1), ("b", 1), ("a", 26)]
    assert s.complete() == [("c", True), ("b", True), ("a", False)]


def test_kv_never_overfills_and_every_request_finishes_once_under_preemption():
    s = make_policy_scheduler(P.ShortestPromptFirst(16, 256), num_blocks=20, block_size=16, max_num_seqs=16, max_num_batched_tokens=256)
    rng = random.Random(1)
    for i in range(30):
        s.add(i, rng.randrange(10, 120), rng.randrange(5, 60))
    done, preempted = [], 0
    while len(done) < 30:
        assert s.schedule()
        preempted += s.preempted()
        assert s.used_blocks() <= 20
        done += [r for r, fin in s.complete() if fin]
    assert sorted(done) == list(range(30)) and preempted > 0


class _Raises:
    def route(self, request, endpoints):
        raise RuntimeError("boom in my router")


class _OutOfRange:
    def route(self, request, endpoints):
        return P.RouteDecision(instance=len(endpoints) + 5)


def test_a_raising_policy_is_a_policy_error_caused_by_its_exception():
    with pytest.raises(fleetwise.PolicyError, match="boom in my router") as info:
        fleetwise.simulate(_three(), router=_Raises())
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(fleetwise.PolicyError, match="instance 8"):
        fleetwise.simulate(_three(), router=_OutOfRange())


def test_a_plan_over_the_pool_limits_is_refused():
    with pytest.raises(fleetwise.PolicyError, match="token_budget must be in 1..=512"):
        fleetwise.simulate(_three(scheduler={"kind": "vllm-v1", "max_num_seqs": 64, "max_num_batched_tokens": 512}), schedulers={"main": lambda: P.Fcfs(64, 4096)})


def test_cli_reports_a_bad_policy_name_without_traceback(tmp_path, write_yaml):
    sc = _three({"kind": "policy", "name": "no-such-router"})
    p = write_yaml(sc)
    r = run_cli("run", str(p), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "no-such-router" in r.stderr and "Traceback" not in r.stderr


class _LastDecoder:
    """Prefill on the least loaded prefill instance, decode always on the last decode instance."""

    def route(self, request, endpoints):
        prefill = min((e for e in endpoints if e.role == "prefill"), key=lambda e: (e.outstanding_tokens, e.index))
        decode = max(e.index for e in endpoints if e.role == "decode")
        return P.RouteDecision(instance=decode, prefill=prefill.index)


def test_disaggregating_router_chooses_both_instances_of_the_pair():
    sc = load_scenario(REPO / "scenarios" / "splitwise.yaml")
    roles = [p.role for p in sc.cluster.pools for _ in range(p.count)]
    last_decoder = max(i for i, r in enumerate(roles) if r == "decode")
    r = fleetwise.simulate(sc, router=_LastDecoder())
    q = r.requests
    assert (q["status"] == "finished").all()
    assert set(q["instance"].unique()) == {last_decoder}
    assert set(roles[i] for i in q["prefill_instance"].unique()) == {"prefill"}
    # The built-in disaggregated profile router spreads decodes instead.
    spread = fleetwise.simulate(sc, router=P.create("router", "disaggregated"))
    assert spread.requests["instance"].n_unique() > 1 and (spread.requests["status"] == "finished").all()


def test_builtin_policies_conform():
    for name in P.names("router"):
        assert conformance.check_router(P.create("router", name)).passed, name
    for name in P.names("scheduler"):
        assert conformance.check_scheduler(P.create("scheduler", name)).passed, name
    for name in P.names("prefix-cache"):
        assert conformance.check_prefix_cache(P.create("prefix-cache", name)).passed, name
    for name in ("lru", "lfu", "static"):
        assert conformance.check_expert_cache(lambda l, e, c, n=name: P.make_expert_cache(n, l, e, c)).passed, name


class _UnseededRandom:
    def route(self, request, endpoints):
        return P.RouteDecision(instance=random.randrange(len(endpoints)))


class _PrefillOnly:
    def route(self, request, endpoints):
        return P.RouteDecision(instance=endpoints[0].index)


class _StrayIds:
    def plan(self, step):
        return P.StepPlan(token_budget=512, max_num_seqs=32, waiting_order=[r.id for r in step.running])


class _Hoarder(P.LruExpertCache):
    def admit(self, layer, expert):
        self.layers[layer].resident.add(expert)  # never evicts
        return None


def test_conformance_checker_catches_broken_policies():
    r = conformance.check_router(_UnseededRandom())
    assert not r.passed and any("not deterministic" in f for f in r.failures)
    r = conformance.check_router(_PrefillOnly(), disaggregated=True)
    assert not r.passed and any("prefill" in f for f in r.failures)
    r = conformance.check_scheduler(_StrayIds())
    assert not r.passed and any("names requests not in its queue" in f for f in r.failures)
    r = conformance.check_expert_cache(_Hoarder)
    assert not r.passed and any("capacity 3" in f for f in r.failures)


def test_cli_check_policy_exit_codes():
    assert run_cli("check-policy", "router", "cache-aware").returncode == 0
    bad = run_cli("check-policy", "router", "test_policy_api:_UnseededRandom", cwd=REPO / "tests")
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    assert run_cli("check-policy", "scheduler", "nope").returncode == 2


@pytest.mark.parametrize("policy", ["lru", "lfu", "static"])
def test_python_expert_caches_equal_the_simulators(policy):
    rng = random.Random(7)
    seq = [min(int(rng.expovariate(0.4)), 7) for _ in range(3000)]
    ours = P.make_expert_cache(policy, 1, 8, 3)
    from fleetwise.policy.expert_cache import replay

    assert replay(ours, 0, seq) == cache_hits(policy, 8, 3, seq)


def _small_kv_prefix_scenario(*over):
    import json

    from conftest import tiny_gpu

    # A 20 GB GPU leaves 524 KV blocks per instance: the Mooncake sample's prefixes get evicted.
    return load_scenario(REPO / "scenarios" / "prefix-caching.yaml", [f"gpus={json.dumps(tiny_gpu(20))}", "cluster.pools.0.gpu=tiny", *over])


def test_python_prefix_cache_policy_equals_native_lru():
    sc = _small_kv_prefix_scenario()
    native = fleetwise.simulate(sc)
    lru = fleetwise.simulate(sc, prefix_caches={"main": P.LruPrefixCache})
    assert lru.requests.equals(native.requests)
    assert int(native.instances["peak_kv_blocks"].max()) == int(native.instances["num_blocks"].max())  # evictions happened



def _blocks_scenario(blocks: int, policy: str) -> dict:
    """One Llama-3-8B instance with exactly ``blocks`` KV blocks of 16 tokens, prefix caching on."""
    from conftest import tiny_gpu

    sc = small_scenario()
    sc["gpus"] = tiny_gpu(80)
    sc["cluster"]["pools"][0].update(count=1, gpu="tiny", prefix_caching=True, prefix_cache_policy={"name": policy}, memory={"gpu_memory_utilization": 1.0})
    probe = Workload(arrival_ns=np.array([0]), prompt_tokens=np.array([16]), output_tokens=np.array([1]), hash_ids=[[1]], hash_block_tokens=16)
    row = fleetwise.simulate(sc, workload=probe).instances.row(0, named=True)
    per_block = row["kv_bytes_per_token"] * 16
    sc["gpus"]["tiny"]["memory_bytes"] = float(row["weight_bytes"] + row["activation_bytes"] + blocks * per_block + per_block // 2)
    return sc


def test_lfu_keeps_a_popular_prefix_through_one_off_prompts_that_lru_lets_go():
    # 16 blocks; a popular 4-entry prompt P, four one-off 4-entry prompts between two of its
    # arrivals (each request also takes a decode block). The one-offs' entries fill the cache, so
    # LRU evicts P's idle entries before P comes back; LFU evicts the one-offs (never hit) instead.
    popular, order = [1, 2, 3, 4], "PP" + "uuuuP" * 4 + "uuuu"
    hashes = [popular if c == "P" else [100 + 4 * i + k for k in range(4)] for i, c in enumerate(order)]
    n = len(order)
    wl = Workload(arrival_ns=np.arange(n) * 1_000_000_000, prompt_tokens=np.full(n, 64), output_tokens=np.full(n, 2), hash_ids=hashes, hash_block_tokens=16)
    hits = {}
    for policy in ("lru", "lfu"):
        r = fleetwise.simulate(_blocks_scenario(16, policy), workload=wl)
        assert int(r.instances["num_blocks"][0]) == 16
        hits[policy] = int(r.instances["prefix_hit_tokens"][0])
    # P arrives twice in a row first (its entries get a hit), then every fifth request. Each hit
    # reuses 3 of its 4 entries (the last is always computed): LRU only the second arrival's,
    # LFU every later one's too.
    assert sum(h == popular for h in hashes) == 6
    assert (hits["lru"], hits["lfu"]) == (3 * 16, 5 * 3 * 16)


class _EvictsNothingKnown:
    def victim(self, idle):
        return 12345


def test_a_prefix_policy_naming_an_unknown_entry_is_a_policy_error():
    with pytest.raises(fleetwise.PolicyError, match="12345"):
        fleetwise.simulate(_small_kv_prefix_scenario(), prefix_caches={"main": _EvictsNothingKnown})
