"""Python expert cache policies running inside the simulator: one object per GPU, called by the core on
every layer's expert lookups (hits, then misses fetched and offered to ``admit``)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import polars as pl
import pytest
import yaml

import fleetwise
import fleetwise.policy as P
from fleetwise.errors import ConfigError, PolicyError
from fleetwise.moe import RoutingTrace, write_routing_trace

from conftest import REPO


def _offload(requests: int = 40, **experts) -> dict:
    """scenarios/moe-offload.yaml (Mixtral on a GH200, experts in DRAM, an LRU of 2 per layer,
    Pre-gated prefetch), shortened."""
    sc = yaml.safe_load((REPO / "scenarios" / "moe-offload.yaml").read_text())
    sc["workload"]["requests"] = requests
    sc["cluster"]["pools"][0]["experts"].update(experts)
    return sc


class OrderedLru:
    """A user's LRU written from scratch (an OrderedDict per layer), not the package's."""

    def __init__(self, num_layers, num_experts, capacity):
        self.capacity = capacity
        self.layers = [OrderedDict() for _ in range(num_layers)]

    def access(self, layer, expert):
        c = self.layers[layer]
        if expert in c:
            c.move_to_end(expert)
            return True
        return False

    def admit(self, layer, expert):
        c = self.layers[layer]
        if self.capacity == 0:
            return None
        victim = c.popitem(last=False)[0] if len(c) >= self.capacity else None
        c[expert] = None
        return victim

    def resident(self, layer):
        return frozenset(self.layers[layer])


class Pinned:
    """Keeps ``experts`` resident in every layer and admits nothing."""

    def __init__(self, num_layers, num_experts, capacity, experts=(0, 1)):
        self.experts = frozenset(experts)

    def access(self, layer, expert):
        return expert in self.experts

    def admit(self, layer, expert):
        return None

    def resident(self, layer):
        return self.experts


def _same_results(a, b):
    assert a.requests.equals(b.requests)
    assert a.instances.equals(b.instances)


@pytest.mark.parametrize("ep", [1, 2])
def test_python_lru_reproduces_the_builtin_lru_exactly(ep):
    sc = _offload()
    sc["cluster"]["pools"][0]["parallelism"] = {"ep": ep, "tp": ep}
    native = fleetwise.simulate(sc)
    inst = native.instances.row(0, named=True)
    assert inst["expert_misses"] > 100 and inst["expert_hits"] > 100  # the cache decides something
    by_name = copy.deepcopy(sc)
    by_name["cluster"]["pools"][0]["experts"]["cache"]["policy"] = {"name": "lru"}
    _same_results(native, fleetwise.simulate(by_name))
    made = []

    def factory(layers, experts, capacity):
        made.append((layers, experts, capacity))
        return OrderedLru(layers, experts, capacity)

    _same_results(native, fleetwise.simulate(sc, expert_caches={"main": factory}))
    # One check object, then one per GPU: Mixtral's 32 layers, 8 / ep experts, ceil(2 / ep) cached.
    assert made == [(32, 8 // ep, -(-2 // ep))] * (1 + ep)


def test_python_lfu_reproduces_the_builtin_lfu_exactly():
    sc = _offload(cache={"policy": "lfu", "experts_per_layer": 3})
    native = fleetwise.simulate(sc)
    _same_results(native, fleetwise.simulate(sc, expert_caches={"main": P.LfuExpertCache}))


def _replay(tmp_path, policy) -> dict:
    """Mixtral replaying a trace whose even tokens use experts {0, 1} and odd tokens {2, 3} in
    every layer; 3 requests of 4 prompt and 6 output tokens, one at a time."""
    rows = [[[0, 1] if tok % 2 == 0 else [2, 3] for _ in range(32)] for tok in range(10)]
    p = tmp_path / "routing.jsonl"
    write_routing_trace(p, RoutingTrace(32, 2, 8, np.array([0, 10]), np.asarray(rows, dtype=np.uint16), "mixtral-8x7b"))
    return {
        "name": "pinned", "seed": 1,
        "cluster": {"pools": [{"name": "main", "gpu": "h200", "model": "mixtral-8x7b", "scheduler": {"kind": "vllm", "max_num_seqs": 1},
                               "experts": {"placement": "dram", "routing": {"kind": "trace", "trace": str(p)}, "cache": {"policy": policy, "experts_per_layer": 2}}}]},
        "workload": {"arrivals": {"kind": "poisson", "rate": 0.01}, "lengths": {"kind": "constant", "prompt": 4, "output": 6}, "requests": 3},
    }


def test_pinned_experts_change_the_hit_rate_as_computed_by_hand(tmp_path, monkeypatch):
    # Per request and layer: the prefill (tokens 0-3) needs {0, 1, 2, 3}: 2 hits, 2 misses; the 5
    # decodes (tokens 4-8) alternate {0, 1} (3 decodes, 2 hits each) and {2, 3} (2 decodes, 2
    # misses each). Pinned {0, 1}: 8 hits and 6 misses per request and layer.
    (tmp_path / "my_caches.py").write_text("from test_expert_cache_policy import Pinned\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pinned = fleetwise.simulate(_replay(tmp_path, {"name": "my_caches:Pinned", "params": {"experts": [0, 1]}})).instances.row(0, named=True)
    assert (pinned["expert_lookups"], pinned["expert_hits"], pinned["expert_misses"]) == (3 * 32 * 14, 3 * 32 * 8, 3 * 32 * 6)
    assert pinned["expert_hit_rate"] == pytest.approx(8 / 14)
    # The built-in LRU of 2 on the same trace always holds the pair the last token used: only the
    # later prompts find {0, 1} (cached by the previous request's last decode): 2 hits per layer.
    lru = fleetwise.simulate(_replay(tmp_path, "lru")).instances.row(0, named=True)
    assert (lru["expert_lookups"], lru["expert_hits"]) == (3 * 32 * 14, 2 * 32 * 2)
    # Pinning {2, 3} instead: 6 hits and 8 misses per request and layer.
    other = fleetwise.simulate(_replay(tmp_path, "lru"), expert_caches={"main": lambda layers, experts, capacity: Pinned(layers, experts, capacity, experts=(2, 3))})
    row = other.instances.row(0, named=True)
    assert (row["expert_hits"], row["expert_misses"]) == (3 * 32 * 6, 3 * 32 * 8)
    # Fewer misses, less stall: the pinned run's requests finish sooner.
    assert pinned["expert_stall_ns"] < lru["expert_stall_ns"]


class _Liar(Pinned):
    def access(self, layer, expert):
        return True  # claims a hit for experts it does not hold


class _Raises(Pinned):
    def admit(self, layer, expert):
        raise RuntimeError("no room")


class _Overfull(Pinned):
    def resident(self, layer):
        return frozenset(range(5))


def test_a_wrong_or_raising_policy_stops_the_run_naming_it(tmp_path):
    sc = _replay(tmp_path, "lru")
    with pytest.raises(PolicyError, match=r"expert cache policy '_Liar' of instance main/0 GPU 0: lookup of layer 0: access\(0, 2\) answered a hit, but resident\(0\) did not list expert 2"):
        fleetwise.simulate(sc, expert_caches={"main": _Liar})
    with pytest.raises(PolicyError, match=r"_Raises.*raised RuntimeError: no room") as e:
        fleetwise.simulate(sc, expert_caches={"main": _Raises})
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(PolicyError, match=r"resident\(0\) lists 5 experts, over the capacity of 2"):
        fleetwise.simulate(sc, expert_caches={"main": _Overfull})
    with pytest.raises(PolicyError, match=r"is not an expert cache policy \(it has no access\(layer, expert\) method\)"):
        fleetwise.simulate(sc, expert_caches={"main": lambda layers, experts, capacity: object()})


def test_expert_cache_policy_settings_errors_name_the_field(tmp_path):
    sc = _replay(tmp_path, {"name": "no-such-cache"})
    with pytest.raises(ConfigError, match=r"unknown expert-cache policy 'no-such-cache'; registered: lfu, lru, static"):
        fleetwise.simulate(sc)
    sc = _replay(tmp_path, {"name": "lru", "params": {"colour": 1}})
    with pytest.raises(ConfigError, match=r"expert-cache policy 'lru': bad parameters \['colour'\]"):
        fleetwise.simulate(sc)
    sc = _replay(tmp_path, {"name": "lru"})
    sc["cluster"]["pools"][0]["experts"]["placement"] = "hbm"
    with pytest.raises(ConfigError, match=r"cluster.pools.0.experts.cache.policy: an expert cache policy object needs offloaded experts"):
        fleetwise.simulate(sc)
    with pytest.raises(ConfigError, match=r"expert_caches: no pool named 'other'"):
        fleetwise.simulate(_replay(tmp_path, "lru"), expert_caches={"other": P.LruExpertCache})


def test_a_named_expert_cache_policy_runs_from_the_cli(tmp_path, write_yaml):
    from conftest import run_cli

    path = write_yaml(_replay(tmp_path, {"name": "lfu"}))
    r = run_cli("run", str(path), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    inst = pl.read_parquet(tmp_path / "out" / "instances.parquet").row(0, named=True)
    assert inst["expert_lookups"] == 3 * 32 * 14
